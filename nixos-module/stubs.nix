# What the module needs of NixOS and nixpkgs, stubbed so it evaluates without
# them: declarations of the NixOS options it sets or reads (as loose types)
# and a small `pkgs` (the TOML format writing JSON, writeText, a fake
# package). Shared by eval-check.nix (the real nixpkgs lib) and
# tests/unit.nix (the real lib or tests/lib-standin.nix).
{ lib }:

let
  inherit (lib) mkOption types;
in
{
  module = {
    options = {
      assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
      environment = mkOption { type = types.anything; default = { }; };
      systemd = mkOption { type = types.anything; default = { }; };
      networking.hostName = mkOption { type = types.str; default = "web1"; };
      nix.package = mkOption { type = types.anything; default = "/nix/store/00000000000000000000000000000000-nix"; };
      i18n.glibcLocales = mkOption { type = types.anything; default = null; };
      services.prometheus.exporters.node = {
        enable = mkOption { type = types.bool; default = false; };
        enabledCollectors = mkOption { type = types.listOf types.str; default = [ ]; };
        extraFlags = mkOption { type = types.listOf types.str; default = [ ]; };
      };
    };
  };
  pkgs = {
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      generate = name: value: builtins.toFile name (builtins.toJSON value);
    };
    writeText = builtins.toFile;
    ferry-agent = "/nix/store/11111111111111111111111111111111-ferry-agent";
  };
}
