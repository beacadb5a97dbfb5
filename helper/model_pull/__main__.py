from model_pull.cli import main

main()
