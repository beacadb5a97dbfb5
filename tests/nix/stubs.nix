# Minimal declarations of the NixOS options the services.inference modules set, and stub
# packages, so the modules evaluate with nixpkgs' lib alone (no nixpkgs on the CI machines).
#
# These are NOT NixOS: only the option names and merge behaviour the modules rely on. A module
# that sets an option missing here fails to evaluate, which is the point: add it here only if
# NixOS really has it (the file it comes from is named next to it). Packages are fake
# derivations (attrsets with a /nix/store outPath) that cannot be built; they exist so
# "${pkgs.llama-cpp}/bin/llama-server" renders. Only packages nixpkgs has are here (no SGLang,
# no Triton Inference Server, no model-pull), with the attributes the modules read, as nixpkgs
# sets them for the configuration's nixpkgs.config (cudaSupport, cudaCapabilities).
{ lib }:
let
  inherit (lib) types mkOption;

  # Nix's base-32 alphabet has no e, o, t, u: map hex digits onto letters it has.
  storeHash =
    s:
    lib.replaceStrings [ "e" ] [ "g" ] (builtins.substring 0 32 (builtins.hashString "sha256" s));

  fakeDrv = name: seed: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/${storeHash seed}-${name}";
    meta = { };
    # Loud when something tries to treat it as a real build input.
    drvPath = throw "stub package ${name} cannot be built (tests/nix/stubs.nix)";
  };

  pkg = name: fakeDrv name "stub-package:${name}";
  # writeText's derivation keeps `text` as an attribute (pkgs/build-support/trivial-builders).
  file = name: text: (fakeDrv name "stub-file:${name}:${text}") // { inherit text; };

  # The packages of a nixpkgs instance with this `config`.
  pkgsFor =
    config:
    let
      cudaSupport = config.cudaSupport or false;
      # pkgs/development/cuda-modules: flags.cudaCapabilities is config.cudaCapabilities, else a
      # default list per CUDA release (not modelled: set it); cmakeCudaArchitecturesString
      # drops the dots ("8.9" -> "89"), joined with ";".
      flags = {
        cudaCapabilities =
          config.cudaCapabilities
            or (throw "tests/nix/stubs.nix: nixpkgs' default cudaCapabilities are not modelled; set nixpkgs.config.cudaCapabilities");
        cmakeCudaArchitecturesString = lib.concatMapStringsSep ";" (
          lib.replaceStrings [ "." ] [ "" ]
        ) flags.cudaCapabilities;
      };
      withPtx = real: real ++ map (c: "${c}+PTX") real;
      # pkgs/development/python-modules/torch/source/default.nix (2.9.1): what torch can build.
      torchSupports = withPtx [
        "3.5"
        "3.7"
        "5.0"
        "5.2"
        "5.3"
        "6.0"
        "6.1"
        "6.2"
        "7.0"
        "7.2"
        "7.5"
        "8.0"
        "8.6"
        "8.7"
        "8.9"
        "9.0"
        "9.0a"
        "10.0"
        "10.0a"
        "10.1"
        "10.1a"
        "10.3"
        "10.3a"
        "12.0"
        "12.0a"
        "12.1"
        "12.1a"
      ];
      # pkgs/development/python-modules/vllm/default.nix (0.11.0): Blackwell commented out.
      vllmSupports = withPtx [
        "3.5"
        "3.7"
        "5.0"
        "5.2"
        "5.3"
        "6.0"
        "6.1"
        "6.2"
        "7.0"
        "7.2"
        "7.5"
        "8.0"
        "8.6"
        "8.7"
        "8.9"
        "9.0"
        "9.0a"
      ];
      self = {
        cudaPackages = { inherit flags; };
        # pkgs/by-name/ll/llama-cpp/package.nix: GGML_CUDA, and CMAKE_CUDA_ARCHITECTURES from
        # the flags when cudaSupport.
        llama-cpp = pkg "llama-cpp" // {
          cmakeFlags = [
            (lib.cmakeBool "GGML_NATIVE" false)
            (lib.cmakeBool "GGML_CUDA" cudaSupport)
          ]
          ++ lib.optional cudaSupport (
            lib.cmakeFeature "CMAKE_CUDA_ARCHITECTURES" flags.cmakeCudaArchitecturesString
          );
        };
        # pkgs/development/python-modules/vllm/default.nix: TORCH_CUDA_ARCH_LIST is the
        # configured capabilities vLLM supports, only with CUDA (pkgs.vllm is its application).
        vllm = pkg "vllm" // {
          cmakeFlags = lib.optional cudaSupport (
            lib.cmakeFeature "TORCH_CUDA_ARCH_LIST" (
              lib.concatStringsSep ";" (lib.intersectLists flags.cudaCapabilities vllmSupports)
            )
          );
        };
        coreutils = pkg "coreutils";
        findutils = pkg "findutils";
        gnugrep = pkg "gnugrep";
        gnused = pkg "gnused";
        systemd = pkg "systemd";
        stdenv.cc = pkg "gcc-wrapper";
        jq = pkg "jq";
        # bin/flock
        util-linux = pkg "util-linux";
        nix = pkg "nix";
        python3Packages = {
          # The Python package set's callPackage, without calling: a fake derivation named
          # after the package's file (nix/model-pull.nix -> model-pull).
          callPackage =
            file: _args:
            fakeDrv (lib.removeSuffix ".nix" (baseNameOf file)) "stub-callPackage:${baseNameOf file}";
          # pkgs/development/interpreters/python/python-packages-base.nix: the same package
          # as an application (not propagated into Python environments).
          toPythonApplication = drv: drv;
          # passthru: cudaSupport, cudaCapabilities ([ ] without CUDA).
          torch = pkg "python3.13-torch" // {
            inherit cudaSupport;
            cudaCapabilities =
              if cudaSupport then lib.intersectLists flags.cudaCapabilities torchSupports else [ ];
          };
        };
        writeText = name: text: file name text;
        writeShellScript = name: text: file name text;
        writeShellScriptBin = name: text: file name text;
        writeShellApplication =
          {
            name,
            text,
            runtimeInputs ? [ ],
            ...
          }:
          file name (text + lib.concatMapStrings (p: p.outPath) runtimeInputs);
        formats.yaml = _: {
          type = jsonValue;
          generate = name: value: file name (builtins.toJSON value);
        };
      };
    in
    self;

  jsonValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf jsonValue)
        (types.listOf jsonValue)
      ]
    )
    // {
      description = "JSON value";
    };

  # systemd option values: lists concatenate, scalars must agree (as in nixos/lib/systemd-types).
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (d: lib.isList d.value) defs' then
        lib.concatMap (d: lib.toList d.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  listOfUnits = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  # nixos/lib/systemd-unit-options.nix, and what nixos/lib/systemd-lib.nix (unitConfig) derives.
  serviceModule =
    pkgs:
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        description = mkOption {
          type = types.str;
          default = "";
        };
        wantedBy = listOfUnits;
        requiredBy = listOfUnits;
        after = listOfUnits;
        before = listOfUnits;
        wants = listOfUnits;
        requires = listOfUnits;
        bindsTo = listOfUnits;
        partOf = listOfUnits;
        conflicts = listOfUnits;
        unitConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        serviceConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        environment = mkOption {
          type = types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.str
                types.path
                types.package
              ]
            )
          );
          default = { };
        };
        path = mkOption {
          type = types.listOf (types.either types.package types.str);
          default = [ ];
        };
        restartTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
      };
      # systemd-lib.nix (serviceConfig, stage2ServiceConfig): the default PATH of every service,
      # and PATH from `path`.
      config.path = lib.mkAfter [
        pkgs.coreutils
        pkgs.findutils
        pkgs.gnugrep
        pkgs.gnused
        pkgs.systemd
      ];
      config.environment.PATH = "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
      # systemd-lib.nix: the triggers, flattened and joined, in a file whose store path is the
      # value of X-Restart-Triggers (switch-to-configuration restarts the unit when it changes).
      config.unitConfig = lib.optionalAttrs (config.restartTriggers != [ ]) {
        X-Restart-Triggers = "${pkgs.writeText "X-Restart-Triggers-${name}" (
          lib.pipe config.restartTriggers [
            lib.flatten
            (map (x: if lib.isPath x then "${x}" else x))
            toString
          ]
        )}";
      };
    };

  # nixos/lib/systemd-unit-options.nix (socketOptions), as nixos/lib/systemd-lib.nix writes them.
  socketModule = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = listOfUnits;
      requiredBy = listOfUnits;
      after = listOfUnits;
      before = listOfUnits;
      wants = listOfUnits;
      requires = listOfUnits;
      partOf = listOfUnits;
      conflicts = listOfUnits;
      listenStreams = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      listenDatagrams = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      socketConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
    };
  };

  # readOnlyNixpkgs: as in a NixOS test's node (nixos/lib/testing/nodes.nix imports
  # nixos/modules/misc/nixpkgs/read-only.nix): pkgs is given, and a module that sets
  # nixpkgs.config or nixpkgs.overlays fails ("... is set to read-only").
  mkModule =
    {
      readOnlyNixpkgs ? false,
    }:
    { config, ... }:
    let
      pkgs = pkgsFor (if readOnlyNixpkgs then { } else config.nixpkgs.config);
      readOnly = name: types.unique { message = "nixpkgs.${name} is set to read-only"; } types.anything;
    in
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        # nixos/modules/misc/nixpkgs.nix (config merges attribute sets; overlays concatenate).
        nixpkgs.config = mkOption {
          type = if readOnlyNixpkgs then readOnly "config" else types.attrsOf types.anything;
          default = { };
        };
        nixpkgs.overlays = mkOption {
          type = if readOnlyNixpkgs then readOnly "overlays" else types.listOf types.anything;
          default = [ ];
        };
        networking.hostName = mkOption {
          type = types.str;
          default = "nixos";
        };
        networking.firewall.allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        environment.etc = mkOption {
          type = types.attrsOf (
            types.submodule {
              options = {
                text = mkOption {
                  type = types.nullOr types.lines;
                  default = null;
                };
                source = mkOption {
                  type = types.nullOr types.path;
                  default = null;
                };
                mode = mkOption {
                  type = types.str;
                  default = "symlink";
                };
              };
            }
          );
          default = { };
        };
        users.users = mkOption {
          type = types.attrsOf (
            types.submodule {
              options = {
                isSystemUser = mkOption {
                  type = types.bool;
                  default = false;
                };
                group = mkOption {
                  type = types.str;
                  default = "";
                };
                description = mkOption {
                  type = types.str;
                  default = "";
                };
              };
            }
          );
          default = { };
        };
        users.groups = mkOption {
          type = types.attrsOf (types.submodule { });
          default = { };
        };
        systemd.tmpfiles.rules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        systemd.services = mkOption {
          type = types.attrsOf (types.submodule (serviceModule pkgs));
          default = { };
        };
        systemd.sockets = mkOption {
          type = types.attrsOf (types.submodule socketModule);
          default = { };
        };
        system.stateVersion = mkOption {
          type = types.str;
          default = "25.11";
        };
        # nixos/modules/config/nix.nix: nix.conf as settings (freeform; lists concatenate).
        nix.package = mkOption {
          type = types.package;
          default = pkgs.nix;
        };
        nix.settings = mkOption {
          type = types.attrsOf (
            types.either (types.listOf types.str) (
              types.oneOf [
                types.bool
                types.int
                types.str
              ]
            )
          );
          default = { };
        };
        # nixos/modules/services/networking/harmonia.nix (enable, settings: harmonia's TOML).
        services.harmonia.enable = mkOption {
          type = types.bool;
          default = false;
        };
        services.harmonia.settings = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        # nixos/modules/virtualisation/qemu-vm.nix (the VM test's node sets it).
        virtualisation.memorySize = mkOption {
          type = types.ints.positive;
          default = 1024;
        };
      };
      config = {
        # nixos/modules/misc/nixpkgs.nix: pkgs is nixpkgs instantiated with nixpkgs.config.
        # read-only.nix forces both options first ("find mistaken definitions").
        _module.args.pkgs =
          if readOnlyNixpkgs then
            builtins.seq config.nixpkgs.config (builtins.seq config.nixpkgs.overlays pkgs)
          else
            pkgs;
      }
      // lib.optionalAttrs readOnlyNixpkgs {
        # read-only.nix defines both from the given pkgs.
        nixpkgs.config = { };
        nixpkgs.overlays = [ ];
      };
    };
in
{
  inherit pkgsFor mkModule;
  module = mkModule { };
}
