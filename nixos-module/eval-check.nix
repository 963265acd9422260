# A local check of the module without nixpkgs: evaluates it with nixpkgs'
# `lib` and stub declarations for the NixOS options it sets, then asserts on
# the generated unit and agent.toml. It also checks that every agent.toml key
# the module writes is one docs/configuration.md documents (that page is in
# turn checked against the agent's parser by tests/reference.rs), and
# evaluates the VM test's nodes (tests/deploy.nix) as far as stubs allow.
# CI cannot run it (no nixpkgs lib on a fresh machine); run it by hand with a
# checkout of nixpkgs' lib:
#   nix-instantiate --eval --strict nixos-module/eval-check.nix --arg lib 'import /path/to/nixpkgs/lib'
# and, to check that the VM test's Python parses:
#   nix-instantiate --eval --strict --json nixos-module/eval-check.nix --arg lib 'import /path/to/nixpkgs/lib' \
#     --argstr what vm-test-script | python3 -c 'import ast, json, sys; ast.parse(json.load(sys.stdin))'
{ lib, what ? "check" }:

let
  # The NixOS options the module touches and a small pkgs (shared with
  # tests/unit.nix).
  shared = import ./stubs.nix { inherit lib; };
  stubs = shared.module;
  inherit (shared) pkgs;
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
      cacheNetrcFile = "/run/secrets/nix-netrc";
      cacheBearerTokenFiles = { "attic.example.com" = "/run/secrets/attic-token"; };
      cacheS3CredentialsFile = "/run/secrets/s3";
      settings.switch.timeout = "20m";
    };
  };
  good = eval base;
  cfg = good.config;
  unit = cfg.systemd.services.ferry-agent;
  settings = cfg.services.ferry-agent.settings;
  failing = c: builtins.filter (a: !a.assertion) c.config.assertions;
  check = cond: msg: if cond then true else throw "eval-check: ${msg}";
  # The keys of the `## Keys` table of the configuration reference.
  documentedKeys =
    let
      lines = lib.splitString "\n" (builtins.readFile ../docs/configuration.md);
      start = lib.lists.findFirstIndex (l: l == "## Keys") null lines;
      rest = lib.drop (start + 1) lines;
      stop = lib.lists.findFirstIndex (lib.hasPrefix "## ") (builtins.length rest) rest;
      keyOf = l: builtins.match "[|] `([a-z0-9_.]+)` [|].*" l;
    in
    map builtins.head (builtins.filter (m: m != null) (map keyOf (lib.take stop rest)));
  # The dotted keys of a rendered agent.toml (tables are one level deep).
  keysOf = s: lib.concatLists (lib.mapAttrsToList
    (k: v: if builtins.isAttrs v then map (i: "${k}.${i}") (builtins.attrNames v) else [ k ])
    s);
  undocumented = s: builtins.filter (k: !(builtins.elem k documentedKeys)) (keysOf s);

  # The VM test with stub packages: its host's ferry-agent options go through
  # the real module, and its test script is rendered.
  fakePath = name: "/nix/store/22222222222222222222222222222222-${name}";
  nextSystem = fakePath "nixos-system-host-next";
  vmPkgs = pkgs // {
    inherit lib;
    runCommand = name: _: _: fakePath name;
    ferry-signer = fakePath "ferry-signer";
    age = fakePath "age";
    git = fakePath "git";
    curl = fakePath "curl";
    systemd = fakePath "systemd";
    python3.interpreter = fakePath "python3/bin/python3";
    testers.runNixOSTest = spec: spec;
  };
  vmTest = import ./tests/deploy.nix { pkgs = vmPkgs; ferryModule = ./default.nix; };
  vmHostNode = vmTest.nodes.host {
    inherit lib;
    config = { };
    pkgs = vmPkgs;
    extendModules = _: { config.system.build.toplevel = nextSystem; };
  };
  vmServerNode = vmTest.nodes.server {
    inherit lib;
    config = { };
    pkgs = vmPkgs;
    nodes.host.system.build.ferryNext = nextSystem;
  };
  vmHost = eval { services.ferry-agent = vmHostNode.services.ferry-agent; };
  vmSettings = vmHost.config.services.ferry-agent.settings;
  vmScript = vmTest.testScript {
    nodes.host.system.build = { toplevel = fakePath "nixos-system-host"; ferryNext = nextSystem; };
  };

  withGitToken = eval (lib.recursiveUpdate base { services.ferry-agent.gitTokenFile = "/run/secrets/git"; });
  gitTokenSettings = withGitToken.config.services.ferry-agent.settings;

  withMetrics = eval (lib.recursiveUpdate base {
    services.ferry-agent.metrics = { enable = true; listen = "127.0.0.1:9101"; };
    services.prometheus.exporters.node.enable = true;
  });
  metricsSettings = withMetrics.config.services.ferry-agent.settings;
  nodeExporter = withMetrics.config.services.prometheus.exporters.node;

  # No cache credentials: no cache keys beyond the two, nothing loaded for them.
  publicCache = eval {
    services.ferry-agent = base.services.ferry-agent // { cacheNetrcFile = null; cacheBearerTokenFiles = { }; cacheS3CredentialsFile = null; };
  };
  # An s3:// substituter is written as Nix spells it, untouched.
  s3Url = "s3://nix-cache?region=eu-central-1&endpoint=https://fsn1.your-objectstorage.com&profile=deploy";
  s3Cache = eval (lib.recursiveUpdate base { services.ferry-agent.substituters = [ s3Url ]; });
  badBearerHost = eval {
    services.ferry-agent = base.services.ferry-agent // { cacheBearerTokenFiles = { "attic.example.com:8443" = "/run/secrets/attic-token"; }; };
  };

  withApprovals = eval (lib.recursiveUpdate base {
    services.ferry-agent.approvals = {
      required = 2;
      approvers = [ "alice@example.com" "bob@example.com" ];
      releasers = [ "ci@example.com" ];
      allowedSigners = [ "alice@example.com namespaces=\"git\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbJ2z2K2kMA6a+umVyITxuefXhgqiTFPHMg5jzyflzf" ];
    };
  });
  approvalSettings = withApprovals.config.services.ferry-agent.settings;
  unreachable = eval (lib.recursiveUpdate base { services.ferry-agent.approvals.required = 1; });

  # Health commands' programs: agent.toml's health.path, not the unit's PATH.
  fakeCurl = { type = "derivation"; name = "curl"; outPath = fakePath "curl"; };
  withHealthPath = eval (lib.recursiveUpdate base { services.ferry-agent.healthPath = [ fakeCurl ]; });
  healthPathSettings = withHealthPath.config.services.ferry-agent.settings;

  noTrust = eval (lib.recursiveUpdate base { services.ferry-agent.trustedPublicKeys = [ ]; });
  noForgeUrl = eval (lib.recursiveUpdate base { services.ferry-agent.forge.apiUrl = null; });
