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

      # Every export is a keyed module that imports the modules by path. The module system
      # takes a module once per key (a path is its own key), so a configuration may import
      # any of the exports together: the shared part (nixos/common.nix, which declares
      # services.inference.package and the manifest) is evaluated once. The helper's package
      # is common.nix's own default, built with the configuration's nixpkgs: no export defines
      # it, so no two definitions can conflict.
      export = name: modules: {
        key = "model-pull#nixosModules.${name}";
        _file = "${toString ./flake.nix}#nixosModules.${name}";
        imports = [ ./nixos/common.nix ] ++ modules;
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

      # Each tests/vm/*.nix as a check, run with nixpkgs as it is (no overlay): runNixOSTest
      # makes the nodes' nixpkgs read-only, so a node gets its packages through options.
      vmTests =
        pkgs:
        lib.mapAttrs' (
          file: _:
          lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (
            pkgs.testers.runNixOSTest (import (./tests/vm + "/${file}") { inherit self; })
          )
        ) (lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n) (builtins.readDir ./tests/vm));

      # A check that passes when evaluating `drv` succeeded (its drvPath), without building it.
      evaluates =
        pkgs: name: drv:
        pkgs.writeText name (builtins.unsafeDiscardStringContext drv.drvPath);
    in
    {
      nixosModules = {
        default = export "default" [ ./nixos ];
        llama-server = export "llama-server" [ ./nixos/llama-server.nix ];
        vllm = export "vllm" [ ./nixos/vllm.nix ];
        sglang = export "sglang" [ ./nixos/sglang.nix ];
        triton = export "triton" [ ./nixos/triton.nix ];
        trtllm = export "trtllm" [ ./nixos/trtllm.nix ];
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

      # hosts/h100-server.nix uses SGLang and Triton, hosts/rtx5090-nvfp4.nix TensorRT-LLM, which
      # nixpkgs lacks: a machine sets services.inference.{sglang,triton,trtllm}.package itself.
      nixosConfigurations = lib.genAttrs hostNames mkHost;

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          plainPkgs = nixpkgs.legacyPackages.${system};
          golden = (import ./tests/nix/eval.nix { nixpkgsLib = nixpkgs; }).golden;
        in
        {
          model-pull = pkgs.model-pull;
          # The wrapper gives pydbus the GLib/Gio typelibs (nix/model-pull.nix).
          model-pull-gio = pkgs.callPackage ./nix/model-pull-gio.nix { };
          # tests/nix/golden.json equals an evaluation with this flake's nixpkgs lib.
          golden =
            if golden == lib.importJSON ./tests/nix/golden.json then
              pkgs.runCommand "golden-up-to-date" { } "touch $out"
            else
              throw "tests/nix/golden.json is stale: run `make update-golden NIXPKGS_LIB=...`";
        }
        // lib.optionalAttrs (system == "x86_64-linux") (
          # Each host's toplevel evaluated (its assertions included) without building CUDA;
          # the runtimes nixpkgs lacks are tests/nix/standins.nix.
          lib.mapAttrs' (
            name: host:
            lib.nameValuePair "host-${name}" (
              evaluates pkgs "host-${name}"
                (host.extendModules { modules = [ ./tests/nix/standins.nix ]; }).config.system.build.toplevel
            )
          ) self.nixosConfigurations
          // {
            # All the exports in one configuration: the shared part is taken once.
            modules-combine = evaluates pkgs "modules-combine"
              (lib.nixosSystem {
                modules = lib.attrValues self.nixosModules ++ [
                  hardware
                  ./tests/nix/standins.nix
                  (./hosts + "/h100-server.nix")
                ];
              }).config.system.build.toplevel;
          }
          // vmTests plainPkgs
        )
      );
    };
}
