# services.inference: the declared models, the state root, model-pull, and the manifest
# /etc/inference/models.json that joins the runtime modules to the helper
# (format: docs/ARCHITECTURE.md, "The manifest").
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.inference;
  ilib = import ./lib.nix { inherit lib; };
  inherit (lib) types mkOption;

  isCommit = rev: builtins.match "[0-9a-f]{40}" rev != null;

  # model-pull's default (datamodel.default_triton_name): the repo's name part in lower case,
  # every character other than a letter, a digit or "_" turned into "_".
  defaultTritonName =
    repo:
    lib.toLower (
      lib.concatMapStrings (part: if lib.isList part then "_" else part) (
        builtins.split "[^A-Za-z0-9_]" (lib.last (lib.splitString "/" repo))
      )
    );

  modelModule =
    { name, ... }:
    {
      options = {
        repo = mkOption {
          type = types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*";
          example = "Qwen/Qwen3-8B";
          description = "Hugging Face repository (`org/name`).";
        };
        revision = mkOption {
          type = types.str;
          example = "b968826d9c46dd6066d109eabc6255188de91218";
          description = ''
            The commit to serve (40 hex digits). A branch name is accepted, with a warning:
            the deployment is then not reproducible.
          '';
        };
        include = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "*Q4_K_M.gguf" ];
          description = "Glob patterns of the files to fetch (empty: every file).";
        };
        exclude = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "*.pth" "original/*" ];
          description = "Glob patterns of files never to fetch.";
        };
        layout = mkOption {
          type = types.enum [
            "dual"
            "single"
            "hf"
            "gguf"
          ];
          default = "dual";
          description = ''
            Tree of the entry: `dual` (Hugging Face cache + Triton repository, one copy of the
            weights), `single` (Triton only), `hf` (Hugging Face cache only), `gguf` (llama.cpp).
          '';
        };
        tritonName = mkOption {
          type = types.nullOr (types.strMatching "[A-Za-z0-9_.-]+");
          default = null;
          defaultText = lib.literalMD "the repository's name part in lower case, every character other than a letter, a digit or `_` turned into `_` (`Qwen/Qwen3.5-2B`: `qwen3_5_2b`), for the `dual` and `single` layouts";
          description = "Directory name Triton sees in its model repository.";
        };
        narHash = mkOption {
          type = types.nullOr (types.strMatching "sha256-[A-Za-z0-9+/]{43}=");
          default = null;
          example = "sha256-8ff8NJ1qJ0s8WbJgHHdFWGlsv1JFO2mMR7Jkjvoe1Ug=";
          description = ''
            Content hash (SRI, as `nix hash path` prints it) of the entry. When set, the units
            gate on exactly this entry (`<root>/by-hash/…`) and model-pull refuses any other content.
          '';
        };
        engineDefaults = mkOption {
          type = types.attrsOf types.anything;
          default = { };
          example = {
            gpu_memory_utilization = 0.85;
            max_model_len = 4096;
            dtype = "auto";
          };
          description = "vLLM engine arguments written to the entry's `model-defaults.json` (Triton reads them).";
        };
        patchTokenizer = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Rewrite `"tokenizer_class": "TokenizersBackend"` to `PreTrainedTokenizerFast` in the entry
            (SGLang 0.5.x ships a transformers without TokenizersBackend).
          '';
        };
      };
    };

  models = lib.mapAttrs (
    _: m:
    m
    // {
      tritonName =
        if m.tritonName != null then
          m.tritonName
        else if lib.elem m.layout [ "dual" "single" ] then
          defaultTritonName m.repo
        else
          null;
    }
  ) cfg.models;

  unitsFor = name: lib.attrNames (lib.filterAttrs (_: u: lib.elem name u.models) cfg.runtimeUnits);

  manifest = {
    version = 1;
    inherit (cfg) root endpoint tokenFile;
    caches = {
      inherit (cfg.caches) urls trustedPublicKeys stalledTimeout;
    };
    models = lib.mapAttrs (name: m: {
      inherit (m)
        repo
        revision
        include
        exclude
        layout
        tritonName
        narHash
        engineDefaults
        patchTokenizer
        ;
      units = unitsFor name;
    }) models;
    units = lib.mapAttrs (
      _: u:
      {
        inherit (u) runtime models cudaCapabilities;
      }
      // lib.optionalAttrs (u.onDemand != null) { inherit (u) onDemand; }
    ) cfg.runtimeUnits;
  };

  # The manifest as a file: /etc/inference/models.json, and the restart trigger of the pull.
  manifestFile = pkgs.writeText "inference-models.json" (builtins.toJSON manifest);

  # Nix store names (nix-store --add): the helper names each entry `<hash>-<model name>`.
  isStoreName = name: builtins.match "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*" name != null;

  onDemandUnits = lib.attrNames (lib.filterAttrs (_: u: u.onDemand != null) cfg.runtimeUnits);

  portUsers = lib.foldlAttrs (
    acc: unit: u:
    lib.foldl' (a: p: a // { ${toString p} = (a.${toString p} or [ ]) ++ [ "${u.option} (${unit})" ]; }) acc u.ports
  ) { } cfg.runtimeUnits;

  # Where model-pull.service keeps huggingface_hub's home (HF_HOME): hf-xet writes its chunk
  # cache under $HF_HOME/xet, and ProtectHome hides root's home.
  pullCache = "/var/cache/model-pull";

  # Exit codes of model-pull (helper/model_pull/errors.py) that a retry cannot change: the
  # declaration or the machine must change first. The unit fails at once and says why.
  permanentFailures = [
    2 # usage
    10 # repository not found
    11 # revision not found
    13 # include/exclude select no file
    15 # unsafe file names in the listing
    17 # the state root is not writable
    22 # content differs from the declared narHash
    23 # unreadable manifest
    25 # bad input
    31 # the model cannot run on this GPU with this runtime
    32 # the model does not fit in the GPU's memory
    # The pull itself succeeded: a second run finds nothing new and restarts nothing.
    40 # no system bus, or the D-Bus bindings cannot load
    41 # a waiting unit failed to start on the new entry
  ];
