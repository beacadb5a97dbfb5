# services.inference.vllm.instances.<name>: `vllm serve` on a dual or hf entry, offline.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  top = config.services.inference;
  cfg = top.vllm;
  ilib = import ./lib.nix { inherit lib; };
  inherit (lib) types mkOption;
  models = top.resolvedModels;
  yaml = pkgs.formats.yaml { };

  instanceModule = {
    options = ilib.listenOptions {
      port = 8000;
      portDescription = "Port of the OpenAI-compatible API.";
    }
    // {
      model = mkOption {
        type = types.str;
        example = "qwen3-8b";
        description = "Name of the model in `services.inference.models` (layout `dual` or `hf`).";
      };
      package = mkOption {
        type = types.package;
        default = cfg.package;
        defaultText = lib.literalExpression "config.services.inference.vllm.package";
        description = "vLLM package of this instance.";
      };
      gpus = ilib.gpusOption "vLLM";
      onDemand = ilib.onDemandOption "vLLM";
      settings = mkOption {
        type = yaml.type;
        default = { };
        example = {
          gpu-memory-utilization = 0.85;
          max-model-len = 8192;
          served-model-name = [ "qwen" ];
        };
        description = ''
          vLLM's own arguments (long names, as in `vllm serve --help`), written to the YAML
          file passed with `--config`. Command-line `--host`/`--port` win over it.
        '';
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Arguments appended verbatim (quoted) to the command line.";
      };
    };
  };

  unitName = name: "vllm-${name}";

  mkService =
    name: inst:
    let
      m = models.${inst.model};
      configFile = yaml.generate "vllm-${name}.yaml" inst.settings;
    in
    ilib.hfService {
      description = "vLLM server ${name} (${m.repo})";
      inherit (top) root;
      unit = unitName name;
      inherit (inst) model gpus;
      inherit m;
      command =
        [
          (lib.getExe' inst.package "vllm")
          "serve"
          m.repo
        ]
        ++ lib.optionals (inst.settings != { }) [
          "--config"
          configFile
        ]
        ++ [
          "--host"
          (ilib.bindHost inst)
          "--port"
          inst.port
        ]
        ++ inst.extraArgs;
    };
in
{
  options.services.inference.vllm = {
    package = lib.mkPackageOption pkgs "vllm" { };
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      description = "vLLM instances, each a unit `vllm-<name>.service`.";
    };
  };

  config = lib.mkIf (cfg.instances != { }) (
    ilib.hfInstancesConfig {
      kind = "vllm";
      label = "vLLM";
      layouts = [ "dual" "hf" ];
      inherit (cfg) instances;
      inherit pkgs models unitName mkService;
      # 200 once the engine is up (its start runs the model: memory profiling, graph capture).
      healthPath = "/health";
    }
  );
}