in
if what == "vm-test-script" then vmScript else
builtins.all (x: x) [
  (check (failing good == [ ]) "a complete configuration has no failing assertion")
  (check (builtins.length (failing noTrust) == 1) "missing trustedPublicKeys is caught")
  (check (builtins.length (failing noForgeUrl) == 1) "gitea without apiUrl is caught")
  (check (settings.host == "web1") "host defaults to networking.hostName")
  (check (settings.source.url == "https://git.example.com/ops/deploy.git") "source.url")
  (check (settings.source.allowed_signers == "/etc/ferry/allowed_signers") "allowed_signers path")
  (check (settings.report.token_file == "/run/credentials/ferry-agent.service/forge-token") "forge token as credential")
  (check (settings.report.api_url == "https://git.example.com/api/v1") "api_url")
  (check (settings.cache.netrc_file == "/run/credentials/ferry-agent.service/cache-netrc") "cache netrc as credential")
  (check (settings.cache.bearer_token_files."attic.example.com" == "/run/credentials/ferry-agent.service/cache-token-attic.example.com") "bearer token as credential")
  (check (settings.cache.s3_credentials_file == "/run/credentials/ferry-agent.service/cache-s3") "S3 credentials as credential")
  (check (lib.elem "cache-netrc:/run/secrets/nix-netrc" unit.serviceConfig.LoadCredential) "netrc loaded as credential")
  (check (settings.switch.timeout == "20m") "freeform settings pass through")
  (check (settings.health.commands == [ "systemctl is-active nginx" ]) "health commands")
  (check (!(settings.health ? path)) "no health.path unless healthPath is set")
  (check (healthPathSettings.health.path == [ "${fakePath "curl"}/bin" ]) "healthPath: the packages' bin directories")
  (check (withHealthPath.config.systemd.services.ferry-agent.path == unit.path) "healthPath leaves the agent's own PATH alone")
  (check (undocumented healthPathSettings == [ ]) "with healthPath, the module writes only documented keys")
  (check (settings.health.settle == "10s" && settings.source.jitter == "10s") "healthSettle, pollJitter")
  (check (settings.switch == { timeout = "20m"; rollback = true; }) "switch: settings win over switchTimeout; rollback")
  (check (settings.report.context == "ferry/{host}" && settings.report.error_after == "15m") "forge.context, errorAfter")
  (check (unit.restartIfChanged == false) "a switch never restarts the agent")
  (check (unit.serviceConfig.Restart == "always") "Restart=always")
  (check (unit.serviceConfig.StateDirectory == "ferry-agent") "StateDirectory")
  (check (unit.serviceConfig.LoadCredential == [
    "forge-token:/run/secrets/forge"
    "cache-netrc:/run/secrets/nix-netrc"
    "cache-token-attic.example.com:/run/secrets/attic-token"
    "cache-s3:/run/secrets/s3"
  ]) "LoadCredential: the forge token and every cache credential")
  (check (builtins.attrNames publicCache.config.services.ferry-agent.settings.cache == [ "substituters" "trusted_public_keys" ])
    "a public cache: no credential keys")
  (check (publicCache.config.systemd.services.ferry-agent.serviceConfig.LoadCredential == [ "forge-token:/run/secrets/forge" ])
    "a public cache: no cache credentials loaded")
  (check (s3Cache.config.services.ferry-agent.settings.cache.substituters == [ s3Url ]) "s3:// substituters pass through")
  (check (failing s3Cache == [ ]) "an s3:// substituter passes the assertions")
  (check (builtins.length (failing badBearerHost) == 1) "a bearer token host with a port is caught")
  (check (builtins.elem "network-online.target" unit.after) "After=network-online.target")
  (check (unit.environment.NIX_REMOTE == "daemon") "the store is written by nix-daemon")
  (check (lib.hasSuffix "/bin/ferry-agent --config /etc/ferry/agent.toml run" unit.serviceConfig.ExecStart) "ExecStart")
  (check (builtins.length documentedKeys >= 20) "docs/configuration.md's key table is found")
  (check (undocumented settings == [ ]) "the module writes only documented keys: ${toString (undocumented settings)}")
  (check (undocumented gitTokenSettings == [ ]) "with a git token, the module writes only documented keys")
  (check (!(settings ? approvals)) "no approvals section unless approvals are configured")
  (check (undocumented approvalSettings == [ ]) "with approvals, the module writes only documented keys: ${toString (undocumented approvalSettings)}")
  (check (approvalSettings.approvals.required == 2 && approvalSettings.approvals.releasers == [ "ci@example.com" ]) "approvals policy")
  (check (approvalSettings.approvals.allowed_signers == "/etc/ferry/approvers_allowed_signers") "approvers' allowed_signers path")
  (check (withApprovals.config.environment.etc ? "ferry/approvers_allowed_signers") "approvers' file installed")
  (check (!(cfg.environment.etc ? "ferry/approvers_allowed_signers")) "no approvers' file unless one is given")
  (check (failing withApprovals == [ ]) "a complete approvals configuration passes the assertions")
  (check (builtins.length (failing unreachable) == 1) "approvals.required without approvers is caught")
  (check (gitTokenSettings.source.token_file == "/run/credentials/ferry-agent.service/git-token") "git token as credential")
  (check (withGitToken.config.systemd.services.ferry-agent.serviceConfig.LoadCredential
    == [ "git-token:/run/secrets/git" "forge-token:/run/secrets/forge" "cache-netrc:/run/secrets/nix-netrc"
      "cache-token-attic.example.com:/run/secrets/attic-token" "cache-s3:/run/secrets/s3" ]) "every credential loaded")
  (check (!(settings ? metrics) && cfg.services.prometheus.exporters.node.extraFlags == [ ]) "no metrics unless enabled")
  (check (metricsSettings.metrics == { textfile_dir = "/var/lib/ferry-agent-metrics"; listen = "127.0.0.1:9101"; }) "metrics settings")
  (check (undocumented metricsSettings == [ ]) "with metrics, the module writes only documented keys")
  (check (nodeExporter.enabledCollectors == [ "textfile" ]
    && nodeExporter.extraFlags == [ "--collector.textfile.directory=/var/lib/ferry-agent-metrics" ]) "node_exporter reads the textfile directory")
  (check (withMetrics.config.systemd.tmpfiles.rules == [ "d /var/lib/ferry-agent-metrics 0755 root root - -" ]) "the textfile directory is created readable")
  (check (lib.elem "/var/lib/ferry-agent-metrics" withMetrics.config.systemd.services.ferry-agent.serviceConfig.ReadWritePaths) "the agent may write the textfile directory")
  (check (failing vmHost == [ ]) "the VM test's host configuration passes the module's assertions")
  (check (undocumented vmSettings == [ ]) "the VM test writes only documented keys: ${toString (undocumented vmSettings)}")
  (check (vmSettings.source.url == "git://server/deploy.git") "VM test: source.url")
  (check (vmSettings.source.jitter == "1s" && vmSettings.source.poll_interval == "5s") "VM test: polling")
  (check (vmSettings.cache.trusted_public_keys == [ (lib.fileContents ./tests/cache-snakeoil.pk) ]) "VM test: cache key")
  (check (vmSettings.report.api_url == "https://server:3000/api/v1") "VM test: the forge over HTTPS")
  (check (vmHostNode.security.pki.certificateFiles == [ "${fakePath "ferry-test-forge-ca"}/ca.pem" ]) "VM test: the host trusts the forge's test CA")
  (check (builtins.length vmSettings.health.commands == 1) "VM test: health command")
  (check (vmHostNode.system.build.ferryNext == nextSystem) "VM test: the next system comes from extendModules")
  (check (vmServerNode.virtualisation.additionalPaths == [ nextSystem ]) "VM test: the server's store holds the next system")
  (check (lib.hasInfix nextSystem vmScript) "VM test: the script names the next system")
]
