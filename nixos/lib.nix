# Helpers shared by the services.inference modules. Pure functions of nixpkgs' lib:
# the paths the units gate on (docs/ARCHITECTURE.md, "What the runtimes read"), the
# hardening every runtime unit gets, and systemd command-line quoting.
{ lib }:
let
  # '/' and '+' cannot appear in a file name the way the helper writes it.
  sanitiseNarHash = lib.replaceStrings [ "/" "+" ] [ "_" "-" ];
in
rec {
  inherit sanitiseNarHash;

  # M in docs/ARCHITECTURE.md: the current entry, or the exact content-addressed one.
  entryPath =
    root: name: model:
    if model.narHash != null then
      "${root}/by-hash/${sanitiseNarHash model.narHash}"
    else
      "${root}/models/${name}";

  # "org/name" -> "models--org--name", the huggingface_hub cache directory name.
  hubRepoDir = repo: "models--${lib.replaceStrings [ "/" ] [ "--" ] repo}";

  hubCache = root: name: model: "${entryPath root name model}/share/models/hub";

  hubRefsMain =
    root: name: model:
    "${hubCache root name model}/${hubRepoDir model.repo}/refs/main";

  ggufFile =
    root: name: model: file:
    "${entryPath root name model}/share/models/gguf/${file}";

  tritonConfig =
    root: name: model:
    "${entryPath root name model}/share/models/${model.tritonName}/config.pbtxt";

  # One argument of an Exec*= line, as nixpkgs' utils.escapeSystemdExecArg quotes it:
  # JSON-style double quotes, and '%' / '$' doubled so systemd expands neither.
  escapeExecArg =
    arg:
    let
      s =
        if builtins.isString arg || builtins.isPath arg || lib.isDerivation arg then
          "${arg}"
        else if builtins.isInt arg || builtins.isFloat arg then
          toString arg
        else
          throw "escapeExecArg: cannot pass a ${builtins.typeOf arg} on a command line";
    in
    lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);

  execLine = args: lib.concatMapStringsSep " " escapeExecArg args;

  # A value systemd reads with specifier expansion (ConditionPathExists=, Environment=,
  # LoadCredential=, ReadOnlyPaths=...; see systemd.unit(5), "Specifiers"): '%' doubled, so a
  # '%' in a path or a URL reaches the program as itself. Unescaped, "%y" becomes the unit
  # file's path, and an unknown specifier makes systemd drop the whole setting.
  escapeSpecifiers = lib.replaceStrings [ "%" ] [ "%%" ];

  # The command-line options of each runtime, generated from the runtime itself by
  # scripts/gen-runtime-args.py (`make update-runtime-args`): its version and, per long option,
  # how it reads a value: "bool" (--X / --no-X), "flag" (--X, off unless given), "list"
  # (several values after one flag), "repeat" (--X a --X b), "value". vLLM's file also lists
  # the engine arguments (the fields of AsyncEngineArgs), which model-pull reads too.
  runtimeArgs = {
    vllm = lib.importJSON ../helper/model_pull/vllm_args.json;
    sglang = lib.importJSON ./args/sglang.json;
    llama-server = lib.importJSON ./args/llama-server.json;
    # Transcribed from TensorRT-LLM's own API-stability references, not generated: no
    # registry here ships an importable TensorRT-LLM (see the file's "transcribed").
    trtllm = lib.importJSON ./args/trtllm.json;
  };

  # The options of the runtime `package` will run: its own list when it carries one
  # (`passthru.runtimeArgs`, in the format above), else the list shipped here.
  argsOf = runtime: package: package.runtimeArgs or runtimeArgs.${runtime};

  # RFC 42 settings rendered as the runtime parses them back, by the kind of each option
  # (`args` is argsOf's result): { enable-prefix-caching = false; } -> [ "--no-enable-prefix-caching" ],
  # { served-model-name = [ "a" "b" ]; } -> [ "--served-model-name" "a" "b" ] (one flag: SGLang
  # keeps only the last of repeated list flags). `null` leaves an option out. llama.cpp reads
  # several values as one comma-separated argument: `lists = "comma"`. Keys the runtime does
  # not have are rendered plainly and reported by settingsChecks.
  settingsToArgs =
    {
      args,
      lists ? "values",
    }:
    settings:
    let
      value =
        v:
        if builtins.isFloat v || builtins.isAttrs v || builtins.isList v then
          builtins.toJSON v
        else
          toString v;
      render =
        k: v:
        let
          kind = args.options.${k} or "value";
        in
        if v == null then
          [ ]
        else if kind == "bool" && builtins.isBool v then
          [ (if v then "--${k}" else "--no-${k}") ]
        else if v == true then
          [ "--${k}" ]
        else if v == false then
          # a flag without a --no- form is off unless given
          [ ]
        else if kind == "list" then
          lib.optionals (v != [ ]) ([ "--${k}" ] ++ map value (lib.toList v))
        else if kind == "repeat" then
          lib.concatMap (x: [
            "--${k}"
            (value x)
          ]) (lib.toList v)
        else if builtins.isList v && lists == "comma" then
          [
            "--${k}"
            (lib.concatMapStringsSep "," value v)
          ]
        else
          [
            "--${k}"
            (value v)
          ];
    in
    lib.concatLists (lib.mapAttrsToList render settings);

  # Settings the runtime would not read as meant. An option the module sets itself
  # (`reserved`: option name -> the module option to use) is an assertion. The rest are
  # warnings, one line each naming the runtime version the list came from: an option that
  # version does not have, a boolean for an option that takes a value, or the reverse (a
  # newer runtime may have the option: then pass it in extraArgs, or give the package its
  # own list).
  settingsChecks =
    {
      option, # "services.inference.vllm.instances.qwen.settings"
      label, # "vLLM"
      args,
      reserved ? { },
    }:
    settings:
    let
      known = args.options;
      program = "${label} ${args.version}";
      problem =
        k: v:
        let
          kind = known.${k} or null;
          dashed = lib.replaceStrings [ "_" ] [ "-" ] k;
        in
        if kind == null then
          "${option}.${k}: ${program} has no option --${k}"
          + (
            if known ? ${dashed} then
              "; did you mean ${dashed}?"
            else
              " (as far as the option list model-pull ships knows); if yours has it, pass it in extraArgs."
          )
        else if builtins.isBool v && !(lib.elem kind [ "bool" "flag" ]) then
          "${option}.${k}: --${k} of ${program} takes a value, not true/false."
        else if v != null && !(builtins.isBool v) && lib.elem kind [ "bool" "flag" ] then
          "${option}.${k}: --${k} of ${program} is a switch: set it to true or false."
        else
          null;
    in
    {
      assertions = map (k: {
        assertion = !(settings ? ${k});
        message = "${option}.${k}: set ${reserved.${k}} instead; the module passes --${k} itself.";
      }) (lib.attrNames reserved);
      warnings = lib.filter (m: m != null) (
        lib.mapAttrsToList problem (removeAttrs settings (lib.attrNames reserved))
      );
    };

  # Keys of a model.json that Triton's vLLM backend hands to vLLM's `AsyncEngineArgs(**json)`,
  # which refuses any other key (`args`: argsOf "vllm" of the vLLM that will read them).
  engineArgsAssertions =
    { option, args }:
    engineArgs:
    map (k: {
      assertion = lib.elem k args.engineArgs && k != "model";
      message =
        if k == "model" then
          "${option}.model: the Triton unit sets `model` (the entry's weights) itself."
        else
          "${option}.${k}: not an engine argument of vLLM ${args.version} (its AsyncEngineArgs refuses unknown keys).";
    }) (lib.attrNames engineArgs);

  # Device nodes of the NVIDIA driver. Major 195 registers as "nvidia" on current drivers and
  # as "nvidia-frontend" on older ones (/proc/devices names them): allow both, or the GPU
  # vanishes. `char-NAME` matches by that name: systemd.resource-control(5), DeviceAllow=.
  gpuDeviceAllow = map (d: "${d} rw") [
    "char-nvidiactl"
    "char-nvidia-caps"
    "char-nvidia-frontend"
    "char-nvidia"
    "char-nvidia-uvm"
  ];

  # The hardening of every runtime unit. `jit = true` for the PyTorch runtimes, which
  # need writable+executable memory (MemoryDenyWriteExecute breaks them).
  hardening =
    {
      user,
      root,
      jit,
    }:
    {
      User = user;
      Group = user;
      DynamicUser = false;
      # Entries are read-only for the runtimes; only model-pull (root) writes the state root.
      ReadOnlyPaths = [ root ];
      ProtectSystem = "strict";
      ProtectHome = true;
      PrivateTmp = true;
      PrivateMounts = true;
      # PrivateDevices would hide /dev/nvidia*; a closed device policy does the job instead.
      PrivateDevices = false;
      DevicePolicy = "closed";
      DeviceAllow = gpuDeviceAllow;
      PrivateUsers = true;
      NoNewPrivileges = true;
      CapabilityBoundingSet = [ "" ];
      AmbientCapabilities = [ "" ];
      ProtectClock = true;
      ProtectControlGroups = true;
      ProtectHostname = true;
      ProtectKernelLogs = true;
      ProtectKernelModules = true;
      ProtectKernelTunables = true;
      ProtectProc = "invisible";
      # /proc/meminfo and /proc/cpuinfo are read to size buffers and threads.
      ProcSubset = "all";
      LockPersonality = true;
      RestrictNamespaces = true;
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      RemoveIPC = true;
      MemoryDenyWriteExecute = !jit;
      RestrictAddressFamilies = [
        "AF_INET"
        "AF_INET6"
        "AF_UNIX"
        # NVML and NCCL read interface lists over netlink.
        "AF_NETLINK"
      ];
      SystemCallArchitectures = "native";
      SystemCallFilter = [
        "@system-service @resources"
        "~@privileged"
      ];
      SystemCallErrorNumber = "EPERM";
      UMask = "0077";
      # systemctl stop leaves it stopped; a crash is retried a bounded number of times.
      Restart = "on-failure";
      RestartSec = "10s";
    };

  # Goes in unitConfig: at most 5 starts in 10 minutes, then the unit stays failed.
  startLimit = {
    StartLimitBurst = 5;
    StartLimitIntervalSec = 600;
  };

  # The CUDA capabilities a runtime package has code for (the manifest's `cudaCapabilities` of
  # its unit, which `model-pull check` compares with the GPU), read from the package itself:
  # - `cudaCapabilities`: nixpkgs' torch passes it through (empty for a CPU build); any package
  #   can say it the same way (`passthru.cudaCapabilities`);
  # - vLLM: TORCH_CUDA_ARCH_LIST in its cmakeFlags ("8.9;9.0a;9.0+PTX"), set only with CUDA;
  # - llama.cpp: CMAKE_CUDA_ARCHITECTURES in its cmakeFlags ("89;120"), set only with CUDA.
  # [ ]: no CUDA code that can be seen here: a CPU build, or a package that does not say
  # (no package at all, an environment, a binary build).
  cudaCapabilitiesOf =
    pkg:
    let
      # The value of -DNAME[:TYPE]=VALUE in the package's cmakeFlags (the last one wins, as in CMake).
      flag =
        name:
        let
          values = lib.concatMap (
            f:
            let
              m = builtins.match "-D${name}(:[A-Z]+)?=(.*)" (toString f);
            in
            lib.optional (m != null) (lib.elemAt m 1)
          ) (pkg.cmakeFlags or [ ]);
        in
        if values == [ ] then null else lib.last values;
      entries = s: lib.filter (e: e != "") (lib.splitString ";" s);
      # "8.9+PTX" -> "8.9"; "9.0a" stays (arch-specific code).
      torchArch = lib.removeSuffix "+PTX";
      # CMake's "120" / "90a" / "89-real" -> "12.0" / "9.0a" / "8.9"; "all", "native": unknown.
      cmakeArch =
        e:
        let
          m = builtins.match "([0-9]+)([0-9])([af]?)(-real|-virtual)?" e;
        in
        if m == null then null else "${lib.elemAt m 0}.${lib.elemAt m 1}${lib.elemAt m 2}";
      torchList = flag "TORCH_CUDA_ARCH_LIST";
      cmakeList = flag "CMAKE_CUDA_ARCHITECTURES";
    in
    if pkg == null then
      [ ]
    else if pkg ? cudaCapabilities then
      pkg.cudaCapabilities
    else if torchList != null then
      lib.unique (map torchArch (entries torchList))
    else if cmakeList != null then
      lib.filter (e: e != null) (map cmakeArch (entries cmakeList))
    else
      [ ];

  # Environment of the runtimes that load through huggingface_hub (vLLM, SGLang, Triton,
  # TensorRT-LLM): the cache is the entry, and nothing is ever downloaded at run time. Every
  # directory a runtime writes to is under the unit's CacheDirectory: with HOME unset, a
  # runtime would write to the passwd home, /homeless-shelter in the Nix sandbox, or fail.
  offlineHubEnv = hubCacheDir: cacheDir: {
    HF_HUB_CACHE = hubCacheDir;
    HF_HUB_OFFLINE = "1";
    TRANSFORMERS_OFFLINE = "1";
    HF_HUB_DISABLE_TELEMETRY = "1";
    DO_NOT_TRACK = "1";
    VLLM_NO_USAGE_STATS = "1";
    # Compiled kernels and torch.compile caches go to the unit's CacheDirectory.
    HOME = cacheDir;
    HF_HOME = "${cacheDir}/huggingface";
    XDG_CACHE_HOME = cacheDir;
    VLLM_CACHE_ROOT = "${cacheDir}/vllm";
    TRITON_CACHE_DIR = "${cacheDir}/triton-kernels";
    TORCHINDUCTOR_CACHE_DIR = "${cacheDir}/torchinductor";
    FLASHINFER_WORKSPACE_BASE = cacheDir;
  };

  gpuEnv =
    gpus:
    lib.optionalAttrs (gpus != null) {
      CUDA_VISIBLE_DEVICES = escapeSpecifiers (lib.concatStringsSep "," gpus);
    };

  # Assertions for an instance that reads a declared model through the HF cache.
  hfModelAssertions =
    {
      option,
      models,
      model,
      runtime,
      layouts,
    }:
    [
      {
        assertion = models ? ${model};
        message = "${option}: model \"${model}\" is not declared in services.inference.models.";
      }
      {
        assertion = !(models ? ${model}) || lib.elem models.${model}.layout layouts;
        message = "${option}: ${runtime} cannot read model \"${model}\" with layout \"${
          models.${model}.layout or ""
        }\"; set services.inference.models.${model}.layout to one of: ${lib.concatStringsSep ", " layouts}.";
      }
    ];

  # The `config` of a runtime whose instances each serve one HF-cache model (vLLM, SGLang):
  # layout assertions, one unit per instance, the runtime-unit records the manifest is built
  # from, and the firewall.
  hfInstancesConfig =
    {
      pkgs,
      kind, # "vllm" | "sglang": option path and manifest runtime
      label, # "vLLM" | "SGLang": for assertion messages
      layouts,
      instances,
      models,
      unitName,
      mkService,
      healthPath, # answers 200 once the server can serve (the on-demand readiness gate)
    }:
    let
      onDemandArgs = onePortOnDemand { inherit pkgs unitName mkService healthPath; };
    in
    {
      assertions = lib.concatLists (
        lib.mapAttrsToList (
          name: inst:
          hfModelAssertions {
            option = "services.inference.${kind}.instances.${name}.model";
            inherit models layouts;
            inherit (inst) model;
            runtime = label;
          }
        ) instances
      );

      systemd = lib.mkMerge (
        lib.mapAttrsToList (name: inst: onDemandUnits (onDemandArgs name inst)) (
          lib.filterAttrs (_: inst: models ? ${inst.model}) instances
        )
      );

      services.inference.runtimeUnits = lib.mapAttrs' (
        name: inst:
        lib.nameValuePair "${unitName name}.service" {
          runtime = kind;
          option = "services.inference.${kind}.instances.${name}.port";
          models = [ inst.model ];
          ports = [ inst.port ];
          cudaCapabilities = cudaCapabilitiesOf inst.package;
          onDemand = onDemandRecord (unitName name) inst.onDemand (onDemandArgs name inst).listeners;
        }
      ) instances;

      networking.firewall.allowedTCPPorts = lib.concatLists (
        lib.mapAttrsToList (_: inst: lib.optional inst.openFirewall inst.port) instances
      );
    };

  # host, port and openFirewall of a server instance, the same in every runtime module.
  # What `onDemandUnits` takes for an instance that serves one port (`host`, `port`) and is
  # ready once `healthPath` answers 200 there.
  onePortOnDemand =
    {
      pkgs,
      unitName,
      mkService,
      healthPath,
    }:
    name: inst: {
      inherit pkgs;
      inherit (inst) onDemand gpus;
      unit = unitName name;
      service = mkService name inst;
      listeners = [
        {
          name = "";
          inherit (inst) host port;
        }
      ];
      health = {
        inherit (inst) port;
        path = healthPath;
      };
    };

  listenOptions =
    { port, portDescription }:
    {
      host = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        description = "Address to listen on.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = port;
        description = portDescription;
      };
      openFirewall = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Open `port` in the firewall.";
      };
    };

  # The unit of a runtime that reads a model from its HF cache tree (vLLM, SGLang): gated on
  # refs/main, offline, hardened (a JIT runtime), its own cache directory; only the description
  # and the command line differ.
  hfService =
    {
      description,
      root,
      unit, # the unit's name without .service
      model, # the declared model's name
      m, # its resolved declaration
      gpus,
      command, # argv
      cc, # a C compiler for the kernels compiled at run time
    }:
    {
      inherit description;
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      # Triton (the kernel compiler) builds its launchers and torch's inductor its CPU kernels
      # with the C compiler on PATH; a unit's PATH has only coreutils, findutils, grep, sed and
      # systemd. nixpkgs' vllm carries torch's compiler for this reason; an environment made with
      # python3.withPackages does not.
      path = [ cc ];
      unitConfig = startLimit // {
        ConditionPathExists = [ (hubRefsMain root model m) ];
      };
      environment = offlineHubEnv (hubCache root model m) "/var/cache/inference/${unit}" // gpuEnv gpus;
      serviceConfig =
        hardening {
          user = "inference";
          inherit root;
          jit = true;
        }
        // {
          CacheDirectory = "inference/${unit}";
          ExecStart = execLine command;
          # Loading weights and compiling graphs takes minutes.
          TimeoutStartSec = "15min";
        };
    };

  # CUDA_VISIBLE_DEVICES of a runtime (see gpuEnv).
  gpusOption =
    label:
    lib.mkOption {
      type = lib.types.nullOr (lib.types.listOf lib.types.str);
      default = null;
      example = [
        "0"
        "1"
      ];
      description = "GPUs visible to ${label} (`CUDA_VISIBLE_DEVICES`); `null`: all.";
    };

  # The values `settingsToArgs` renders as command-line flags (RFC 42 settings).
  flagSettingsType = lib.types.attrsOf (
    lib.types.nullOr (
      lib.types.oneOf [
        lib.types.bool
        lib.types.int
        lib.types.float
        lib.types.str
        (lib.types.listOf (
          lib.types.oneOf [
            lib.types.str
            lib.types.int
            lib.types.float
          ]
        ))
        # a JSON argument, e.g. vLLM's --compilation-config
        (lib.types.attrsOf lib.types.anything)
      ]
    )
  );

  # ---- On-demand serving: systemd.socket(5), systemd-socket-proxyd(8), flock(1) ----

  # `onDemand` of a runtime instance.
  onDemandOption =
    label:
    lib.mkOption {
      type = lib.types.submodule {
        options = {
          enable = lib.mkOption {
            type = lib.types.bool;
            default = false;
            description = ''
              Start ${label} on the first connection to its port and stop it after
              `idleTimeout` seconds without one, which frees its memory (VRAM on a GPU).

              The port is then a socket unit (`<unit>.socket`), listening once the model is
              pulled: with no model, connections are refused, and `model-pull` starts the socket
              after the pull. The first request waits while the model loads (it is never
              refused); ${label} listens on the same port in a network namespace of its own that
              only its proxy (`systemd-socket-proxyd`) joins. A start that fails gives the waiting
              requests a reset, and the next request tries again: at most 5 starts within 5 times
              `idleTimeout` (10 minutes at most), which use alone never reaches.

              On-demand runtimes that share a GPU (a GPU in both `gpus`, compared as written;
              `null` means every GPU, `[ ]` none) never run at the same time: a request for one
              that is not running waits until the running one has had no connection for its own
              `idleTimeout`, then this one loads. This is a queue, not pre-emption: a busy model
              is never stopped for another. A client's timeout must cover the other model's
              remaining requests, its `idleTimeout`, and this model's load time; the unit's
              `TimeoutStartSec` (15 minutes) bounds that wait, after which the request gets a
              reset and the next one queues again.
            '';
          };
          idleTimeout = lib.mkOption {
            type = lib.types.ints.positive;
            default = 300;
            example = 900;
            description = ''
              Seconds without an open connection after which ${label} stops. An open connection
              counts as busy even when nothing is sent on it, so a client that keeps a connection
              alive keeps the model loaded.
            '';
          };
        };
      };
      default = { };
      description = "Serve on demand: start on the first request, stop when idle.";
    };

  # The per-GPU locks of the on-demand runtimes (created by tmpfiles, see common.nix).
  gpuLockDir = "/run/inference/gpu-locks";

  # flock(1) in front of a runtime's command, so that on-demand runtimes on one GPU queue: a
  # runtime for every GPU (gpus = null) takes `all` exclusively; one for some GPUs takes `all`
  # shared and each of its GPUs exclusively. Always `all` first and the GPUs in sorted order,
  # so that two runtimes never wait for each other. `--no-fork` execs the command with the lock
  # held: it is released when the runtime's last process exits.
  gpuLockArgs =
    flock: gpus:
    let
      lockFile = name: "${gpuLockDir}/${lib.strings.sanitizeDerivationName name}";
      lock = mode: name: [
        flock
        "--no-fork"
        mode
        (lockFile name)
      ];
    in
    if gpus == null then
      lock "--exclusive" "all"
    else
      lock "--shared" "all"
      ++ lib.concatMap (g: lock "--exclusive" "gpu-${g}") (lib.sort (a: b: a < b) (lib.unique gpus));

  # The script of the readiness gate and the proxy's start (bash builtins only).
  onDemandScript =
    pkgs:
    pkgs.writeShellApplication {
      name = "inference-on-demand";
      text = builtins.readFile ./on-demand.sh;
    };

  # The host the runtime binds: its own address, or loopback in its private network namespace.
  bindHost = inst: if inst.onDemand.enable then "127.0.0.1" else inst.host;

  # A runtime module serves its instances on demand with four of these: `onDemand =
  # onDemandOption "<label>"` among the instance's options, `bindHost inst` as the address its
  # runtime binds, `systemd = onDemandUnits { ... }` instead of `systemd.services.<unit>`, and
  # `onDemand = onDemandRecord <unit> inst.onDemand <listeners>` in its runtimeUnits record
  # (llama-server.nix, hfInstancesConfig and triton.nix do so).

  # The socket unit of a listener of `unit` (without .socket): "" is the main one.
  onDemandSocket = unit: l: if l.name == "" then unit else "${unit}-${l.name}";

  # The units of one runtime: { services; sockets; } for `systemd`. Always-on: the service as
  # given. On demand (systemd.socket(5), systemd-socket-proxyd(8); each choice below was
  # tested with systemd 252 and a real llama-server, tests/systemd/test_on_demand.py):
  # - `<socket>.socket` per listener on the public address, gated like the runtime
  #   (ConditionPathExists), activating `<socket>-proxy.service`;
  # - the proxy: systemd-socket-proxyd --exit-idle-time, in the runtime's network namespace
  #   (JoinsNamespaceOf=); Wants= + After= the runtime, never Requires= (a failed start would
  #   fail the proxy's job, the socket would trigger again and again and end in
  #   trigger-limit-hit, refusing every later client); PartOf= its socket; stopped with the
  #   runtime (StopPropagatedFrom=: when it is stopped, and when it dies while the proxy runs,
  #   but not while the proxy still waits to accept the clients of a failed start) and not
  #   restarted with it (a proxy started with no client never times out); no start limit of
  #   its own (the runtime's protects the machine, and a proxy that hit one would take the
  #   socket down);
  # - the runtime: StopWhenUnneeded= (it stops when its proxies exit), its GPU lock, its own
  #   network namespace on loopback, the readiness gate, Restart=no (the next request is the
  #   retry: an automatic restart would reload a model nobody asked for).
  onDemandUnits =
    {
      pkgs,
      unit, # the runtime's unit name, without .service
      service, # its systemd.services value as an always-on unit
      onDemand, # the instance's onDemand options
      listeners, # [ { name; host; port; } ]: one socket each ("" is the main one, `<unit>.socket`)
      health, # { port; path; }: answers 200 once the runtime can serve
      gpus, # CUDA_VISIBLE_DEVICES of the runtime (null: every GPU)
    }:
    if !onDemand.enable then
      {
        services.${unit} = service;
        sockets = { };
      }
    else
      let
        script = lib.getExe' (onDemandScript pkgs) "inference-on-demand";
        healthUrl = "http://127.0.0.1:${toString health.port}${health.path}";
        socketName = onDemandSocket unit;
        proxyName = l: "${socketName l}-proxy";
        # An IPv6 address goes in brackets: [::1]:8080.
        listenStream =
          l:
          if lib.hasInfix ":" l.host then
            "[${l.host}]:${toString l.port}"
          else
            "${l.host}:${toString l.port}";
        # The runtime's hardening, less what a proxy has no use for: sockets and a loopback port,
        # no devices, no state root, no restarts of its own.
        proxyHardening =
          removeAttrs
            (hardening {
              user = "inference";
              root = "/";
              jit = false;
            })
            [
              "ReadOnlyPaths"
              "DeviceAllow"
              "RestartSec"
            ]
          // {
            PrivateDevices = true;
            PrivateNetwork = true;
            ProcSubset = "pid";
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
            ];
            Restart = "no";
          };
        proxy = l: {
          description = "Proxy to ${unit} on port ${toString l.port} (on demand)";
          wants = [ "${unit}.service" ];
          after = [ "${unit}.service" ];
          partOf = [ "${socketName l}.socket" ];
          unitConfig = {
            JoinsNamespaceOf = "${unit}.service";
            StopPropagatedFrom = "${unit}.service";
            StartLimitIntervalSec = 0;
          };
          serviceConfig = proxyHardening // {
            # Its socket by name: nixos-rebuild switch then treats it as socket-activated (stops
            # it and restarts the socket when it changes; a restarted proxy has no client and
            # would never time out).
            Sockets = "${socketName l}.socket";
            ExecStart = execLine [
              script
              "proxy"
              healthUrl
              "${toString onDemand.idleTimeout}s"
              "${pkgs.systemd}/lib/systemd/systemd-socket-proxyd"
              "127.0.0.1:${toString l.port}"
            ];
          };
        };
        runtime = service // {
          wantedBy = [ ];
          unitConfig = service.unitConfig // {
            StopWhenUnneeded = true;
            # Every start counts, and one in use stops only after idleTimeout: 5 starts within
            # 5 x idleTimeout is more than use can make, so the limit stops only a crash loop.
            StartLimitBurst = 5;
            StartLimitIntervalSec = lib.min 600 (5 * onDemand.idleTimeout);
          };
          serviceConfig = service.serviceConfig // {
            # Started once exec'd: the gate below then runs beside the runtime as its user
            # (with the default Type=simple it could run before, and see no runtime).
            Type = "exec";
            ExecStart =
              execLine (gpuLockArgs (lib.getExe' pkgs.util-linux "flock") gpus)
              + " "
              + service.serviceConfig.ExecStart;
            ExecStartPost = execLine [
              script
              "ready"
              healthUrl
            ];
            PrivateNetwork = true;
            ReadWritePaths = [ gpuLockDir ];
            Restart = "no";
            # The wait for the GPU lock and the load; see onDemandOption.
            TimeoutStartSec = "15min";
            SyslogIdentifier = unit;
          };
        };
      in
      {
        services = {
          ${unit} = runtime;
        }
        // lib.listToAttrs (map (l: lib.nameValuePair (proxyName l) (proxy l)) listeners);
        sockets = lib.listToAttrs (
          map (
            l:
            lib.nameValuePair (socketName l) {
              description = "${service.description}, port ${toString l.port} (on demand)";
              wantedBy = [ "sockets.target" ];
              listenStreams = [ (listenStream l) ];
              # No model, no listening: connections are refused until model-pull starts it.
              unitConfig.ConditionPathExists = service.unitConfig.ConditionPathExists;
              socketConfig.Service = "${proxyName l}.service";
            }
          ) listeners
        );
      };

  # The manifest's record of a unit's on-demand serving (docs/ARCHITECTURE.md); null: always-on.
  onDemandRecord =
    unit: onDemand: listeners:
    if onDemand.enable then
      {
        inherit (onDemand) idleTimeout;
        sockets = map (l: "${onDemandSocket unit l}.socket") listeners;
      }
    else
      null;
}
