# services.ferry-agent: follow a signed deploy branch and switch this host to
# the system its release names. Options are typed for the common keys and
# rendered, with anything set under `settings` (RFC 42), into
# /etc/ferry/agent.toml; docs/configuration.md lists every key.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ferry-agent;
  inherit (lib) mkOption mkEnableOption mkIf mkDefault types optional literalExpression;

  settingsFormat = pkgs.formats.toml { };

  allowedSignersFile =
    if builtins.isList cfg.allowedSigners
    then pkgs.writeText "ferry-allowed-signers" (lib.concatStringsSep "\n" cfg.allowedSigners + "\n")
    else cfg.allowedSigners;

  approverSignersFile =
    if builtins.isList cfg.approvals.allowedSigners
    then pkgs.writeText "ferry-approvers-allowed-signers" (lib.concatStringsSep "\n" cfg.approvals.allowedSigners + "\n")
    else cfg.approvals.allowedSigners;

  approvalsSet = cfg.approvals.required > 0 || cfg.approvals.approvers != [ ]
    || cfg.approvals.releasers != [ ] || cfg.approvals.allowedSigners != null;

  # Secrets reach the agent as systemd credentials, never through the store.
  credential = name: "/run/credentials/ferry-agent.service/${name}";

  healthCommand = types.either types.str (types.submodule {
    options = {
      command = mkOption { type = types.str; description = "Shell command that must exit 0."; };
      timeout = mkOption { type = types.str; default = "60s"; description = "How long it may take."; };
    };
  });
