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
    in
    {
      units = lib.mapAttrs' (
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
            ;
        }
      ) (lib.filterAttrs (_: s: s.enable) config.systemd.services);
      manifest =
        if config.environment.etc ? "inference/models.json" then
          builtins.fromJSON config.environment.etc."inference/models.json".text
        else
          null;
      assertions = map (a: a.message) failed;
      inherit (config) warnings;
      users = lib.mapAttrs (_: u: { inherit (u) isSystemUser group; }) config.users.users;
      tmpfiles = config.systemd.tmpfiles.rules;
      firewall = config.networking.firewall.allowedTCPPorts;
    };

  evalConfig =
    module:
    summarise
      (lib.evalModules {
        modules = [
          stubs.module
          ../../nixos
          { _module.args.pkgs = stubs.pkgs; }
          module
        ];
      }).config;

  hostFiles = lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n) (builtins.readDir ../../hosts);
  hosts = lib.mapAttrs' (
    file: _: lib.nameValuePair (lib.removeSuffix ".nix" file) (evalConfig (../../hosts + "/${file}"))
  ) hostFiles;

  # The store paths the units refer to, for render_units.render(substitutions=...).
  packages = lib.mapAttrs (_: p: p.outPath) {
    inherit (stubs.pkgs)
      llama-cpp
      vllm
      model-pull
      triton-inference-server
      # on the units' PATH
      coreutils
      findutils
      gnugrep
      gnused
      systemd
      jq
      ;
    cc = stubs.pkgs.stdenv.cc;
    sglang-env = stubs.pkgs.python3.withPackages (ps: [ ps.sglang ]);
  };
in
{
  inherit evalConfig hosts packages;
  golden = { inherit hosts packages; };
}
