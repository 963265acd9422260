{
  description = "Ferry: GitOps pull deployments for NixOS fleets, with signed releases";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      }));
    in
    {
      overlays.default = final: _prev: {
        ferry-agent = final.callPackage ./nix/package.nix { crate = "ferry-agent"; };
        ferry-signer = final.callPackage ./nix/package.nix { crate = "ferry-signer"; };
      };

      packages = forAllSystems (pkgs: {
        inherit (pkgs) ferry-agent ferry-signer;
        default = pkgs.ferry-agent;
      });

      # The module, with its package built from the host's own nixpkgs. It
      # sets no overlay, so it also works where nixpkgs is read-only (NixOS
      # tests, `nixpkgs.pkgs`); the overlay above is there for those who want
      # pkgs.ferry-agent and pkgs.ferry-signer elsewhere.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nixos-module ];
        services.ferry-agent.package =
          lib.mkDefault (pkgs.callPackage ./nix/package.nix { crate = "ferry-agent"; });
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.ferry-agent ];
          packages = with pkgs; [ cargo rustc clippy rustfmt cargo-fuzz git openssh nix python3 ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);

      checks = forAllSystems (pkgs: {
        inherit (pkgs) ferry-agent ferry-signer;
        clippy = pkgs.ferry-agent.overrideAttrs (old: {
          pname = "ferry-clippy";
          nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
          buildPhase = "cargo clippy --workspace --all-targets --offline -- -D warnings";
          installPhase = "touch $out";
        });
        # The module, evaluated against this nixpkgs' lib with stub options.
        module-eval = pkgs.runCommand "ferry-module-eval"
          {
            result = import ./nixos-module/eval-check.nix { inherit (nixpkgs) lib; };
          } ''
          test "$result" = 1 && touch $out
        '';
        # End to end on NixOS VMs: a host follows signed releases from a git
        # daemon and a signed nix-serve cache, and reports to a recording forge.
        vm-deploy = import ./nixos-module/tests/deploy.nix {
          inherit pkgs;
          ferryModule = self.nixosModules.default;
        };
      });
    };
}
