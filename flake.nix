{
  description = "model-pull: NixOS modules and a helper that serve pinned Hugging Face models with llama-server, vLLM, Triton and SGLang";

  # nixpkgs only. flake.lock pins it; `nix flake lock --update-input nixpkgs` refreshes it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = lib.genAttrs systems;
      pkgsFor = system: nixpkgs.legacyPackages.${system}.extend self.overlays.default;

      # The modules, with the helper of this flake as services.inference.package.
      withPackage =
        modules:
        { lib, pkgs, ... }:
        {
          imports = modules;
          services.inference.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.model-pull;
        };

      # What a host file does not say: boot loader, file systems, the NVIDIA driver.
      hardware =
        {
          nixpkgs.hostPlatform = "x86_64-linux";
          boot.loader.systemd-boot.enable = true;
          fileSystems."/" = {
            device = "/dev/disk/by-label/nixos";
            fsType = "ext4";
          };
          services.xserver.videoDrivers = [ "nvidia" ];
          hardware.nvidia.open = true;
          hardware.graphics.enable = true;
          system.stateVersion = "25.11";
        };

      hostNames = map (lib.removeSuffix ".nix") (
        lib.attrNames (lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n) (builtins.readDir ./hosts))
      );
      mkHost =
        name:
        lib.nixosSystem {
          modules = [
            self.nixosModules.default
            hardware
            (./hosts + "/${name}.nix")
          ];
        };

      vmTests =
        pkgs:
        lib.mapAttrs' (
          file: _:
          lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (
            pkgs.testers.runNixOSTest (import (./tests/vm + "/${file}") { inherit self; })
          )
        ) (lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n) (builtins.readDir ./tests/vm));
    in
    {
      nixosModules = {
        default = withPackage [ ./nixos ];
        llama-server = withPackage [
          ./nixos/common.nix
          ./nixos/llama-server.nix
        ];
        vllm = withPackage [
          ./nixos/common.nix
          ./nixos/vllm.nix
        ];
        sglang = withPackage [
          ./nixos/common.nix
          ./nixos/sglang.nix
        ];
        triton = withPackage [
          ./nixos/common.nix
          ./nixos/triton.nix
        ];
      };

      overlays.default = final: prev: {
        pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
          (pyfinal: _: { model-pull = pyfinal.callPackage ./nix/model-pull.nix { }; })
        ];
        model-pull = final.python3Packages.toPythonApplication final.python3Packages.model-pull;
      };

      packages = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          inherit (pkgs) model-pull;
          default = pkgs.model-pull;
        }
      );

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            inputsFrom = [ pkgs.python3Packages.model-pull ];
            packages = [
              (pkgs.python3.withPackages (
                ps:
                ps.model-pull.dependencies
                ++ [
                  ps.pytest
                  ps.pytest-timeout
                  ps.numpy
                  ps.safetensors
                  ps.mypy
                ]
              ))
              pkgs.ruff
              pkgs.nixfmt
              pkgs.jq
              pkgs.nix
            ];
          };
        }
      );

      formatter = forAllSystems (system: nixpkgs.legacyPackages.${system}.nixfmt);

      # h100-server needs a Triton package that nixpkgs lacks: it evaluates once an overlay
      # provides pkgs.triton-inference-server, so it is not among the checks.
      nixosConfigurations = lib.genAttrs hostNames mkHost;

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          golden = (import ./tests/nix/eval.nix { nixpkgsLib = nixpkgs; }).golden;
        in
        {
          model-pull = pkgs.model-pull;
          # tests/nix/golden.json equals an evaluation with this flake's nixpkgs lib.
          golden =
            if golden == lib.importJSON ./tests/nix/golden.json then
              pkgs.runCommand "golden-up-to-date" { } "touch $out"
            else
              throw "tests/nix/golden.json is stale: run `make update-golden NIXPKGS_LIB=...`";
        }
        // lib.optionalAttrs (system == "x86_64-linux") (
          # Evaluating each host's toplevel (its assertions included) without building CUDA.
          lib.mapAttrs' (
            name: host:
            lib.nameValuePair "host-${name}" (
              pkgs.writeText "host-${name}" (builtins.unsafeDiscardStringContext host.config.system.build.toplevel.drvPath)
            )
          ) (lib.removeAttrs self.nixosConfigurations [ "h100-server" ])
          // vmTests pkgs
        )
      );
    };
}