in
{
  options.services.inference = {
    root = mkOption {
      type = types.strMatching "/.*[^/]";
      default = "/var/lib/inference";
      description = "State root of model-pull: entries, the `models/` links, cache and logs.";
    };

    package = mkOption {
      type = types.package;
      # Built from this repository, so the helper reads the manifest these modules write.
      default = pkgs.python3Packages.toPythonApplication (pkgs.python3Packages.callPackage ../nix/model-pull.nix { });
      defaultText = lib.literalMD "model-pull built from this repository's `nix/model-pull.nix` with `pkgs.python3Packages`";
      description = "The model-pull helper (it reads the manifest these modules write: keep the two from one revision).";
    };

    tokenFile = mkOption {
      # A string, not a path: a path would be copied into the world-readable store.
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/hf-token";
      description = ''
        File holding a Hugging Face token for gated repositories, read by model-pull at run
        time. Never copied into the Nix store.
      '';
    };

    endpoint = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://hf-mirror.example.org";
      description = "Hub endpoint (`HF_ENDPOINT`) for a mirror; `null` is huggingface.co.";
    };

    autoPull = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run `model-pull.service` at boot (after network-online.target): pull every declared
        model that is missing, in the background, and restart the units waiting for it. A
        `nixos-rebuild switch` that adds or changes a model runs it again (the manifest is its
        restart trigger). A failed pull is retried with a growing delay (up to an hour), except
        when retrying cannot help (a missing repository, a model that does not fit the GPU...):
        `systemctl status model-pull` then shows why.
      '';
    };

    exclusiveGpu = mkOption {
      type = types.bool;
      default = false;
      description = ''
        The runtime units conflict with each other: starting one stops the others and frees
        their GPU memory. For runtimes that share a GPU on demand, use their `onDemand` instead.
      '';
    };

    models = mkOption {
      type = types.attrsOf (types.submodule modelModule);
      default = { };
      description = "Models to pull with model-pull and serve with the runtimes below.";
    };

    caches = {
      urls = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "http://fleet-puller:5000" ];
        description = ''
          Nix binary caches (store URLs, as `nix copy --from` takes them) that model-pull asks,
          in order, for a pinned model (one with `narHash`) before the Hub: another machine of
          the fleet serving its entries, e.g. with `services.harmonia` and {option}`nixStore`,
          or a static HTTP server over a directory `model-pull push` writes. The path asked for
          is `/nix/store/<hash>-<name>`, computed from the model's name and `narHash`: declare
          the model under the same name on every machine. Nix verifies what it substitutes; a
          miss, an unreachable cache or a refused path falls back to the Hub. A model without
          `narHash` never comes from a cache (`model-pull prefetch` prints its pin).
        '';
      };
      trustedPublicKeys = mkOption {
        type = types.listOf (types.strMatching "[^:[:space:]]+:[A-Za-z0-9+/]+=*");
        default = [ ];
        example = [ "fleet-puller-1:LssfjViz6xR/Ob2lf3fksT2BG6Lusi6KpUHbdyPfbPY=" ];
        description = ''
          Public keys (`name:base64`, as `nix-store --generate-binary-cache-key` writes them)
          whose signatures are accepted for paths without a content address (a `CA:` line):
          caches that drop it, such as nix-serve. Entries `model-pull push` writes, and harmonia
          serves, carry it and need no key. Signature checks are never disabled.
        '';
      };
      stalledTimeout = mkOption {
        type = types.ints.positive;
        default = 60;
        description = ''
          Seconds a cache may take to connect or send nothing before it counts as unreachable
          (Nix's `connect-timeout` and `stalled-download-timeout`); then the next cache, or the Hub.
        '';
      };
    };

    nixStore = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Also import each entry into /nix/store, with a GC root under `<root>/gcroots`
        (`model-pull --store nix`), so that a binary cache server over /nix/store (such as
        `services.harmonia`) serves the entries to the rest of the fleet. The caches then also
        go into `nix.settings` (`extra-substituters`, `extra-trusted-public-keys`), for Nix
        itself. Each entry then takes its space twice: in the state root and in /nix/store.
      '';
    };

    runtimeUnits = mkOption {
      internal = true;
      visible = false;
      type = types.attrsOf (
        types.submodule {
          options = {
            runtime = mkOption { type = types.str; };
            models = mkOption { type = types.listOf types.str; };
            option = mkOption { type = types.str; };
            ports = mkOption {
              type = types.listOf types.port;
              default = [ ];
            };
            # What the unit's runtime package has CUDA code for (lib.nix, cudaCapabilitiesOf).
            cudaCapabilities = mkOption { type = types.listOf types.str; };
            # Served on demand (lib.nix, onDemandRecord): its idle timeout and socket units.
            onDemand = mkOption {
              type = types.nullOr (
                types.submodule {
                  options = {
                    idleTimeout = mkOption { type = types.ints.positive; };
                    sockets = mkOption { type = types.listOf types.str; };
                  };
                }
              );
              default = null;
            };
          };
        }
      );
      default = { };
      description = "Runtime units the modules declare, by unit name (feeds the manifest).";
    };

    resolvedModels = mkOption {
      internal = true;
      visible = false;
      readOnly = true;
      type = types.attrsOf types.anything;
      default = models;
      description = "The declared models with derived defaults filled in.";
    };
  };

  config = lib.mkIf (cfg.models != { } || cfg.runtimeUnits != { }) {
    assertions =
      [
        {
          assertion = cfg.tokenFile == null || lib.hasPrefix "/" cfg.tokenFile;
          message = "services.inference.tokenFile must be an absolute path (got \"${toString cfg.tokenFile}\").";
        }
        {
          # The root is in paths that systemd and tmpfiles expand specifiers in.
          assertion = !lib.hasInfix "%" cfg.root;
          message = "services.inference.root must not contain '%' (got \"${cfg.root}\"): systemd reads '%' in unit files as a specifier.";
        }
      ]
      ++ lib.mapAttrsToList (name: _: {
        assertion = isStoreName name;
        message = "services.inference.models.\"${name}\": a model name must be a Nix store name (letters, digits and + - . _ ? =, not starting with '.'): model-pull names its entry <hash>-<name>.";
      }) cfg.models
      ++ lib.mapAttrsToList (port: users: {
        assertion = lib.length users < 2;
        message = "services.inference: port ${port} is used by more than one service: ${lib.concatStringsSep ", " users}.";
      }) portUsers
      ++ lib.mapAttrsToList (name: m: {
        assertion = m.layout == "hf" || m.layout == "gguf" || m.tritonName != null;
        message = "services.inference.models.${name}.tritonName is needed for the ${m.layout} layout.";
      }) models
      ++ [
        {
          # Conflicts= between on-demand units flip-flops into trigger-limit-hit when requests for
          # two of them overlap, and cuts a request mid-stream; their GPU locks queue instead.
          assertion = !(cfg.exclusiveGpu && onDemandUnits != [ ]);
          message = "services.inference.exclusiveGpu cannot be combined with on-demand runtimes (${lib.concatStringsSep ", " onDemandUnits}): on-demand runtimes on one GPU already wait for each other; set exclusiveGpu = false.";
        }
      ]
      # engineDefaults become Triton's model.json: triton.nix checks those of the models it
      # serves against its own vLLM; the others against the vLLM model-pull ships the list of.
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: m:
          lib.optionals (!(cfg ? triton && cfg.triton.enable && cfg.triton.models ? ${name})) (
            ilib.engineArgsAssertions {
              option = "services.inference.models.${name}.engineDefaults";
              args = ilib.runtimeArgs.vllm;
            } m.engineDefaults
          )
        ) models
      );

    warnings = lib.concatLists (
      lib.mapAttrsToList (
        name: m:
        lib.optional (!isCommit m.revision)
          "services.inference.models.${name}.revision is \"${m.revision}\", not a 40-hex commit: the deployment is not reproducible (the branch may move)."
      ) models
    );

    environment.systemPackages = [ cfg.package ];

    # Only with entries in /nix/store: a substituter in nix.settings is asked by every Nix
    # operation on the machine (and its misses are remembered for an hour).
    nix.settings = lib.mkIf (cfg.nixStore && cfg.caches.urls != [ ]) {
      extra-substituters = cfg.caches.urls;
      extra-trusted-public-keys = cfg.caches.trustedPublicKeys;
    };

    environment.etc."inference/models.json".source = manifestFile;

    users.users.inference = {
      isSystemUser = true;
      group = "inference";
      description = "Inference runtimes (read-only access to the model entries)";
    };
    users.groups.inference = { };

    systemd.tmpfiles.rules = [
      "d ${cfg.root} 0755 root root -"
    ]
    # The per-GPU locks of the on-demand runtimes (lib.nix, gpuLockArgs), writable by them only.
    ++ lib.optional (onDemandUnits != [ ]) "d ${ilib.gpuLockDir} 0770 root inference -";

    systemd.services = lib.mkMerge [
      (lib.mkIf cfg.exclusiveGpu (
        lib.mapAttrs' (
          unit: _:
          lib.nameValuePair (lib.removeSuffix ".service" unit) {
            conflicts = lib.filter (u: u != unit) (lib.attrNames cfg.runtimeUnits);
          }
        ) cfg.runtimeUnits
      ))
      (lib.mkIf cfg.autoPull {
        model-pull = {
          description = "Pull the declared inference models that are missing";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          # A switch that adds or changes a model restarts it (switch-to-configuration compares
          # the unit files of active units; X-Restart-Triggers holds the manifest's store path).
          restartTriggers = [ manifestFile ];
          # nix and nix-store: substitution from the caches, and --store nix.
          path = lib.optional (cfg.caches.urls != [ ] || cfg.nixStore) config.nix.package;
          environment = {
            MODEL_PULL_MANIFEST = "/etc/inference/models.json";
            HF_HUB_DISABLE_PROGRESS_BARS = "1";
            HF_HUB_DISABLE_TELEMETRY = "1";
            HF_HOME = pullCache;
          }
          // lib.optionalAttrs (cfg.endpoint != null) { HF_ENDPOINT = ilib.escapeSpecifiers cfg.endpoint; };
          serviceConfig = {
            # In the background: boot does not wait for gigabytes of weights. model-pull
            # restarts the units waiting for what it installed, over D-Bus.
            Type = "exec";
            ExecStart = ilib.execLine (
              [ (lib.getExe' cfg.package "model-pull") ]
              ++ lib.optionals cfg.nixStore [
                "--store"
                "nix"
              ]
            );
            # Stays active after a successful pull, so that only a changed manifest (the restart
            # trigger) pulls again on the next switch, not every switch.
            RemainAfterExit = true;
            # Retries with a growing delay, 30 s up to 1 h over 8 steps (systemd >= 254, as
            # nixpkgs' ollama model loader does); never for failures a retry cannot change.
            Restart = "on-failure";
            RestartSec = "30s";
            RestartSteps = 8;
            RestartMaxDelaySec = "1h";
            RestartPreventExitStatus = map toString permanentFailures;
            # hf-xet's cache ($HF_HOME/xet) and huggingface_hub's token/locks live here.
            CacheDirectory = "model-pull";
            # Root writes the state root and talks to systemd; nothing else.
            ReadWritePaths = [ cfg.root ];
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            # The GPU check before a download reads the GPU through NVML: PrivateDevices would
            # hide /dev/nvidia*, so a closed device policy allows the NVIDIA nodes only.
            PrivateDevices = false;
            DevicePolicy = "closed";
            DeviceAllow = ilib.gpuDeviceAllow;
            NoNewPrivileges = true;
            ProtectKernelTunables = true;
            ProtectKernelModules = true;
            ProtectControlGroups = true;
            ProtectKernelLogs = true;
            ProtectClock = true;
            ProtectHostname = true;
            RestrictSUIDSGID = true;
            RestrictNamespaces = true;
            RestrictRealtime = true;
            LockPersonality = true;
            # No MemoryDenyWriteExecute: PyGObject's callbacks may need libffi closures.
            SystemCallArchitectures = "native";
            SystemCallFilter = [ "@system-service" ];
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
              # NVML reads interface lists over netlink.
              "AF_NETLINK"
            ];
            # Entries are world-readable (0444/0555) so the runtimes' user can read them.
            UMask = "0022";
            Nice = 10;
            IOSchedulingClass = "idle";
          };
        };
      })
    ];
  };
}
