//! Real Nix fixtures: fake NixOS toplevels built with `nix-build` from plain
//! `derivation`s (no nixpkgs), and signed `file://` binary caches.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `nix-build` with no substituters (fixtures are built here, and this
/// machine cannot reach cache.nixos.org anyway) and no build sandbox: the
/// fixtures' builder is the machine's `/bin/sh`, which a sandbox hides. The
/// options are given per command, so a user's nix.conf is left as it is.
fn nix_build() -> Command {
    let mut cmd = Command::new("nix-build");
    cmd.args(["--no-out-link", "--quiet", "--option", "substituters", ""]);
    cmd.args(["--option", "sandbox", "false"]);
    cmd
}

/// Serialises Nix commands of concurrent tests with the moment a testbed
/// takes its own copy of the Nix database (see `Testbed::boot`): a copy made
/// while another test writes the database could be torn.
pub fn lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/dev/shm/ferry-nix.lock")
        .unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
    file
}

/// Runs a Nix command (under [`lock`]) and returns its trimmed stdout,
/// panicking with stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let _nix = lock();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is nix-bin installed? scripts/install-deps)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Builds a plain toplevel named `nixos-system-<host>` over a chain of `depth`
/// dependencies and a kernel of its own; `seed` makes the paths unique to the
/// test, so no two tests share (or delete) a path.
pub fn build_toplevel(dir: &Path, host: &str, seed: &str, depth: usize) -> String {
    build_system(dir, host, seed, Behaviour::Succeed, seed, depth)
}

/// A signed file:// binary cache.
#[derive(Debug)]
pub struct Cache {
    pub dir: PathBuf,
    pub secret_key: PathBuf,
    pub public_key: String,
}

impl Cache {
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let secret_key = dir.join("secret-key");
        let public = dir.join("public-key");
        run(Command::new("nix-store")
            .arg("--generate-binary-cache-key")
            .arg(name)
            .arg(&secret_key)
            .arg(&public));
        let public_key = std::fs::read_to_string(&public).unwrap().trim().to_owned();
        Self {
            dir: dir.join("store"),
            secret_key,
            public_key,
        }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// Copies the closure of `path` into the cache, unsigned.
    pub fn copy(&self, path: &str) {
        run(Command::new("nix")
            .args(["--extra-experimental-features", "nix-command", "copy", "--to"])
            .arg(format!("{}?compression=zstd", self.url()))
            .arg(path));
    }

    /// Signs the closure of `path` in the cache.
    pub fn sign(&self, path: &str) {
        run(Command::new("nix")
            .args([
                "--extra-experimental-features",
                "nix-command",
                "store",
                "sign",
                "--key-file",
            ])
            .arg(&self.secret_key)
            .arg("--store")
            .arg(self.url())
            .arg("-r")
            .arg(path));
    }

    /// The narinfo text of a store path.
    pub fn narinfo(&self, path: &str) -> String {
        let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
        std::fs::read_to_string(self.dir.join(format!("{hash}.narinfo"))).unwrap()
    }
}

/// The closure of `path`, toplevel included.
pub fn closure(path: &str) -> Vec<String> {
    run(Command::new("nix-store").args(["-qR", path]))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Deletes `paths` from the local store (they must have no GC roots).
pub fn delete(paths: &[String]) {
    // keep-outputs off for this command: a nix.conf with keep-outputs = true
    // would keep the fixtures' fresh builds alive.
    run(Command::new("nix-store")
        .args(["--delete", "--option", "keep-outputs", "false"])
        .args(paths));
}

/// Builds a store path holding an executable `bin/<name>` with the given
/// shell `body`; returns the path of the executable.
pub fn build_script(dir: &Path, name: &str, seed: &str, body: &str) -> String {
    let expr = format!(
        r#"derivation {{
  name = "{name}-{seed}";
  system = builtins.currentSystem;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''
    mkdir -p $out/bin
    cat > $out/bin/{name} <<'SCRIPT'
#!/bin/sh
{body}
SCRIPT
    chmod +x $out/bin/{name}
  '' ];
}}"#
    );
    let file = dir.join(format!("{name}-{seed}.nix"));
    std::fs::write(&file, expr).unwrap();
    let out = run(nix_build().arg(&file));
    format!("{out}/bin/{name}")
}

