# Minimal declarations of the NixOS options the services.inference modules set, and stub
# packages, so the modules evaluate with nixpkgs' lib alone (no nixpkgs on the CI machines).
#
# These are NOT NixOS: only the option names and merge behaviour the modules rely on. A module
# that sets an option missing here fails to evaluate, which is the point: add it here only if
# NixOS really has it. Packages are fake derivations (attrsets with a /nix/store outPath) that
# cannot be built; they exist so "${pkgs.llama-cpp}/bin/llama-server" renders.
{ lib }:
let
  inherit (lib) types mkOption;

  # Nix's base-32 alphabet has no e, o, t, u: map hex digits onto letters it has.
  storeHash =
    s:
    lib.replaceStrings [ "e" ] [ "g" ] (builtins.substring 0 32 (builtins.hashString "sha256" s));

  fakeDrv =
    name: seed:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${storeHash seed}-${name}";
      meta = { };
      # Loud when something tries to treat it as a real build input.
      drvPath = throw "stub package ${name} cannot be built (tests/nix/stubs.nix)";
    };

  pkg = name: fakeDrv name "stub-package:${name}";
  file = name: text: (fakeDrv name "stub-file:${name}:${text}") // { inherit text; };

  jsonValue = types.nullOr (
    types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      types.path
      (types.attrsOf jsonValue)
      (types.listOf jsonValue)
    ]
  ) // { description = "JSON value"; };

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

  # The default PATH of every NixOS service, and how NixOS turns `path` into PATH
  # (nixos/lib/systemd-lib.nix: serviceConfig, stage2ServiceConfig).
  defaultServicePath = map pkg [
    "coreutils"
    "findutils"
    "gnugrep"
    "gnused"
    "systemd"
  ];

  serviceModule =
    { config, ... }:
    {
      config.path = lib.mkAfter defaultServicePath;
      config.environment.PATH = "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
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
          type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
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
    };
in
{
  pkgs =
    let
      self = {
        llama-cpp = pkg "llama-cpp";
        vllm = pkg "vllm";
        model-pull = pkg "model-pull";
        triton-inference-server = pkg "triton-inference-server";
        coreutils = pkg "coreutils";
        findutils = pkg "findutils";
        gnugrep = pkg "gnugrep";
        gnused = pkg "gnused";
        systemd = pkg "systemd";
        stdenv.cc = pkg "gcc-wrapper";
        jq = pkg "jq";
        python3 = pkg "python3" // {
          withPackages = f: pkg "python3-env-${lib.concatMapStringsSep "-" (p: p.name) (f self.python3Packages)}";
        };
        python3Packages = {
          sglang = pkg "sglang";
        };
        writeText = name: text: file name text;
        writeShellScript = name: text: file name text;
        writeShellApplication = { name, text, runtimeInputs ? [ ], ... }:
          file name (text + lib.concatMapStrings (p: p.outPath) runtimeInputs);
        formats.yaml = _: {
          type = jsonValue;
          generate = name: value: file name (builtins.toJSON value);
        };
      };
    in
    self;

  module = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      nixpkgs.config = mkOption {
        type = types.attrsOf types.anything;
        default = { };
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
        type = types.attrsOf (types.submodule serviceModule);
        default = { };
      };
      system.stateVersion = mkOption {
        type = types.str;
        default = "25.11";
      };
    };
  };
}
