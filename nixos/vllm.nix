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
        type = ilib.flagSettingsType;
        default = { };
        example = {
          gpu-memory-utilization = 0.85;
          max-model-len = 8192;
          served-model-name = [ "qwen" ];
          enable-prefix-caching = false;
        };
        description = ''
          vLLM's own options by long name (RFC 42, as in `vllm serve --help`), rendered the way
          vLLM parses them back: `true`/`false` as `--X`/`--no-X`, a list as one flag followed by
          its values, an attribute set as JSON. Checked against the options of the vLLM the
          package carries (`passthru.runtimeArgs`), else of the vLLM model-pull was tested with.
          `host` and `port` are options of their own.
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
    in
    ilib.hfService {
      description = "vLLM server ${name} (${m.repo})";
      inherit (top) root;
      unit = unitName name;
      inherit (inst) model gpus;
      inherit m;
      cc = pkgs.stdenv.cc;
      command = [
        (lib.getExe' inst.package "vllm")
        "serve"
        m.repo
        "--host"
        (ilib.bindHost inst)
        "--port"
        inst.port
      ]
      ++ ilib.settingsToArgs { args = ilib.argsOf "vllm" inst.package; } inst.settings
      ++ inst.extraArgs;
    };

  checks = lib.mapAttrsToList (
    name: inst:
    ilib.settingsChecks {
      option = "services.inference.vllm.instances.${name}.settings";
      label = "vLLM";
      args = ilib.argsOf "vllm" inst.package;
      reserved = {
        host = "services.inference.vllm.instances.${name}.host";
        port = "services.inference.vllm.instances.${name}.port";
      };
    } inst.settings
  ) cfg.instances;
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
    lib.mkMerge [
      (ilib.hfInstancesConfig {
        kind = "vllm";
        label = "vLLM";
        layouts = [ "dual" "hf" ];
        inherit (cfg) instances;
        inherit pkgs models unitName mkService;
        # 200 once the engine is up (its start runs the model: memory profiling, graph capture).
        healthPath = "/health";
      })
      {
        assertions = lib.concatMap (c: c.assertions) checks;
        warnings = lib.concatMap (c: c.warnings) checks;
      }
    ]
  );
}
