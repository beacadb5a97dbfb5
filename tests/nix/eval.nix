# Evaluates the services.inference modules with nixpkgs' lib and the stubs in stubs.nix, and
# summarises what NixOS would get: units, the manifest, failed assertions, warnings.
#
#   nix-instantiate --eval --strict --json tests/nix/eval.nix --arg nixpkgsLib /path/to/nixpkgs.lib -A golden
#   (import tests/nix/eval.nix { nixpkgsLib = ...; }).evalConfig { services.inference = ...; }
{ nixpkgsLib }:
let
  lib = import "${toString nixpkgsLib}/lib";
  stubs = import ./stubs.nix { inherit lib; };

  summarise =
    config:
    let
      failed = lib.filter (a: !a.assertion) config.assertions;
      manifest = config.environment.etc."inference/models.json" or null;
    in
    {
      units =
        lib.mapAttrs' (
          name: s:
          lib.nameValuePair "${name}.service" {
            inherit (s)
              description
              unitConfig
              serviceConfig
              environment
              wantedBy
              after
              wants
              requires
              conflicts
              partOf
              ;
          }
        ) (lib.filterAttrs (_: s: s.enable) config.systemd.services)
        // lib.mapAttrs' (
          name: s:
          lib.nameValuePair "${name}.socket" {
            inherit (s)
              description
              unitConfig
              socketConfig
              listenStreams
              wantedBy
              partOf
              ;
          }
        ) (lib.filterAttrs (_: s: s.enable) config.systemd.sockets);
      manifest = if manifest == null then null else builtins.fromJSON manifest.source.text;
      assertions = map (a: a.message) failed;
      inherit (config) warnings;
      users = lib.mapAttrs (_: u: { inherit (u) isSystemUser group; }) config.users.users;
      tmpfiles = config.systemd.tmpfiles.rules;
      firewall = config.networking.firewall.allowedTCPPorts;
      nixSettings = config.nix.settings;
      harmonia = lib.optionalAttrs config.services.harmonia.enable { inherit (config.services.harmonia) settings; };
      # What the YAML given to `vllm serve --config` holds (pkgs.formats.yaml of this).
      vllmSettings = lib.mapAttrs (_: i: i.settings) config.services.inference.vllm.instances;
    };

  evalWithStubs =
    stubModule: modules: (lib.evalModules { modules = [ stubModule ] ++ modules; }).config;
  evalWith = evalWithStubs stubs.module;

  # What NixOS checks before it builds anything (system.build.toplevel): failed assertions
  # and warnings, without forcing the units.
  checksOf = config: {
    assertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
    inherit (config) warnings;
  };

  evalConfig = module: summarise (evalWith [ ../../nixos module ]);
  evalChecks = module: checksOf (evalWith [ ../../nixos module ]);

  hostFiles = lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n) (
    builtins.readDir ../../hosts
  );
  hosts = lib.mapAttrs' (
    file: _:
    lib.nameValuePair (lib.removeSuffix ".nix" file) (
      summarise (evalWith [
        ../../nixos
        ./standins.nix
        (../../hosts + "/${file}")
      ])
    )
  ) hostFiles
  # A test host (not an example machine; see the file).
  // {
    vllm-on-demand = summarise (evalWith [
      ../../nixos
      ./vllm-on-demand.nix
    ]);
  };

  # The flake's nixosModules, with nixpkgs' lib only (its other outputs need nixpkgs).
  flake = (import ../../flake.nix).outputs {
    self = flake;
    nixpkgs = { inherit lib; };
  };
  evalFlakeModules = names: module: summarise (evalWith (map (n: flake.nixosModules.${n}) names ++ [ module ]));

  # A NixOS VM test of tests/vm: its testScript (Python) and its node evaluated with the stubs.
  vmTest =
    file:
    let
      test = import (../vm + "/${file}") { self = flake; };
      args = {
        inherit lib;
        pkgs = stubs.pkgsFor { };
      };
      module = if lib.isFunction test then test args else test;
    in
    {
      inherit (module) name testScript;
      # runNixOSTest gives the nodes their pkgs and makes nixpkgs.* read-only.
      nodes = lib.mapAttrs (
        _: node: summarise (evalWithStubs (stubs.mkModule { readOnlyNixpkgs = true; }) [ node ])
      ) module.nodes;
    };

  # The store paths the units refer to, for render_units.render(substitutions=...).
  standIns = evalWith [
    ../../nixos
    ./standins.nix
  ];
  packages = lib.mapAttrs (_: p: p.outPath) {
    inherit (stubs.pkgsFor { })
      llama-cpp
      vllm
      # on the units' PATH
      coreutils
      findutils
      gnugrep
      gnused
      systemd
      util-linux
      jq
      nix
      ;
    cc = (stubs.pkgsFor { }).stdenv.cc;
    model-pull = standIns.services.inference.package;
    triton-inference-server = standIns.services.inference.triton.package;
    sglang-env = standIns.services.inference.sglang.package;
  };

  # What the golden file is computed from: every file under nixos/ and hosts/, and the .nix
  # files here. tests/test_golden_inputs.py computes the same hash without Nix.
  inputsHash =
    let
      root = toString ../..;
      visible = p: !(lib.any (lib.hasPrefix ".") (lib.splitString "/" p));
      files =
        lib.filter visible (
          map (p: lib.removePrefix "${root}/" (toString p)) (
            lib.filesystem.listFilesRecursive ../../nixos ++ lib.filesystem.listFilesRecursive ../../hosts
          )
        )
        ++ map (n: "tests/nix/${n}") (
          lib.attrNames (lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n) (builtins.readDir ./.))
        );
    in
    builtins.hashString "sha256" (
      lib.concatMapStrings (p: "${p}\n${builtins.hashString "sha256" (builtins.readFile (../.. + "/${p}"))}\n") (
        lib.sort (a: b: a < b) files
      )
    );
in
{
  inherit
    evalConfig
    evalChecks
    evalFlakeModules
    vmTest
    hosts
    packages
    inputsHash
    ;
  golden = {
    inherit hosts packages;
    inputs.sha256 = inputsHash;
  };
}