in
{
  options.services.ferry-agent = {
    enable = mkEnableOption "the Ferry agent, which deploys signed releases from a git branch to this host";

    package = mkOption {
      type = types.package;
      default = pkgs.ferry-agent;
      defaultText = literalExpression "pkgs.ferry-agent";
      description = "The ferry-agent package (from Ferry's overlay or flake).";
    };

    repository = mkOption {
      type = types.str;
      example = "https://git.example.com/ops/deploy.git";
      description = "The deploy repository: https://, http://, git://, file://, s3:// (a static mirror in a bucket) or an absolute path.";
    };

    branch = mkOption {
      type = types.str;
      default = "deploy";
      description = "The branch that carries releases.";
    };

    allowedSigners = mkOption {
      type = types.either (types.listOf types.str) types.path;
      example = literalExpression ''[ "ci@example.com namespaces=\"git\" ssh-ed25519 AAAAC3Nza…" ]'';
      description = ''
        Who may sign releases: `allowed_signers` lines (as `ferry-signer keygen`
        prints them), or a file in that format. Revoke a key by removing its line.
      '';
    };

    substituters = mkOption {
      type = types.listOf types.str;
      example = [ "https://cache.example.com" ];
      description = "Binary caches the host's closure is fetched from (only these are used).";
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      example = [ "cache.example.com-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      description = "Keys every store path of the closure must be signed with.";
    };

    cacheNetrcFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/nix-netrc";
      description = ''
        A netrc file in Nix's format (what nix.conf's `netrc-file` names) with
        the credentials of private HTTPS caches (Attic, Cachix, nginx basic
        auth), passed as a systemd credential.
      '';
    };

    cacheBearerTokenFiles = mkOption {
      type = types.attrsOf types.path;
      default = { };
      example = { "attic.example.com" = "/run/secrets/attic-token"; };
      description = "Bearer tokens for private HTTPS caches, by host; each file is passed as a systemd credential.";
    };

    cacheS3CredentialsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/ferry-s3-credentials";
      description = ''
        Key pairs for `s3://` caches in the AWS shared-credentials format
        (`[default]`, `aws_access_key_id`, `aws_secret_access_key`), passed
        as a systemd credential.
      '';
    };

    pollInterval = mkOption {
      type = types.str;
      default = "60s";
      description = "How often to ask the forge for the branch tip (random jitter is added).";
    };

    pollJitter = mkOption {
      type = types.str;
      default = "10s";
      example = "30s";
      description = "Up to this much random delay added to each poll, so a fleet does not poll in step.";
    };

    gitTokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/ferry-git-token";
      description = "Token for a private https repository, passed as a systemd credential.";
    };

    sourceS3CredentialsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/ferry-mirror-s3-credentials";
      description = ''
        For a `repository` that is an `s3://` static mirror: the key pair
        that reads it (AWS shared-credentials format; it needs only
        `s3:GetObject` on the mirror's prefix), passed as a systemd
        credential.
      '';
    };

    forge = {
      kind = mkOption {
        type = types.enum [ "github" "gitea" "forgejo" "gitlab" "none" ];
        default = "none";
        description = "Where commit statuses are reported.";
      };
      apiUrl = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://git.example.com/api/v1";
        description = "The forge API base URL (defaults to the public API for github and gitlab). https:// only: the agent refuses plain http:// to another machine, which would send the token in clear.";
      };
      repository = mkOption {
        type = types.str;
        default = "";
        example = "ops/deploy";
        description = "owner/repo (or a GitLab project id) that statuses are posted to.";
      };
      tokenFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/ferry-forge-token";
        description = ''
          Token allowed to write commit statuses, passed as a systemd
          credential: the agent reads its copy at each status, but systemd
          copies the file only when the unit starts, so after rotating it
          restart ferry-agent (docs/configuration.md, "Rotating credentials").
        '';
      };
      context = mkOption {
        type = types.str;
        default = "ferry/{host}";
        example = "deploy/{host}";
        description = "The commit status context this host posts; `{host}` becomes the host name (`ferry-signer wait --context` must match).";
      };
    };

    errorAfter = mkOption {
      type = types.str;
      default = "15m";
      example = "1h";
      description = ''
        How long a fault outside the release that a retry may cure (the
        binary cache, the deploy repository or systemd unreachable) may hold
        a release up before it shows one `error` status (or receipt); it is
        retried throughout.
      '';
    };

    receipts = {
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "s3://ferry-receipts/fleet?region=eu-central-1";
        description = ''
          Where the host writes its signed receipts (`s3://bucket/prefix?…`),
          read back by `ferry-signer status`, `wait` and `rollout`. The
          bucket's credentials are `cacheS3CredentialsFile`'s.
        '';
      };
      hostKey = mkOption {
        type = types.str;
        default = "/etc/ssh/ssh_host_ed25519_key";
        description = "The SSH ed25519 host key receipts are signed with (services.openssh makes it by default).";
      };
      statuses = mkOption {
        type = types.enum [ "all" "failures" "none" ];
        default = "failures";
        description = ''
          Which of the host's own commit statuses still reach the forge with
          receipts on: `failures` (and what follows one), `all` or `none`.
        '';
      };
    };

    reboot = {
      policy = mkOption {
        type = types.enum [ "never" "in-window" ];
        default = "never";
        description = ''
          When the agent reboots into a release that needs it (a new kernel
          or initrd, or a `boot` release): `never` (report it and leave the
          reboot to you), or `in-window`: inside `reboot.window`, at a moment
          spread across the window by host name.
        '';
      };
      window = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "Sat,Sun 02:00-04:00" ];
        description = "Maintenance windows for reboots, as days and times in the host's time zone.";
      };
    };

    deployWindow = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "Mon-Thu 09:00-16:00" ];
      description = ''
        Switch to new releases only inside these windows (days and times in
        the host's time zone); empty: any time. `boot` releases and refusals
        are not held back.
      '';
    };

    approvals = {
      required = mkOption {
        type = types.ints.unsigned;
        default = 0;
        example = 2;
        description = ''
          The two-person rule: how many distinct approvers must approve a
          release before this host deploys it (0: deploy at once). Canaries
          keep 0; production hosts wait for people.
        '';
      };
      approvers = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "alice@example.com" "bob@example.com" ];
        description = "Principals (as allowed_signers names them) whose approvals count on this host.";
      };
      releasers = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "ci@example.com" ];
        description = "Principals who may sign releases for this host (empty: any key in allowedSigners).";
      };
      allowedSigners = mkOption {
        type = types.nullOr (types.either (types.listOf types.str) types.path);
        default = null;
        example = literalExpression ''[ "alice@example.com namespaces=\"git\" sk-ssh-ed25519@openssh.com AAAAGnNr…" ]'';
        description = ''
          The approvers' keys (allowed_signers lines, or a file), kept apart
          from the release keys; null checks approvals against allowedSigners.
        '';
      };
    };

    healthCommands = mkOption {
      type = types.listOf healthCommand;
      default = [ ];
      example = literalExpression ''[ "systemctl is-active nginx" { command = "curl -fsS http://localhost/"; timeout = "5s"; } ]'';
      description = "Extra checks after a switch; a failing one rolls the host back. Programs other than the unit's basics come from `healthPath`.";
    };

    # The health commands' programs go to agent.toml's `health.path`, not to
    # the unit's `path`: the agent's own PATH stays what it needs (Nix and
    # the unit's basics), only the checks see curl and friends, and a change
    # is applied by the running agent, which reloads agent.toml, where a
    # change of the unit would wait for the agent to restart.
    healthPath = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ pkgs.curl pkgs.jq ]";
      description = ''
        Packages whose `bin` directories the health commands find their
        programs in, ahead of the agent's own PATH (agent.toml's
        `health.path`). Only the health commands see them.
      '';
    };

    healthSettle = mkOption {
      type = types.str;
      default = "10s";
      description = "How long to wait after a switch before looking for failed units.";
    };

    switchTimeout = mkOption {
      type = types.str;
      default = "15m";
      example = "5m";
      description = "How long `switch-to-configuration` may run before it is stopped (and the host rolled back).";
    };

    rollback = mkOption {
      type = types.bool;
      default = true;
      description = "Roll back to the previous system automatically when the switch or a health check fails.";
    };

    metrics = {
      enable = mkEnableOption ''
        Prometheus metrics, written to `metrics.textfileDir` after every
        deploy (with `services.prometheus.exporters.node.enable`, node_exporter's
        textfile collector is turned on and reads them from there)'';
      textfileDir = mkOption {
        type = types.path;
        default = "/var/lib/ferry-agent-metrics";
        description = ''
          Where the agent writes `ferry_agent.prom` (mode 0644, so
          node_exporter's user can read it); created world-readable.
        '';
      };
      listen = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "127.0.0.1:9101";
        description = "A loopback address to also serve the metrics on, at /metrics (unauthenticated, so loopback only).";
      };
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      description = ''
        Anything else in /etc/ferry/agent.toml (freeform). The typed options
        above are written here too; values set here win.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      { assertion = cfg.repository != ""; message = "services.ferry-agent.repository must name the deploy repository."; }
      {
        assertion = cfg.sourceS3CredentialsFile == null || lib.hasPrefix "s3://" cfg.repository;
        message = "services.ferry-agent.sourceS3CredentialsFile is only for an s3:// repository (use gitTokenFile for a private https one).";
      }
      { assertion = cfg.substituters != [ ]; message = "services.ferry-agent.substituters must list at least one binary cache."; }
      {
        assertion = cfg.trustedPublicKeys != [ ];
        message = "services.ferry-agent.trustedPublicKeys must list the cache's signing key: Ferry never deploys unsigned closures.";
      }
      {
        assertion = cfg.forge.kind == "none" || (cfg.forge.repository != "" && cfg.forge.tokenFile != null);
        message = "services.ferry-agent.forge: set repository and tokenFile, or kind = \"none\".";
      }
      {
        assertion = !(lib.elem cfg.forge.kind [ "gitea" "forgejo" ]) || cfg.forge.apiUrl != null;
        message = "services.ferry-agent.forge.apiUrl is required for gitea/forgejo, e.g. https://git.example.com/api/v1.";
      }
      {
        # The agent's own rule; a host with a port or a URL would also break
        # the `ID:PATH` syntax of LoadCredential.
        assertion = lib.all (host: host != "" && builtins.match ".*[/: @].*" host == null)
          (builtins.attrNames cfg.cacheBearerTokenFiles);
        message = "services.ferry-agent.cacheBearerTokenFiles: name each cache by its host alone, e.g. \"cache.example.com\" (no scheme, port or path).";
      }
      {
        assertion = cfg.approvals.required <= builtins.length (lib.unique cfg.approvals.approvers);
        message = "services.ferry-agent.approvals.required is more than the approvers named: the release could never be approved.";
      }
    ];

    services.ferry-agent.settings = lib.mapAttrsRecursive (_: mkDefault) ({
      host = config.networking.hostName;
      state_dir = "/var/lib/ferry-agent";
      source = {
        url = cfg.repository;
        inherit (cfg) branch;
        allowed_signers = "/etc/ferry/allowed_signers";
        poll_interval = cfg.pollInterval;
        jitter = cfg.pollJitter;
      } // lib.optionalAttrs (cfg.gitTokenFile != null) { token_file = credential "git-token"; }
        // lib.optionalAttrs (cfg.sourceS3CredentialsFile != null) { s3_credentials_file = credential "source-s3"; };
      cache = {
        inherit (cfg) substituters;
        trusted_public_keys = cfg.trustedPublicKeys;
      } // lib.optionalAttrs (cfg.cacheNetrcFile != null) { netrc_file = credential "cache-netrc"; }
        // lib.optionalAttrs (cfg.cacheBearerTokenFiles != { }) {
          bearer_token_files = lib.mapAttrs (host: _: credential "cache-token-${host}") cfg.cacheBearerTokenFiles;
        }
        // lib.optionalAttrs (cfg.cacheS3CredentialsFile != null) { s3_credentials_file = credential "cache-s3"; };
      health = {
        commands = cfg.healthCommands;
        settle = cfg.healthSettle;
      } // lib.optionalAttrs (cfg.healthPath != [ ]) {
        path = map (p: "${lib.getBin p}/bin") cfg.healthPath;
      };
      reboot = {
        inherit (cfg.reboot) policy;
      } // lib.optionalAttrs (cfg.reboot.window != [ ]) { inherit (cfg.reboot) window; };
      switch = {
        timeout = cfg.switchTimeout;
        inherit (cfg) rollback;
      } // lib.optionalAttrs (cfg.deployWindow != [ ]) { window = cfg.deployWindow; };
      report = {
        forge = cfg.forge.kind;
        inherit (cfg.forge) context;
        error_after = cfg.errorAfter;
      } // lib.optionalAttrs (cfg.forge.kind != "none") ({
        inherit (cfg.forge) repository;
        token_file = credential "forge-token";
      } // lib.optionalAttrs (cfg.forge.apiUrl != null) { api_url = cfg.forge.apiUrl; })
        // lib.optionalAttrs (cfg.receipts.url != null) {
          receipts = cfg.receipts.url;
          host_key = cfg.receipts.hostKey;
          inherit (cfg.receipts) statuses;
        };
    } // lib.optionalAttrs cfg.metrics.enable {
      metrics = {
        textfile_dir = cfg.metrics.textfileDir;
      } // lib.optionalAttrs (cfg.metrics.listen != null) { inherit (cfg.metrics) listen; };
    } // lib.optionalAttrs approvalsSet {
      approvals = {
        inherit (cfg.approvals) required approvers releasers;
      } // lib.optionalAttrs (cfg.approvals.allowedSigners != null) {
        allowed_signers = "/etc/ferry/approvers_allowed_signers";
      };
    });

    # The textfile collector's directory: written by the agent (root),
    # read by node_exporter's own user.
    systemd.tmpfiles.rules = optional cfg.metrics.enable "d ${cfg.metrics.textfileDir} 0755 root root - -";
    services.prometheus.exporters.node = mkIf (cfg.metrics.enable && config.services.prometheus.exporters.node.enable) {
      enabledCollectors = [ "textfile" ];
      extraFlags = [ "--collector.textfile.directory=${cfg.metrics.textfileDir}" ];
    };

    environment.etc."ferry/agent.toml".source = settingsFormat.generate "ferry-agent.toml" cfg.settings;
    environment.etc."ferry/allowed_signers".source = allowedSignersFile;
    environment.etc."ferry/approvers_allowed_signers" = mkIf (cfg.approvals.allowedSigners != null) {
      source = approverSignersFile;
    };
    environment.systemPackages = [ cfg.package ];

    systemd.services.ferry-agent = {
      description = "Ferry deploy agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      # A switch must never stop the agent that is running it; the agent
      # exits for Restart= to start the new one after any poll in which a
      # switch (a deploy, a rollback) changed its own package or unit.
      restartIfChanged = false;
      # nix-store and nix-env for realising and setting the profile.
      path = [ config.nix.package ];
      environment = {
        # Talk to nix-daemon instead of writing the store directly: the store
        # stays read-only to the agent.
        NIX_REMOTE = "daemon";
      } // lib.optionalAttrs (config.i18n.glibcLocales != null) {
        LOCALE_ARCHIVE = "${config.i18n.glibcLocales}/lib/locale/locale-archive";
      };
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/ferry-agent --config /etc/ferry/agent.toml run";
        Restart = "always";
        RestartSec = "10s";
        StateDirectory = "ferry-agent";
        StateDirectoryMode = "0700";
        LoadCredential =
          optional (cfg.gitTokenFile != null) "git-token:${cfg.gitTokenFile}"
          ++ optional (cfg.sourceS3CredentialsFile != null) "source-s3:${cfg.sourceS3CredentialsFile}"
          ++ optional (cfg.forge.tokenFile != null) "forge-token:${cfg.forge.tokenFile}"
          ++ optional (cfg.cacheNetrcFile != null) "cache-netrc:${cfg.cacheNetrcFile}"
          ++ lib.mapAttrsToList (host: file: "cache-token-${host}:${file}") cfg.cacheBearerTokenFiles
          ++ optional (cfg.cacheS3CredentialsFile != null) "cache-s3:${cfg.cacheS3CredentialsFile}";

        # Sandboxing. The switch itself runs in a transient unit started over
        # D-Bus, outside this sandbox, so the agent can be confined tightly.
        ProtectSystem = "strict";
        # Relaxation: `nix-env -p /nix/var/nix/profiles/system --set` writes
        # the profile's generation links; the daemon socket must be writable
        # to connect to it.
        ReadWritePaths = [ "/nix/var/nix/profiles" "/nix/var/nix/daemon-socket" ]
          # and the metrics' textfile directory.
          ++ optional cfg.metrics.enable cfg.metrics.textfileDir;
        # Relaxation: empty home directories rather than none. Nix looks at
        # ~/.nix-defexpr as it starts; with `true`, /root cannot even be
        # searched without a capability and every nix-store call aborts.
        ProtectHome = "tmpfs";
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        # Relaxation: AF_UNIX for D-Bus, journald and nix-daemon; IP for the
        # forge, the git remote and the binary caches. The only listening
        # sockets are the loopback relay (127.0.0.1, a random port) that serves
        # the caches to nix-daemon while a closure is realised, and the
        # metrics endpoint (`metrics.listen`, loopback only) if set.
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        UMask = "0077";
        # Root without a capability: every file the agent writes (its state,
        # the system profile, the metrics) and reads (credentials, the host
        # key) is root's own, D-Bus and nix-daemon trust it by its uid, and the
        # switch, the reboot and the store writes are done by systemd and
        # nix-daemon on its behalf. Relaxation: it stays uid 0, because the
        # profile links are root's and starting units over D-Bus as another
        # user would need polkit rules.
        CapabilityBoundingSet = "";
        NoNewPrivileges = true;
        # Its own user namespace (root mapped to root): it cannot act on
        # another user's files or processes, not even with a capability.
        PrivateUsers = true;
        # No other user's processes in /proc. (Not ProcSubset=pid: Nix's garbage
        # collector reads /proc/stat and warns on every call without it.)
        ProtectProc = "invisible";
        # The system calls of an ordinary service, without the privileged
        # ones or resource changes; any other fails with EPERM rather than
        # killing the caller. The agent, Nix, curl and systemctl run under it.
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
        # Left open on purpose: the network (the forge, the git remote and the
        # caches can be anywhere, so no PrivateNetwork= or IPAddressDeny=),
        # uid 0 (above) and the host's root directory. tests/deploy/module_unit.rs
        # runs this unit and holds `systemd-analyze security` to at most 2.0.
      };
    };
  };
}