/// How a fake system's switch-to-configuration behaves.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Record the call, point /run/current-system here, exit 0.
    Succeed,
    /// Record the call and exit with this code without switching.
    Exit(i32),
    /// Point /run/current-system here, then exit 100 (reboot required).
    RebootRequired,
    /// Sleep this many seconds, then succeed.
    Slow(u32),
    /// Switch, and start a unit (`broken-<seed>.service`) that fails at once,
    /// as a bad service in a new configuration would.
    StartsFailingUnit,
    /// Switch, and change ferry-agent's own unit file (as a new agent
    /// package would), then reload systemd.
    UpdatesAgentUnit,
    /// Run this activation (shell text inside the build's here-document:
    /// `\$` for run-time variables, `${/path}` to put a file in the
    /// closure), then switch as `Succeed` does; it may `exit` early instead.
    Activation(&'static str),
}

/// Builds a fake NixOS toplevel: `bin/switch-to-configuration` behaving as
/// asked (every call appends `<action> <toplevel>` to /run/ferry-test/switch.log),
/// `nixos-version`, `kernel`/`initrd`/`kernel-modules` symlinks into a shared
/// kernel path (so the kernel is equal unless `kernel_seed` differs), and a
/// dependency chain of `depth` paths.
pub fn build_system(
    dir: &Path,
    host: &str,
    seed: &str,
    behaviour: Behaviour,
    kernel_seed: &str,
    depth: usize,
) -> String {
    let act = match behaviour {
        Behaviour::Succeed => "ln -sfn \"\\$top\" /run/current-system; exit 0".to_owned(),
        Behaviour::Exit(code) => format!("exit {code}"),
        Behaviour::RebootRequired => "ln -sfn \"\\$top\" /run/current-system; exit 100".to_owned(),
        Behaviour::StartsFailingUnit => format!(
            "ln -sfn \"\\$top\" /run/current-system; systemd-run --quiet --unit=broken-{seed} /bin/false; sleep 1; exit 0"
        ),
        Behaviour::UpdatesAgentUnit => format!(
            "ln -sfn \"\\$top\" /run/current-system; echo '# {seed}' >> /etc/systemd/system/ferry-agent.service; systemctl daemon-reload; exit 0"
        ),
        Behaviour::Slow(secs) => format!("sleep {secs}; ln -sfn \"\\$top\" /run/current-system; exit 0"),
        Behaviour::Activation(script) => format!("{script}\nln -sfn \"\\$top\" /run/current-system; exit 0"),
    };
    let expr = format!(
        r#"
let
  mk = name: deps: derivation {{
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo {seed} ${{toString deps}} > $out" ];
  }};
  chain = n: if n == 0 then [] else [ (mk "dep-{seed}-${{toString n}}" (chain (n - 1))) ];
  kernel = derivation {{
    name = "linux-{kernel_seed}";
    system = builtins.currentSystem;
    PATH = "/usr/bin:/bin";
    builder = "/bin/sh";
    args = [ "-c" "mkdir -p $out/lib/modules; echo {kernel_seed} > $out/bzImage; echo {kernel_seed} > $out/initrd" ];
  }};
in derivation {{
  name = "nixos-system-{host}-{seed}";
  system = builtins.currentSystem;
  PATH = "/usr/bin:/bin";
  deps = chain {depth};
  builder = "/bin/sh";
  args = [ "-c" ''
    mkdir -p $out/bin
    echo "$deps" > $out/deps
    ln -s ${{kernel}}/bzImage $out/kernel
    ln -s ${{kernel}}/initrd $out/initrd
    ln -s ${{kernel}}/lib/modules $out/kernel-modules
    echo 25.11-{seed} > $out/nixos-version
    cat > $out/bin/switch-to-configuration <<SCRIPT
#!/bin/sh
top=$out
mkdir -p /run/ferry-test
echo "\$1 \$top" >> /run/ferry-test/switch.log
{act}
SCRIPT
    chmod +x $out/bin/switch-to-configuration
  '' ];
}}"#
    );
    let file = dir.join(format!("system-{host}-{seed}.nix"));
    std::fs::write(&file, expr).unwrap();
    run(nix_build().arg(&file))
}
