# The module on real NixOS, end to end: `host` runs services.ferry-agent;
# `server` plays CI and the forge — a git daemon with the deploy repository,
# nix-serve signing the binary cache, and a recording Gitea status endpoint
# over HTTPS (a test CA the host trusts).
# The script signs releases with ferry-signer on the server and watches the
# host follow them: an "already running" release, a real switch to a second
# system fetched from the cache, and an unsigned tip that must be refused.
#
# Built from flake.nix as checks.<system>.vm-deploy:
#   nix build .#checks.x86_64-linux.vm-deploy -L
{ pkgs, ferryModule }:

let
  # Test-only key material. The release key is generated at build time (the
  # host pins the allowed_signers line by store path). The cache key is a
  # fixed snakeoil pair kept in this directory, because the host's
  # agent.toml needs the public key as a string at evaluation time, and
  # reading it out of a derivation would be import-from-derivation. Both
  # secrets end up world-readable in the Nix store: acceptable for a
  # throwaway test, never for a real deployment (see docs/keys.md).
  releaseKey = pkgs.runCommand "ferry-test-release-key"
    {
      nativeBuildInputs = [ pkgs.ferry-signer pkgs.age ];
    } ''
    mkdir -p $out
    age-keygen -o $out/age-identity.txt 2>/dev/null
    ferry-signer keygen --out $out/release.key \
      --recipient "$(age-keygen -y $out/age-identity.txt)" \
      --principal ci@ferry.test > $out/allowed_signers
  '';
  cachePublicKey = pkgs.lib.fileContents ./cache-snakeoil.pk;
  # The forge is reached over HTTPS, as the agent requires for a forge on
  # another machine (the token must not cross the network in clear): a
  # throwaway CA, which the host trusts through security.pki, and a
  # certificate for `server` signed by it. Long-lived, since the build may
  # be reused from a cache long after it ran; world-readable in the store,
  # which only a test may accept.
  testCa = pkgs.runCommand "ferry-test-forge-ca"
    {
      nativeBuildInputs = [ pkgs.openssl ];
    } ''
    mkdir -p $out
    cd $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout ca.key -out ca.pem -days 36500 -subj "/CN=Ferry VM test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout server.key -out server.csr -subj "/CN=server"
    printf 'subjectAltName=DNS:server\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -out server.pem -days 36500 -extfile server.ext
    rm server.csr server.ext
  '';
  forgeToken = "test-forge-token";
