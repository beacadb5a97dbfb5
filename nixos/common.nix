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
    units = lib.mapAttrs (_: u: {
      inherit (u) runtime models cudaCapabilities;
    }) cfg.runtimeUnits;
  };

  portUsers = lib.foldlAttrs (
    acc: unit: u:
    lib.foldl' (a: p: a // { ${toString p} = (a.${toString p} or [ ]) ++ [ "${u.option} (${unit})" ]; }) acc u.ports
  ) { } cfg.runtimeUnits;

  # Pulls what is missing, then model-pull restarts the waiting units itself (over D-Bus).
  pullScript = pkgs.writeShellScript "model-pull-auto" ''
    set -u
    delay=30
    for attempt in 1 2 3 4 5; do
      ${lib.getExe' cfg.package "model-pull"} && exit 0
      rc=$?
      echo "model-pull failed (exit $rc), attempt $attempt of 5; retrying in $delay s" >&2
      sleep "$delay"
      delay=$((delay * 2))
    done
    exit "$rc"
  '';
in
{
  options.services.inference = {
    root = mkOption {
      type = types.strMatching "/.*[^/]";
      default = "/var/lib/inference";
      description = "State root of model-pull: entries, the `models/` links, cache and logs.";
    };

    package = lib.mkPackageOption pkgs "model-pull" { };

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
        model that is missing, in the background, and restart the units waiting for it.
      '';
    };

    exclusiveGpu = mkOption {
      type = types.bool;
      default = false;
      description = ''
        The runtime units conflict with each other: starting one stops the others and frees
        their GPU memory.
      '';
    };

    models = mkOption {
      type = types.attrsOf (types.submodule modelModule);
      default = { };
      description = "Models to pull with model-pull and serve with the runtimes below.";
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
            cudaCapabilities = mkOption {
              type = types.listOf types.str;
              default = ilib.cudaCapabilities config pkgs;
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
      ]
      ++ lib.mapAttrsToList (port: users: {
        assertion = lib.length users < 2;
        message = "services.inference: port ${port} is used by more than one service: ${lib.concatStringsSep ", " users}.";
      }) portUsers
      ++ lib.mapAttrsToList (name: m: {
        assertion = m.layout == "hf" || m.layout == "gguf" || m.tritonName != null;
        message = "services.inference.models.${name}.tritonName is needed for the ${m.layout} layout.";
      }) models;

    warnings = lib.concatLists (
      lib.mapAttrsToList (
        name: m:
        lib.optional (!isCommit m.revision)
          "services.inference.models.${name}.revision is \"${m.revision}\", not a 40-hex commit: the deployment is not reproducible (the branch may move)."
      ) models
    );

    environment.systemPackages = [ cfg.package ];

    environment.etc."inference/models.json".text = builtins.toJSON manifest;

    users.users.inference = {
      isSystemUser = true;
      group = "inference";
      description = "Inference runtimes (read-only access to the model entries)";
    };
    users.groups.inference = { };

    systemd.tmpfiles.rules = [ "d ${cfg.root} 0755 root root -" ];

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
          environment = {
            MODEL_PULL_MANIFEST = "/etc/inference/models.json";
            HF_HUB_DISABLE_PROGRESS_BARS = "1";
          }
          // lib.optionalAttrs (cfg.endpoint != null) { HF_ENDPOINT = cfg.endpoint; };
          serviceConfig = {
            # In the background: boot does not wait for gigabytes of weights.
            Type = "exec";
            ExecStart = "${pullScript}";
            # Root writes the state root and talks to systemd; nothing else.
            ReadWritePaths = [ cfg.root ];
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
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
