# services.inference.triton: one Triton Inference Server for several declared models, each
# through the vLLM backend or TensorRT-LLM's (its LLM API model); it assembles its model
# repository from the entries at every start.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  top = config.services.inference;
  cfg = top.triton;
  ilib = import ./lib.nix { inherit lib; };
  inherit (lib) types mkOption;
  models = top.resolvedModels;
  runDir = "/run/triton";
  cacheDir = "/var/cache/inference/triton";

  assemble = pkgs.writeShellApplication {
    name = "triton-assemble";
    runtimeInputs = [
      pkgs.coreutils
      pkgs.jq
    ];
    text = builtins.readFile ./triton-assemble.sh;
  };

  # The layouts each backend reads: the vLLM backend the entry's Triton directory, TensorRT-LLM's
  # the checkpoint (the HF snapshot).
  layoutsOf = {
    vllm = [
      "dual"
      "single"
    ];
    tensorrtllm = [
      "dual"
      "hf"
    ];
  };
  backendOf = name: cfg.models.${name}.backend;

  # Models it can load; the others are reported by the assertions.
  served = lib.filterAttrs (
    name: m: models ? ${name} && lib.elem models.${name}.layout layoutsOf.${m.backend}
  ) cfg.models;
  servedWith = backend: lib.filterAttrs (_: m: m.backend == backend) served;

  argsOfModels = lib.mapAttrsToList (name: m: [
    models.${name}.tritonName
    (ilib.entryPath top.root name models.${name})
    (builtins.toJSON m.overrides)
  ]);
  llmapiModels = servedWith "tensorrtllm";
  assembleArgs =
    lib.concatLists (argsOfModels (servedWith "vllm"))
    ++ lib.optionals (llmapiModels != { } && cfg.llmapiModel != null) (
      [
        "--llmapi"
        cfg.llmapiModel
      ]
      ++ lib.concatLists (argsOfModels llmapiModels)
    );

  # Where a model's unit waits: the entry's Triton directory, or its snapshot's refs/main.
  gate =
    name:
    if backendOf name == "vllm" then
      ilib.tritonConfig top.root name models.${name}
    else
      ilib.hubRefsMain top.root name models.${name};

  trtllmArgs = ilib.argsOf "trtllm" cfg.package;

  service = {
    description = "Triton Inference Server (${lib.concatStringsSep ", " (lib.attrNames served)})";
    wantedBy = [ "multi-user.target" ];
    after = [ "network.target" ];
    unitConfig = ilib.startLimit // {
      ConditionPathExists = map gate (lib.attrNames served);
    };
    environment = ilib.offlineHubEnv "${runDir}/hub" cacheDir // ilib.gpuEnv cfg.gpus;
    # the C compiler of the kernels compiled at run time (see lib.nix, hfService)
    path = [ pkgs.stdenv.cc ];
    serviceConfig =
      ilib.hardening {
        user = "inference";
        root = top.root;
        jit = true;
      }
      // {
        RuntimeDirectory = "triton";
        CacheDirectory = "inference/triton";
        ExecStartPre = ilib.execLine ([ (lib.getExe' assemble "triton-assemble") runDir ] ++ assembleArgs);
        ExecStart = ilib.execLine (
          [
            (lib.getExe' cfg.package "tritonserver")
            "--model-repository=${runDir}/models"
            "--http-address=${ilib.bindHost cfg}"
            "--http-port=${toString cfg.httpPort}"
            "--grpc-address=${ilib.bindHost cfg}"
            "--grpc-port=${toString cfg.grpcPort}"
            "--metrics-port=${toString cfg.metricsPort}"
          ]
          ++ cfg.extraArgs
        );
        TimeoutStartSec = "15min";
      };
  };

  # The ports served on demand, each a socket unit (triton.socket, triton-grpc.socket).
  listeners = [
    {
      name = "";
      inherit (cfg) host;
      port = cfg.httpPort;
    }
    {
      name = "grpc";
      inherit (cfg) host;
      port = cfg.grpcPort;
    }
  ];
in
{
  options.services.inference.triton = {
    enable = lib.mkEnableOption "Triton Inference Server (vLLM or TensorRT-LLM backend) for declared models";
    package = mkOption {
      type = types.nullOr types.package;
      default = null;
      example = lib.literalExpression "inputs.my-triton.packages.x86_64-linux.tritonserver";
      description = ''
        Triton Inference Server with the vLLM backend (`bin/tritonserver`), and the Python
        backend with TensorRT-LLM for `tensorrtllm` models. nixpkgs has none:
        bring your own derivation (an overlay, another flake). For `model-pull check`, give it
        `passthru.cudaCapabilities`; without it the manifest lists none.
      '';
    };
    models = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.backend = mkOption {
            type = types.enum [
              "vllm"
              "tensorrtllm"
            ];
            default = "vllm";
            description = ''
              The Triton backend that runs the model. `vllm`: the vLLM backend, on a `dual` or
              `single` entry (`1/model.json`). `tensorrtllm`: TensorRT-LLM's LLM API model
              (`llmapiModel`), on a `dual` or `hf` entry: `1/model.yaml` names the entry's
              snapshot as the model and `backend: pytorch`, which loads a Hugging Face or
              ModelOpt unified checkpoint directly
              (https://github.com/NVIDIA/TensorRT-LLM/tree/main/triton_backend).
            '';
          };
          options.overrides = mkOption {
            type = types.attrsOf types.anything;
            default = { };
            example = {
              max_model_len = 8192;
            };
            description = ''
              With the vLLM backend: vLLM engine arguments that override the entry's
              model-defaults.json. With the entry's `engineDefaults` they become `1/model.json`,
              which the vLLM backend passes to `AsyncEngineArgs(**json)`: every key must be an
              engine argument of that vLLM (the list the package carries as
              `passthru.runtimeArgs`, else the one model-pull ships). With `tensorrtllm`: LLM
              API arguments (`kv_cache_config`, `max_seq_len`, ...) and `triton_config`
              (`decoupled`, `max_batch_size`), merged into `1/model.yaml`.
            '';
          };
        }
      );
      default = { };
      example = {
        qwen3-8b = { };
      };
      description = "Declared models that this server loads.";
    };
    llmapiModel = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = lib.literalExpression ''"''${inputs.tensorrt-llm}/triton_backend/all_models/llmapi/tensorrt_llm"'';
      description = ''
        TensorRT-LLM's LLM API model for Triton (`config.pbtxt`, `1/model.py`, `1/helpers.py`):
        `triton_backend/all_models/llmapi/tensorrt_llm` of the TensorRT-LLM the Triton package
        runs. Each `tensorrtllm` model is a copy of it with its own `1/model.yaml`.
      '';
    };
    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address of the HTTP and gRPC endpoints.";
    };
    httpPort = mkOption {
      type = types.port;
      default = 8000;
      description = "HTTP/REST port (KServe v2 API).";
    };
    grpcPort = mkOption {
      type = types.port;
      default = 8001;
      description = "gRPC port.";
    };
    metricsPort = mkOption {
      type = types.port;
      default = 8002;
      description = "Prometheus metrics port.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the three ports in the firewall.";
    };
    gpus = ilib.gpusOption "Triton";
    # On demand, the HTTP and gRPC ports are sockets; the metrics port is not served (a scrape
    # would start the server and keep it loaded).
    onDemand = ilib.onDemandOption "Triton";
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Arguments appended verbatim (quoted) to tritonserver's command line.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      [
        {
          assertion = cfg.models != { };
          message = "services.inference.triton.models is empty: name at least one declared model to serve.";
        }
        {
          assertion = cfg.package != null;
          message = "services.inference.triton.package is not set: nixpkgs has no Triton Inference Server; set it to your build (with the vLLM backend).";
        }
      ]
      ++ lib.optional (llmapiModels != { }) {
        assertion = cfg.llmapiModel != null;
        message = "services.inference.triton.llmapiModel is not set: the models ${lib.concatStringsSep ", " (lib.attrNames llmapiModels)} use the tensorrtllm backend, which needs TensorRT-LLM's LLM API model (triton_backend/all_models/llmapi/tensorrt_llm).";
      }
      ++ lib.concatLists (
        lib.mapAttrsToList (name: m: [
          {
            assertion = !(m.overrides ? model);
            message = "services.inference.triton.models.${name}.overrides.model: the Triton unit sets `model` (the entry's weights) itself.";
          }
        ]) llmapiModels
      )
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: m:
          lib.optionals (m.backend == "vllm") (ilib.engineArgsAssertions {
            option = "services.inference.triton.models.${name}.overrides";
            args = ilib.argsOf "vllm" cfg.package;
          } m.overrides)
          ++ lib.optionals (m.backend == "vllm" && models ? ${name}) (
            ilib.engineArgsAssertions {
              option = "services.inference.models.${name}.engineDefaults";
              args = ilib.argsOf "vllm" cfg.package;
            } models.${name}.engineDefaults
          )
        ) cfg.models
      )
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: m:
          ilib.hfModelAssertions {
            option = "services.inference.triton.models.${name}";
            inherit models;
            model = name;
            runtime = if m.backend == "vllm" then "Triton" else "Triton's TensorRT-LLM backend";
            layouts = layoutsOf.${m.backend};
          }
        ) cfg.models
      );

    warnings = lib.concatLists (
      lib.mapAttrsToList (
        name: m:
        map
          (
            k:
            "services.inference.triton.models.${name}.overrides.${k}: not an LLM API argument of TensorRT-LLM ${trtllmArgs.version} (as far as the list model-pull ships knows); TensorRT-LLM refuses a key it does not know."
          )
          (
            lib.filter (k: !(lib.elem k (trtllmArgs.llmApiArgs ++ [ "triton_config" "model" ]))) (
              lib.attrNames m.overrides
            )
          )
      ) llmapiModels
    );

    systemd = ilib.onDemandUnits {
      inherit pkgs;
      inherit (cfg) onDemand gpus;
      unit = "triton";
      inherit service listeners;
      # 200 once every model is loaded.
      health = {
        port = cfg.httpPort;
        path = "/v2/health/ready";
      };
    };

    services.inference.runtimeUnits."triton.service" = {
      # What `model-pull check` compares the models with: TensorRT-LLM's kernels when every
      # model goes through its backend, else the vLLM backend's (the manifest has one runtime
      # per unit).
      runtime =
        if cfg.models != { } && lib.all (m: m.backend == "tensorrtllm") (lib.attrValues cfg.models) then
          "trtllm"
        else
          "triton";
      option = "services.inference.triton";
      models = lib.attrNames cfg.models;
      cudaCapabilities = ilib.cudaCapabilitiesOf cfg.package;
      ports = [
        cfg.httpPort
        cfg.grpcPort
        cfg.metricsPort
      ];
      onDemand = ilib.onDemandRecord "triton" cfg.onDemand listeners;
    };

    networking.firewall.allowedTCPPorts = lib.optionals cfg.openFirewall [
      cfg.httpPort
      cfg.grpcPort
      cfg.metricsPort
    ];
  };
}