in
pkgs.testers.runNixOSTest {
  name = "ferry-vm-deploy";

  nodes = {
    server = { nodes, pkgs, ... }: {
      networking.firewall.allowedTCPPorts = [ 9418 5000 3000 ];
      environment.systemPackages = [ pkgs.ferry-signer pkgs.git ];

      # The system the host will be told to switch to: registered in this
      # machine's store, so nix-serve can serve (and sign) its closure. It
      # is never put in the host's store image.
      virtualisation.additionalPaths = [ nodes.host.system.build.ferryNext ];

      services.gitDaemon = {
        enable = true;
        basePath = "/srv/git";
        exportAll = true;
      };
      # Owned by the daemon's user, so that neither git (upload-pack) nor
      # libgit2 (ferry-signer, run as that user) sees "dubious ownership".
      systemd.tmpfiles.rules = [ "d /srv/git 0755 git git -" ];

      services.nix-serve = {
        enable = true;
        secretKeyFile = "${./cache-snakeoil.sk}";
      };

      systemd.services.forge-recorder = {
        description = "Recording Gitea commit-status endpoint (HTTPS)";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        serviceConfig = {
          ExecStart = "${pkgs.python3.interpreter} ${./forge-recorder.py} 3000 /var/lib/forge-recorder ${forgeToken} ${testCa}/server.pem ${testCa}/server.key";
          StateDirectory = "forge-recorder";
        };
      };
    };

    host = { extendModules, pkgs, ... }: {
      imports = [ ferryModule ];

      # The agent runs <toplevel>/bin/switch-to-configuration; test nodes
      # leave it out unless asked. No boot loader: the VM boots its kernel
      # directly, and `switch` then only warns that nothing is installed.
      system.switch.enable = true;
      boot.loader.grub.enable = false;

      # Trust the test CA that signed the forge's certificate.
      security.pki.certificateFiles = [ "${testCa}/ca.pem" ];

      virtualisation = {
        # A store of its own (an image of this system's closure) instead of
        # the build machine's store over 9p, which would already contain the
        # next system and let the preflight skip the cache.
        useNixStoreImage = true;
        writableStore = true;
        # The agent keeps 512 MiB free beyond what a closure needs: put the
        # store's writable layer on a disk with room rather than on tmpfs.
        writableStoreUseTmpfs = false;
        diskSize = 2048;
        memorySize = 1536;
      };

      services.ferry-agent = {
        enable = true;
        repository = "git://server/deploy.git";
        allowedSigners = "${releaseKey}/allowed_signers";
        substituters = [ "http://server:5000" ];
        trustedPublicKeys = [ cachePublicKey ];
        pollInterval = "5s";
        forge = {
          kind = "gitea";
          apiUrl = "https://server:3000/api/v1";
          repository = "ops/deploy";
          tokenFile = pkgs.writeText "forge-token" forgeToken;
        };
        healthCommands = [
          { command = "${pkgs.systemd}/bin/systemctl is-active --quiet nix-daemon.socket"; timeout = "10s"; }
        ];
        settings = {
          source.jitter = "1s";
          health.settle = "2s";
        };
        # Metrics through node_exporter's textfile collector, and on loopback.
        metrics = {
          enable = true;
          listen = "127.0.0.1:9101";
        };
      };
      services.prometheus.exporters.node.enable = true;
      environment.systemPackages = [ pkgs.curl ];

      # The second system: this configuration plus a marker file. It is not
      # part of this machine's closure; only the server's store has it.
      system.build.ferryNext =
        (extendModules {
          modules = [ { environment.etc."ferry-marker".text = "next\n"; } ];
        }).config.system.build.toplevel;
    };
  };

  testScript = { nodes, ... }: ''
    import json
    import re

    HOST_SYSTEM = "${nodes.host.system.build.toplevel}"
    NEXT_SYSTEM = "${nodes.host.system.build.ferryNext}"
    SOURCE = "5c0e5c0e5c0e5c0e5c0e5c0e5c0e5c0e5c0e5c0e"
    STATUSES = "/var/lib/forge-recorder/statuses.log"


    def release(toplevel: str, source: str) -> str:
        """Signs and records the next release on the server; its commit id."""
        out = server.succeed(
            "runuser -u git -- ferry-signer release --repo /srv/git/deploy.git"
            " --key ${releaseKey}/release.key --identity ${releaseKey}/age-identity.txt"
            f" --host host={toplevel} --source {source} --expires-in 1d"
        )
        commits = re.findall(r"^[0-9a-f]{40}$", out, re.MULTILINE)
        assert commits, f"ferry-signer printed no commit id: {out!r}"
        return commits[-1]


    def wait_for_status(sha: str, state: str) -> None:
        server.wait_until_succeeds(f"grep -qx '{sha} {state} ferry/host' {STATUSES}", timeout=300)


    def running() -> str:
        return host.succeed("readlink -f /run/current-system").strip()


    def status() -> dict:
        return json.loads(host.succeed("ferry-agent status --json"))


    server.start()
    for unit in ["git-daemon.service", "nix-serve.service", "forge-recorder.service"]:
        server.wait_for_unit(unit)
    for port in [9418, 5000, 3000]:
        server.wait_for_open_port(port)

    with subtest("a first release naming the system the host already runs"):
        server.succeed("runuser -u git -- git init --quiet --bare /srv/git/deploy.git")
        first = release(HOST_SYSTEM, SOURCE)
        server.succeed("runuser -u git -- ferry-signer verify --repo /srv/git/deploy.git"
                       " --allowed-signers ${releaseKey}/allowed_signers")

    with subtest("the agent starts, checks its configuration and reports success"):
        host.start()
        host.wait_for_unit("ferry-agent.service")
        host.succeed("ferry-agent check-config")
        wait_for_status(first, "success")
        assert running() == HOST_SYSTEM
        s = status()
        assert s["last_release"]["serial"] == 1, s
        assert s["last_outcome"]["result"] == "success", s

    with subtest("the next system is not on the host yet"):
        host.fail(f"test -e {NEXT_SYSTEM}")
        host.fail("test -e /etc/ferry-marker")

    with subtest("a second release switches the host to the next system"):
        source = "a" * 40
        second = release(NEXT_SYSTEM, source)
        host.wait_until_succeeds(f'test "$(readlink -f /run/current-system)" = {NEXT_SYSTEM}', timeout=600)
        wait_for_status(second, "success")
        server.succeed(f"grep -qx '{second} pending ferry/host' {STATUSES}")
        wait_for_status(source, "success")
        host.succeed("grep -qx next /etc/ferry-marker")
        host.succeed(f'test "$(readlink -f /nix/var/nix/profiles/system)" = {NEXT_SYSTEM}')
        # Fetched from the cache, so it carries the cache's signature.
        sigs = host.succeed(f"nix --extra-experimental-features nix-command path-info --sigs {NEXT_SYSTEM}")
        assert "ferry-test-cache-1:" in sigs, sigs
        # The agent itself was not restarted by the switch.
        host.succeed("systemctl is-active ferry-agent.service")

    with subtest("status and journal tell the story"):
        s = status()
        assert s["running"] == NEXT_SYSTEM, s
        assert s["profile"] == NEXT_SYSTEM, s
        assert s["last_release"] == {"commit": second, "serial": 2}, s
        assert s["last_outcome"]["result"] == "success", s
        assert s["drift"] is None, s
        host.wait_until_succeeds("ferry-agent status --json | grep -q '\"statuses_queued\": 0'")
        text = host.succeed("ferry-agent status")
        assert re.search(r"^drift\s+none$", text, re.MULTILINE), text
        assert f"{second} (serial 2)" in text, text
        host.succeed(f"journalctl -u ferry-agent.service -o json FERRY_COMMIT={second} | grep -q FERRY_PHASE")

    with subtest("node_exporter collects the agent's metrics"):
        host.wait_for_unit("prometheus-node-exporter.service")
        host.wait_until_succeeds("curl -fs http://127.0.0.1:9100/metrics | grep -qx 'ferry_release_serial 2'")
        host.succeed("curl -fs http://127.0.0.1:9100/metrics | grep -qx 'ferry_deploys_total{outcome=\"success\"} 2'")
        host.succeed("curl -fs http://127.0.0.1:9101/metrics | grep -qx 'ferry_drift 0'")

    with subtest("an unsigned tip is refused and the host stays where it is"):
        unsigned = server.succeed(
            "runuser -u git -- sh -c 'cd /srv/git/deploy.git"
            " && c=$(git -c user.name=mallory -c user.email=mallory@example.com"
            " commit-tree -p deploy -m unsigned deploy^{tree})"
            " && git update-ref refs/heads/deploy $c && echo $c'"
        ).strip()
        wait_for_status(unsigned, "failure")
        assert running() == NEXT_SYSTEM
        s = status()
        assert s["last_outcome"]["result"] == "refused", s
        assert s["last_release"]["serial"] == 2, s
        host.wait_until_succeeds("curl -fs http://127.0.0.1:9101/metrics | grep -qx 'ferry_deploys_total{outcome=\"refused\"} 1'")
  '';
}
