# A local check of the module without nixpkgs: evaluates it with nixpkgs'
# `lib` and stub declarations for the NixOS options it sets, then asserts on
# the generated unit and agent.toml. CI cannot run it (no nixpkgs lib on a
# fresh machine); run it by hand with a checkout of nixpkgs' lib:
#   nix-instantiate --eval --strict nixos-module/eval-check.nix --arg lib 'import /path/to/nixpkgs/lib'
{ lib }:

let
  inherit (lib) mkOption types;
  stubs = {
    options = {
      assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
      environment = mkOption { type = types.anything; default = { }; };
      systemd = mkOption { type = types.anything; default = { }; };
      networking.hostName = mkOption { type = types.str; default = "web1"; };
      nix.package = mkOption { type = types.anything; default = "/nix/store/00000000000000000000000000000000-nix"; };
      i18n.glibcLocales = mkOption { type = types.anything; default = null; };
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
  eval = extra: lib.evalModules {
    modules = [ ./default.nix stubs { _module.args.pkgs = pkgs; } extra ];
  };
  base = {
    services.ferry-agent = {
      enable = true;
      repository = "https://git.example.com/ops/deploy.git";
      allowedSigners = [ "ci@example.com namespaces=\"git\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbJ2z2K2kMA6a+umVyITxuefXhgqiTFPHMg5jzyflzf" ];
      substituters = [ "https://cache.example.com" ];
      trustedPublicKeys = [ "cache.example.com-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      forge = { kind = "gitea"; apiUrl = "https://git.example.com/api/v1"; repository = "ops/deploy"; tokenFile = "/run/secrets/forge"; };
      healthCommands = [ "systemctl is-active nginx" ];
      settings.switch.timeout = "20m";
    };
  };
  good = eval base;
  cfg = good.config;
  unit = cfg.systemd.services.ferry-agent;
  settings = cfg.services.ferry-agent.settings;
  failing = c: builtins.filter (a: !a.assertion) c.config.assertions;
  check = cond: msg: if cond then true else throw "eval-check: ${msg}";
  noTrust = eval (lib.recursiveUpdate base { services.ferry-agent.trustedPublicKeys = [ ]; });
  noForgeUrl = eval (lib.recursiveUpdate base { services.ferry-agent.forge.apiUrl = null; });
in
builtins.all (x: x) [
  (check (failing good == [ ]) "a complete configuration has no failing assertion")
  (check (builtins.length (failing noTrust) == 1) "missing trustedPublicKeys is caught")
  (check (builtins.length (failing noForgeUrl) == 1) "gitea without apiUrl is caught")
  (check (settings.host == "web1") "host defaults to networking.hostName")
  (check (settings.source.url == "https://git.example.com/ops/deploy.git") "source.url")
  (check (settings.source.allowed_signers == "/etc/ferry/allowed_signers") "allowed_signers path")
  (check (settings.report.token_file == "/run/credentials/ferry-agent.service/forge-token") "forge token as credential")
  (check (settings.report.api_url == "https://git.example.com/api/v1") "api_url")
  (check (settings.switch.timeout == "20m") "freeform settings pass through")
  (check (settings.health.commands == [ "systemctl is-active nginx" ]) "health commands")
  (check (unit.restartIfChanged == false) "a switch never restarts the agent")
  (check (unit.serviceConfig.Restart == "always") "Restart=always")
  (check (unit.serviceConfig.StateDirectory == "ferry-agent") "StateDirectory")
  (check (unit.serviceConfig.LoadCredential == [ "forge-token:/run/secrets/forge" ]) "LoadCredential")
  (check (builtins.elem "network-online.target" unit.after) "After=network-online.target")
  (check (unit.environment.NIX_REMOTE == "daemon") "the store is written by nix-daemon")
  (check (lib.hasSuffix "/bin/ferry-agent --config /etc/ferry/agent.toml run" unit.serviceConfig.ExecStart) "ExecStart")
]
