# services.inference.triton: one Triton Inference Server (vLLM backend) for several declared
# models; it assembles its model repository from the entries at every start.
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

  # Models it can load; the others are reported by the assertions.
  served = lib.filterAttrs (
    name: _: models ? ${name} && lib.elem models.${name}.layout [ "dual" "single" ]
  ) cfg.models;

  assembleArgs = lib.concatLists (
    lib.mapAttrsToList (name: m: [
      models.${name}.tritonName
      (ilib.entryPath top.root name models.${name})
      (builtins.toJSON m.overrides)
    ]) served
  );

  service = {
    description = "Triton Inference Server (${lib.concatStringsSep ", " (lib.attrNames served)})";
    wantedBy = [ "multi-user.target" ];
    after = [ "network.target" ];
    unitConfig = ilib.startLimit // {
      ConditionPathExists = lib.mapAttrsToList (
        name: _: ilib.tritonConfig top.root name models.${name}
      ) served;
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
    enable = lib.mkEnableOption "Triton Inference Server (vLLM backend) for declared models";
    package = mkOption {
      type = types.nullOr types.package;
      default = null;
      example = lib.literalExpression "inputs.my-triton.packages.x86_64-linux.tritonserver";
      description = ''
        Triton Inference Server with the vLLM backend (`bin/tritonserver`). nixpkgs has none:
        bring your own derivation (an overlay, another flake). For `model-pull check`, give it
        `passthru.cudaCapabilities`; without it the manifest lists none.
      '';
    };
    models = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.overrides = mkOption {
            type = types.attrsOf types.anything;
            default = { };
            example = {
              max_model_len = 8192;
            };
            description = ''
              vLLM engine arguments that override the entry's model-defaults.json. With the
              entry's `engineDefaults` they become `1/model.json`, which the vLLM backend passes
              to `AsyncEngineArgs(**json)`: every key must be an engine argument of that vLLM
              (the list the package carries as `passthru.runtimeArgs`, else the one model-pull
              ships).
            '';
          };
        }
      );
      default = { };
      example = {
        qwen3-8b = { };
      };
      description = "Declared models (layout `dual` or `single`) that this server loads.";
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
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: m:
          ilib.engineArgsAssertions {
            option = "services.inference.triton.models.${name}.overrides";
            args = ilib.argsOf "vllm" cfg.package;
          } m.overrides
          ++ lib.optionals (models ? ${name}) (
            ilib.engineArgsAssertions {
              option = "services.inference.models.${name}.engineDefaults";
              args = ilib.argsOf "vllm" cfg.package;
            } models.${name}.engineDefaults
          )
        ) cfg.models
      )
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: _:
          ilib.hfModelAssertions {
            option = "services.inference.triton.models.${name}";
            inherit models;
            model = name;
            runtime = "Triton";
            layouts = [
              "dual"
              "single"
            ];
          }
        ) cfg.models
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
      runtime = "triton";
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
