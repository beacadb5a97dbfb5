"""Command-line interface: click commands only; the work happens in the modules they call."""

from __future__ import annotations

import logging
import os
import sys

import click

from model_pull import __version__
from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger("model_pull")


@click.group(invoke_without_command=True)
@click.version_option(__version__, prog_name="model-pull")
@click.option("-v", "--verbose", is_flag=True, help="Log what is being done.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Fetch, verify and package Hugging Face weights into immutable entries.

    With no command, pull every model the NixOS manifest declares.
    """
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("MODEL_PULL_DEBUG") else
        logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    if ctx.invoked_subcommand is None:
        raise ModelPullError(ExitCode.ERROR, "manifest-driven pull is not implemented yet")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except ModelPullError as exc:
        if os.environ.get("MODEL_PULL_DEBUG"):
            logger.exception("debug traceback")
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(exc.code))
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
