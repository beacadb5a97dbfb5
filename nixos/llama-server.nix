# services.inference.llama-server.instances.<name>: llama.cpp's llama-server on a GGUF entry.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  top = config.services.inference;
  cfg = top.llama-server;
  ilib = import ./lib.nix { inherit lib; };
  inherit (lib) types mkOption;
  models = top.resolvedModels;

  ggufRef =
    what:
    types.submodule {
      options = {
        name = mkOption {
          type = types.str;
          example = "qwen3-8b-gguf";
          description = "Name of the ${what} in `services.inference.models` (layout `gguf`).";
        };
        file = mkOption {
          type = types.str;
          example = "Qwen3-8B-Q4_K_M.gguf";
          description = "GGUF file of that entry, relative to its repository root.";
        };
      };
    };

  instanceModule =
    { name, ... }:
    {
      options = ilib.listenOptions {
        port = 8080;
        portDescription = "Port to listen on.";
      }
      // {
        model = mkOption {
          type = ggufRef "model";
          description = "The model to serve (`-m`).";
        };
        draft = mkOption {
          type = types.nullOr (ggufRef "draft model");
          default = null;
          description = "Draft model for speculative decoding (`-md`); `null` disables it.";
        };
        contextSize = mkOption {
          type = types.ints.positive;
          default = 4096;
          description = "Context size in tokens (`-c`), shared by all parallel slots.";
        };
        kvQuant = mkOption {
          type = types.nullOr (
            types.enum [
              "f32"
              "f16"
              "bf16"
              "q8_0"
              "q4_0"
              "q4_1"
              "iq4_nl"
              "q5_0"
              "q5_1"
            ]
          );
          default = null;
          example = "q8_0";
          description = "KV cache type for keys and values (`-ctk`/`-ctv`); `null` keeps f16.";
        };
        gpuLayers = mkOption {
          type = types.ints.unsigned;
          default = 999;
          description = "Layers to offload to the GPU (`-ngl`); also used for the draft (`-ngld`).";
        };
        flashAttention = mkOption {
          type = types.enum [
            "on"
            "off"
            "auto"
          ];
          default = "auto";
          description = "Flash attention (`-fa`). A quantized V cache needs it on.";
        };
        parallel = mkOption {
          type = types.ints.positive;
          default = 1;
          description = "Parallel slots (`-np`). Each slot multiplies the KV cache; 1 for one user.";
        };
        metrics = mkOption {
          type = types.bool;
          default = false;
          description = "Prometheus metrics at `/metrics` (`--metrics`).";
        };
        apiKeyFile = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/run/secrets/llama-api-key";
          description = ''
            File with the API key(s) clients must send. Passed to the unit with `LoadCredential`:
            never in the store or on the command line.
          '';
        };
        gpus = ilib.gpusOption "the server";
        onDemand = ilib.onDemandOption "llama-server";
        settings = mkOption {
          type = ilib.flagSettingsType;
          default = { };
          example = {
            spec-draft-n-max = 16;
            draft-p-min = 0.75;
            no-webui = true;
          };
          description = ''
            More llama-server flags, by long name (RFC 42): `{ spec-draft-n-max = 16; webui = false; }`
            gives `--spec-draft-n-max 16 --no-webui`; a list gives one comma-separated value, as
            llama.cpp reads several values. An option the llama-server model-pull was tested with
            does not have is a warning.
          '';
        };
        extraArgs = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Arguments appended verbatim (quoted) to the command line.";
        };
      };
    };

  unitName = name: "llama-server-${name}";

  pathOf = ref: ilib.ggufFile top.root ref.name models.${ref.name} ref.file;

  mkService =
    name: inst:
    let
      refs = [ inst.model ] ++ lib.optional (inst.draft != null) inst.draft;
      args =
        [
          (lib.getExe' cfg.package "llama-server")
          "-m"
          (pathOf inst.model)
          "--host"
          (ilib.bindHost inst)
          "--port"
          inst.port
          "-c"
          inst.contextSize
          "-ngl"
          inst.gpuLayers
          "-fa"
          inst.flashAttention
          "-np"
          inst.parallel
        ]
        ++ lib.optional inst.metrics "--metrics"
        ++ lib.optionals (inst.kvQuant != null) [
          "-ctk"
          inst.kvQuant
          "-ctv"
          inst.kvQuant
        ]
        ++ lib.optionals (inst.draft != null) [
          "-md"
          (pathOf inst.draft)
          "-ngld"
          inst.gpuLayers
        ]
        ++ ilib.settingsToArgs {
          args = ilib.argsOf "llama-server" cfg.package;
          lists = "comma";
        } inst.settings
        ++ inst.extraArgs;
    in
    {
      description = "llama.cpp server ${name} (${models.${inst.model.name}.repo})";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      # Skipped, not failed, until model-pull has installed the files.
      unitConfig = ilib.startLimit // {
        ConditionPathExists = map (ref: ilib.escapeSpecifiers (pathOf ref)) refs;
      };
      environment = ilib.gpuEnv inst.gpus;
      serviceConfig =
        ilib.hardening {
          user = "inference";
          root = top.root;
          jit = false;
        }
        // {
          # %d: the unit's credentials directory; the key itself never reaches the unit file.
          ExecStart =
            ilib.execLine args + lib.optionalString (inst.apiKeyFile != null) " --api-key-file %d/api-key";
        }
        // lib.optionalAttrs (inst.apiKeyFile != null) {
          LoadCredential = [ "api-key:${ilib.escapeSpecifiers inst.apiKeyFile}" ];
        };
    };

  onDemandArgs = ilib.onePortOnDemand {
    inherit pkgs unitName mkService;
    healthPath = "/health"; # 503 while the model loads, 200 once it serves
  };

  declaredGguf =
    inst: ref: what:
    [
      {
        assertion = models ? ${ref.name};
        message = "services.inference.llama-server.instances.${inst}.${what}.name: model \"${ref.name}\" is not declared in services.inference.models.";
      }
      {
        assertion = !(models ? ${ref.name}) || models.${ref.name}.layout == "gguf";
        message = "services.inference.llama-server.instances.${inst}.${what}: model \"${ref.name}\" has layout \"${
          models.${ref.name}.layout or ""
        }\", but llama-server reads GGUF files: set services.inference.models.${ref.name}.layout = \"gguf\".";
      }
    ];
