# services.inference.sglang.instances.<name>: SGLang's server on a dual or hf entry, offline.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  top = config.services.inference;
  cfg = top.sglang;
  ilib = import ./lib.nix { inherit lib; };
  inherit (lib) types mkOption;
  models = top.resolvedModels;

  instanceModule = {
    options = ilib.listenOptions {
      port = 30000;
      portDescription = "Port of the OpenAI-compatible API.";
    }
    // {
      model = mkOption {
        type = types.str;
        example = "phi-4-mini-fp8";
        description = ''
          Name of the model in `services.inference.models` (layout `hf` or `dual`). SGLang 0.5.x
          needs `patchTokenizer = true` for tokenizers saved by transformers >= 4.58.
        '';
      };
      package = mkOption {
        type = types.nullOr types.package;
        default = cfg.package;
        defaultText = lib.literalExpression "config.services.inference.sglang.package";
        description = "Python environment with SGLang for this instance.";
      };
      gpus = ilib.gpusOption "SGLang";
      onDemand = ilib.onDemandOption "SGLang";
      settings = mkOption {
        type = ilib.flagSettingsType;
        default = { };
        example = {
          mem-fraction-static = 0.8;
          context-length = 8192;
          enable-metrics = true;
        };
        description = ''
          SGLang server arguments by long name (RFC 42), rendered the way SGLang parses them
          back: `{ mem-fraction-static = 0.8; }` gives `--mem-fraction-static 0.8`, a list one
          flag followed by its values (`--lora-paths a=/x b=/y`), `false` `--no-X` where SGLang
          has it and nothing where the switch is off by default. Checked against the options of
          the SGLang the package carries (`passthru.runtimeArgs`), else of the SGLang
          model-pull was tested with. `host`, `port` and `model-path` are set by the module.
        '';
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Arguments appended verbatim (quoted) to the command line.";
      };
    };
  };

  unitName = name: "sglang-${name}";

  mkService =
    name: inst:
    let
      m = models.${inst.model};
    in
    ilib.hfService {
      description = "SGLang server ${name} (${m.repo})";
      inherit (top) root;
      unit = unitName name;
      inherit (inst) model gpus;
      inherit m;
      cc = pkgs.stdenv.cc;
      command =
        [
          (lib.getExe' inst.package "python")
          "-m"
          "sglang.launch_server"
          "--model-path"
          m.repo
          "--host"
          (ilib.bindHost inst)
          "--port"
          inst.port
        ]
        ++ ilib.settingsToArgs { args = ilib.argsOf "sglang" inst.package; } inst.settings
        ++ inst.extraArgs;
    };

  checks = lib.mapAttrsToList (
    name: inst:
    ilib.settingsChecks {
      option = "services.inference.sglang.instances.${name}.settings";
      label = "SGLang";
      args = ilib.argsOf "sglang" inst.package;
      reserved = {
        host = "services.inference.sglang.instances.${name}.host";
        port = "services.inference.sglang.instances.${name}.port";
        model-path = "services.inference.sglang.instances.${name}.model";
      };
    } inst.settings
  ) cfg.instances;
in
{
  options.services.inference.sglang = {
    package = mkOption {
      # nixpkgs has no SGLang package (python3Packages.sglang is NixOS/nixpkgs#525141, open).
      type = types.nullOr types.package;
      default = null;
      example = lib.literalExpression "pkgs.python3.withPackages (ps: [ ps.sglang ])";
      description = ''
        Python environment with SGLang (its `bin/python` runs `sglang.launch_server`). nixpkgs
        has no SGLang package yet: bring your own (an overlay, another flake). For
        `model-pull check`, give it `passthru.cudaCapabilities` (what its kernels were built
        for, e.g. torch's `cudaCapabilities`); without it the manifest lists none.
      '';
    };
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      description = "SGLang instances, each a unit `sglang-<name>.service`.";
    };
  };

  config = lib.mkIf (cfg.instances != { }) (
    lib.mkMerge [
      (ilib.hfInstancesConfig {
        kind = "sglang";
        label = "SGLang";
        layouts = [ "hf" "dual" ];
        inherit (cfg) instances;
        inherit pkgs models unitName mkService;
        # 503 until its warmup request has run; then it generates one token.
        healthPath = "/health_generate";
      })
      {
        assertions =
          lib.mapAttrsToList (name: inst: {
            assertion = inst.package != null;
            message = "services.inference.sglang.package is not set (instance ${name}): nixpkgs has no SGLang package; set it to a Python environment with SGLang.";
          }) cfg.instances
          ++ lib.concatMap (c: c.assertions) checks;
        warnings = lib.concatMap (c: c.warnings) checks;
      }
    ]
  );
}
