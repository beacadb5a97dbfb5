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

  # Environment of the runtimes that load through huggingface_hub (vLLM, SGLang, Triton's
  # vLLM backend): the cache is the entry, and nothing is ever downloaded at run time.
  offlineHubEnv = hubCacheDir: cacheDir: {
    HF_HUB_CACHE = hubCacheDir;
    HF_HUB_OFFLINE = "1";
    TRANSFORMERS_OFFLINE = "1";
    HF_HUB_DISABLE_TELEMETRY = "1";
    DO_NOT_TRACK = "1";
    VLLM_NO_USAGE_STATS = "1";
    # Compiled kernels and torch.compile caches go to the unit's CacheDirectory.
    HOME = cacheDir;
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
      kind, # "vllm" | "sglang": option path and manifest runtime
      label, # "vLLM" | "SGLang": for assertion messages
      layouts,
      instances,
      models,
      unitName,
      mkService,
    }:
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

      systemd.services = lib.mapAttrs' (name: inst: lib.nameValuePair (unitName name) (mkService name inst)) (
        lib.filterAttrs (_: inst: models ? ${inst.model}) instances
      );

      services.inference.runtimeUnits = lib.mapAttrs' (
        name: inst:
        lib.nameValuePair "${unitName name}.service" {
          runtime = kind;
          option = "services.inference.${kind}.instances.${name}.port";
          models = [ inst.model ];
          ports = [ inst.port ];
          cudaCapabilities = cudaCapabilitiesOf inst.package;
        }
      ) instances;

      networking.firewall.allowedTCPPorts = lib.concatLists (
        lib.mapAttrsToList (_: inst: lib.optional inst.openFirewall inst.port) instances
      );
    };

  # host, port and openFirewall of a server instance, the same in every runtime module.
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
}
