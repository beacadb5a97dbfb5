# services.inference.trtllm.instances.<name>: TensorRT-LLM's `trtllm-serve` on a dual or hf
# entry, offline. Its default backend (PyTorch) loads a Hugging Face or ModelOpt unified
# checkpoint directly: the entry's snapshot is the model, with no conversion and no engine build
# (https://nvidia.github.io/TensorRT-LLM/commands/trtllm-serve/trtllm-serve.html).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  top = config.services.inference;
  cfg = top.trtllm;
  ilib = import ./lib.nix { inherit lib; };
  inherit (lib) types mkOption;
  models = top.resolvedModels;

  # `trtllm-serve serve <snapshot> ...` on the snapshot refs/main names, resolved at start.
  launcher = pkgs.writeShellApplication {
    name = "trtllm-serve-snapshot";
    runtimeInputs = [ pkgs.coreutils ];
    text = builtins.readFile ./trtllm-serve-snapshot.sh;
  };

  instanceModule =
    { config, ... }:
    {
      options = ilib.listenOptions {
        port = 8000;
        portDescription = "Port of the OpenAI-compatible API.";
      }
      // {
        model = mkOption {
          type = types.str;
          example = "qwen3-32b-nvfp4";
          description = "Name of the model in `services.inference.models` (layout `dual` or `hf`).";
        };
        package = mkOption {
          type = types.nullOr types.package;
          default = cfg.package;
          defaultText = lib.literalExpression "config.services.inference.trtllm.package";
          description = "TensorRT-LLM of this instance (its `bin/trtllm-serve`).";
        };
        servedModelName = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "qwen3-32b";
          description = ''
            The model name the API answers to (`--served_model_name`). `null`: the repository
            (`org/name`), as `vllm serve` does; trtllm-serve itself would name the model after
            the snapshot directory, a commit hash, as releases without the option (by the
            package's `passthru.runtimeArgs`) do.
          '';
        };
        gpus = ilib.gpusOption "TensorRT-LLM";
        onDemand = ilib.onDemandOption "TensorRT-LLM";
        settings = mkOption {
          type = types.attrsOf types.anything;
          default = { };
          example = {
            max_seq_len = 16384;
            kv_cache_free_gpu_memory_fraction = 0.85;
            kv_cache_config.dtype = "fp8";
            cuda_graph_config.enable_padding = true;
          };
          description = ''
            TensorRT-LLM's settings by name (RFC 42), rendered the way trtllm-serve reads them:
            an option of `trtllm-serve serve` (`max_seq_len`, `tp_size`, `trust_remote_code`,
            ...) as its own flag, every other key (an LLM API argument: `kv_cache_config`,
            `cuda_graph_config`, `enable_attention_dp`, ...) into the YAML file given to
            `--extra_llm_api_options`, which overrides the flags
            (https://nvidia.github.io/TensorRT-LLM/commands/trtllm-serve/trtllm-serve.html).
            Checked against the options of the TensorRT-LLM the package carries
            (`passthru.runtimeArgs`), else the list model-pull ships. `host`, `port`,
            `served_model_name` and the model are set by the module.
          '';
        };
        extraArgs = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Arguments appended verbatim (quoted) to trtllm-serve's command line.";
        };
        llmApiOptions = mkOption {
          type = types.attrsOf types.anything;
          internal = true;
          readOnly = true;
          description = "The keys of `settings` that go into the YAML file of --extra_llm_api_options.";
        };
      };
      config.llmApiOptions = yamlSettings config;
    };

  unitName = name: "trtllm-${name}";

  argsFor = inst: ilib.argsOf "trtllm" inst.package;

  # Keys trtllm-serve has a flag for go on the command line; the rest go into the YAML file.
  # `null` leaves a setting out, as everywhere in RFC 42 settings.
  split =
    inst:
    lib.partition (k: (argsFor inst).options ? ${k}) (
      lib.attrNames (lib.filterAttrs (_: v: v != null) inst.settings)
    );
  flagSettings = inst: lib.getAttrs (split inst).right inst.settings;
  yamlSettings = inst: lib.getAttrs (split inst).wrong inst.settings;

  optionsFile =
    name: inst:
    (pkgs.formats.yaml { }).generate "trtllm-${name}-llm-api-options.yaml" inst.llmApiOptions;

  mkService =
    name: inst:
    let
      m = models.${inst.model};
      yaml = inst.llmApiOptions;
    in
    ilib.hfService {
      description = "TensorRT-LLM server ${name} (${m.repo})";
      inherit (top) root;
      unit = unitName name;
      inherit (inst) model gpus;
      inherit m;
      cc = pkgs.stdenv.cc;
      command = [
        (lib.getExe' launcher "trtllm-serve-snapshot")
        "${ilib.hubCache top.root inst.model m}/${ilib.hubRepoDir m.repo}"
        (lib.getExe' inst.package "trtllm-serve")
        "--host"
        (ilib.bindHost inst)
        "--port"
        inst.port
      ]
      # trtllm-serve releases without the option name the model after the snapshot directory
      ++ lib.optionals ((argsFor inst).options ? served_model_name) [
        "--served_model_name"
        (if inst.servedModelName != null then inst.servedModelName else m.repo)
      ]
      ++ lib.optionals (yaml != { }) [
        "--extra_llm_api_options"
        (optionsFile name inst)
      ]
      ++ ilib.settingsToArgs { args = argsFor inst; } (flagSettings inst)
      ++ inst.extraArgs;
    };

  checks = lib.mapAttrsToList (
    name: inst:
    let
      option = "services.inference.trtllm.instances.${name}.settings";
      args = argsFor inst;
      flags = ilib.settingsChecks {
        inherit option args;
        label = "trtllm-serve";
        reserved = {
          host = "services.inference.trtllm.instances.${name}.host";
          port = "services.inference.trtllm.instances.${name}.port";
          served_model_name = "services.inference.trtllm.instances.${name}.servedModelName";
          # the YAML file the module writes from the other keys of settings
          config = "the LLM API arguments themselves in ${option}";
          extra_llm_api_options = "the LLM API arguments themselves in ${option}";
        };
      } (flagSettings inst);
      unknown = lib.filter (k: !(lib.elem k (args.llmApiArgs or [ ]))) (lib.attrNames inst.llmApiOptions);
    in
    {
      assertions =
        flags.assertions
        ++ [
          {
            assertion = !(inst.settings ? model);
            message = "${option}.model: the module passes the entry's snapshot as the model; set services.inference.trtllm.instances.${name}.model instead.";
          }
        ];
      warnings =
        flags.warnings
        ++ map (
          k:
          "${option}.${k}: neither an option of trtllm-serve nor an LLM API argument of TensorRT-LLM ${args.version} (as far as the list model-pull ships knows); it goes into the YAML options file, which TensorRT-LLM refuses if it does not know it."
        ) (lib.filter (k: k != "model") unknown);
    }
  ) cfg.instances;
in
{
  options.services.inference.trtllm = {
    package = mkOption {
      # nixpkgs has no TensorRT-LLM package; NVIDIA ships it as wheels and containers.
      type = types.nullOr types.package;
      default = null;
      example = lib.literalExpression "inputs.my-trtllm.packages.x86_64-linux.tensorrt-llm";
      description = ''
        TensorRT-LLM (its `bin/trtllm-serve`). nixpkgs has none: bring your own (an overlay,
        another flake). For `model-pull check`, give it `passthru.cudaCapabilities` (the SMs
        its kernels were built for); without it the manifest lists none. A package may carry
        its own option list as `passthru.runtimeArgs` (the format of model-pull's
        nixos/args/trtllm.json).
      '';
    };
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      description = "TensorRT-LLM instances, each a unit `trtllm-<name>.service`.";
    };
  };

  config = lib.mkIf (cfg.instances != { }) (
    lib.mkMerge [
      (ilib.hfInstancesConfig {
        kind = "trtllm";
        label = "TensorRT-LLM";
        layouts = [
          "dual"
          "hf"
        ];
        inherit (cfg) instances;
        inherit pkgs models unitName mkService;
        # trtllm-serve listens once the LLM is built (weights loaded, KV cache allocated).
        healthPath = "/health";
      })
      {
        assertions =
          lib.mapAttrsToList (name: inst: {
            assertion = inst.package != null;
            message = "services.inference.trtllm.package is not set (instance ${name}): nixpkgs has no TensorRT-LLM; set it to a package with bin/trtllm-serve.";
          }) cfg.instances
          ++ lib.concatMap (c: c.assertions) checks;
        warnings = lib.concatMap (c: c.warnings) checks;
      }
    ]
  );
}