in
{
  options.services.inference.llama-server = {
    package = lib.mkPackageOption pkgs "llama-cpp" {
      extraDescription = ''
        nixpkgs builds it with CUDA when `nixpkgs.config.cudaSupport = true` (and
        `allowUnfree`), for `nixpkgs.config.cudaCapabilities`; or override one package:
        `pkgs.llama-cpp.override { cudaSupport = true; }`.
      '';
    };
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      description = "llama-server instances, each a unit `llama-server-<name>.service`.";
    };
  };

  config = lib.mkIf (cfg.instances != { }) {
    assertions = lib.concatLists (
      lib.mapAttrsToList (
        name: inst:
        declaredGguf name inst.model "model"
        ++ lib.optionals (inst.draft != null) (declaredGguf name inst.draft "draft")
        ++ [
          {
            assertion = inst.apiKeyFile == null || lib.hasPrefix "/" inst.apiKeyFile;
            message = "services.inference.llama-server.instances.${name}.apiKeyFile must be an absolute path.";
          }
        ]
      ) cfg.instances
    );

    # Only evaluated when every model is declared (assertions report the rest).
    systemd = lib.mkMerge (
      lib.mapAttrsToList (name: inst: ilib.onDemandUnits (onDemandArgs name inst)) (
        lib.filterAttrs (
          _: inst: lib.all (r: models ? ${r.name}) ([ inst.model ] ++ lib.optional (inst.draft != null) inst.draft)
        ) cfg.instances
      )
    );

    warnings = lib.concatLists (
      lib.mapAttrsToList (
        name: inst:
        (ilib.settingsChecks {
          option = "services.inference.llama-server.instances.${name}.settings";
          label = "llama-server";
          args = ilib.argsOf "llama-server" cfg.package;
        } inst.settings).warnings
        ++ lib.optional (inst.onDemand.enable && inst.metrics)
          "services.inference.llama-server.instances.${name}: metrics with onDemand: a scrape of /metrics is a request, which starts the model and keeps it loaded."
      ) cfg.instances
    );

    services.inference.runtimeUnits = lib.mapAttrs' (
      name: inst:
      lib.nameValuePair "${unitName name}.service" {
        runtime = "llama-server";
        option = "services.inference.llama-server.instances.${name}.port";
        models = [ inst.model.name ] ++ lib.optional (inst.draft != null) inst.draft.name;
        ports = [ inst.port ];
        cudaCapabilities = ilib.cudaCapabilitiesOf cfg.package;
        onDemand = ilib.onDemandRecord (unitName name) inst.onDemand (onDemandArgs name inst).listeners;
      }
    ) cfg.instances;

    networking.firewall.allowedTCPPorts = lib.concatLists (
      lib.mapAttrsToList (_: inst: lib.optional inst.openFirewall inst.port) cfg.instances
    );
  };
}
