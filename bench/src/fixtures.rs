//! The real parts the figures run against, all on loopback: `git daemon`
//! serving deploy repositories, a signed Nix binary cache built with
//! `nix-build` and served over HTTP, the release key and `allowed_signers`.
//! Every server is a child process killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};
use ferry_signer::keys::{SigningKey, Unlock};
use ferry_signer::publish::{self, ReleaseChanges};
use ferry_signer::{AllowedSigners, HostEntry, HostName};
use ferry_test_support::{free_port, wait_for_port};

/// Runs `cmd`, failing with its stderr; returns trimmed stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `git` with no user or system configuration and a fixed identity.
pub fn git_cmd() -> Command {
    ferry_test_support::git_command(Path::new("/dev/null"), "bench", "bench@example.com")
}

pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    run(git_cmd().arg("-C").arg(dir).args(args))
}

/// A child process killed (and reaped) on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git daemon` exporting every repository under `base` over git://.
pub fn git_daemon(base: &Path) -> Result<Server> {
    let port = free_port();
    // git-daemon itself, not the `git daemon` wrapper, so that killing it
    // leaves nothing behind.
    let exec_path = run(git_cmd().arg("--exec-path"))?;
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start git-daemon")?;
    let server = Server { child, port };
    wait_for_port(port)?;
    Ok(server)
}

/// A static HTTP/1.1 file server for a binary cache directory, on threads
/// of this process. Python's `http.server` (what the agent's tests use) is
/// not fit for timing: its listen backlog of 5 drops the connections of a
/// client with 32 requests in flight, which then wait a second for the SYN
/// to be resent; real caches (nginx, S3) keep connections alive and queue.
pub struct HttpServer {
    pub port: u16,
}

pub fn http_server(dir: &Path) -> Result<HttpServer> {
    let root = dir.to_owned();
    http_server_with(move |target| {
        let rel = target.split('?').next().unwrap_or("").trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return None;
        }
        std::fs::read(root.join(rel)).ok().map(|body| (Vec::new(), body))
    })
}

/// An answer: extra headers and the body; `None` is a 404.
pub type Answer = Option<(Vec<(String, String)>, Vec<u8>)>;

/// A keep-alive HTTP/1.1 server answering GET and HEAD with `answer(target)`.
pub fn http_server_with(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Result<HttpServer> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || serve(stream, &*answer));
        }
    });
    Ok(HttpServer { port })
}

/// Answers GET and HEAD requests on one connection until the client closes it.
fn serve(stream: std::net::TcpStream, answer: &dyn Fn(&str) -> Answer) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = std::io::BufWriter::new(write_half);
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut close = line.ends_with("HTTP/1.0\r\n");
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if header.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let target = parts.next().unwrap_or("/");
        let written = match answer(target) {
            Some((headers, b)) => {
                let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}\r\n",
                    b.len()
                )
                .and_then(|()| {
                    if method == "HEAD" {
                        Ok(())
                    } else {
                        out.write_all(&b)
                    }
                })
            }
            None => write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if written.and_then(|()| out.flush()).is_err() || close {
            return;
        }
    }
}

/// The release key (an unencrypted OpenSSH ed25519 key made by ssh-keygen,
/// so no key derivation is timed) and the `allowed_signers` pinning it.
pub struct ReleaseKey {
    pub path: PathBuf,
    pub key: SigningKey,
    pub allowed_signers_file: PathBuf,
    pub signers: AllowedSigners,
}

impl ReleaseKey {
    pub fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("release-key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
            .arg(&path))?;
        let key = SigningKey::load(&path, &Unlock::default())?;
        let allowed_signers_file = dir.join("allowed_signers");
        std::fs::write(
            &allowed_signers_file,
            format!("{}\n", key.allowed_signers_line("bench@example.com")),
        )?;
        let signers = AllowedSigners::load(&allowed_signers_file)?;
        Ok(Self {
            path,
            key,
            allowed_signers_file,
            signers,
        })
    }

    /// Publishes a release on `branch` of the bare repository at `repo`.
    pub fn publish(&self, repo: &Path, changes: &ReleaseChanges) -> Result<git2::Oid> {
        let repository = git2::Repository::open_bare(repo)?;
        Ok(publish::publish(&repository, BRANCH, &self.key, changes, None, chrono::Utc::now())?.commit)
    }
}

/// The deploy branch every fixture uses.
pub const BRANCH: &str = "deploy";

/// An empty bare repository at `path`.
pub fn bare_repo(path: &Path) -> Result<()> {
    run(git_cmd().args(["init", "-q", "--bare", "-b", "main"]).arg(path))?;
    Ok(())
}

/// `n` hosts `h00000`…, each with a distinct (fake) toplevel; `salt` changes
/// every toplevel.
pub fn hosts(n: usize, salt: u32) -> ReleaseChanges {
    let mut changes = ReleaseChanges {
        replace_hosts: true,
        ..Default::default()
    };
    for i in 0..n {
        changes.hosts.insert(host_name(i), fake_entry(i, salt));
    }
    changes
}

pub fn host_name(i: usize) -> HostName {
    format!("h{i:05}").parse().expect("valid host name")
}

/// A syntactically valid toplevel that is not in any store.
pub fn fake_entry(i: usize, salt: u32) -> HostEntry {
    const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut x = (i as u64) << 32 | u64::from(salt);
    let hash: String = (0..32)
        .map(|_| {
            // xorshift: deterministic, well spread.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            NIX32[(x % 32) as usize] as char
        })
        .collect();
    HostEntry {
        toplevel: format!("/nix/store/{hash}-nixos-system-h{i:05}-25.11")
            .parse()
            .expect("valid store path"),
        action: ferry_signer::Action::Switch,
    }
}

/// Nix fixtures: fake systems built from plain derivations, a signed cache.
pub mod nix {
    use super::*;

    /// Builds `expr` (a Nix file's text) and returns the output path.
    pub fn build(dir: &Path, name: &str, expr: &str) -> Result<String> {
        let file = dir.join(format!("{name}.nix"));
        std::fs::write(&file, expr)?;
        run(Command::new("nix-build")
            .args(["--no-out-link", "--quiet", "--option", "substituters", ""])
            .args(["--option", "sandbox", "false"]) // the builder is the machine's /bin/sh
            .args(["--max-jobs", &cores().to_string()])
            .arg(&file))
    }

    /// A fake toplevel over a closure of `layers × width + 1` paths: each
    /// path references three of the layer below, the toplevel the whole top
    /// layer (wide and shallow, the shape of a NixOS closure).
    pub fn closure_expr(seed: &str, layers: usize, width: usize) -> String {
        format!(
            r#"
let
  W = {width};
  mk = name: deps: derivation {{
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo {seed} ${{toString deps}} > $out" ];
  }};
  wrap = i: i - (i / W) * W;
  layer = l:
    if l == 0 then builtins.genList (i: mk "p-{seed}-0-${{toString i}}" []) W
    else
      let below = layer (l - 1);
      in builtins.genList (i: mk "p-{seed}-${{toString l}}-${{toString i}}" [
        (builtins.elemAt below i)
        (builtins.elemAt below (wrap (i + 1)))
        (builtins.elemAt below (wrap (i * 7 + 3)))
      ]) W;
in derivation {{
  name = "nixos-system-bench-{seed}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  deps = layer ({layers} - 1);
  args = [ "-c" "echo $deps > $out" ];
}}"#
        )
    }

    /// The closure of `path`, `path` included.
    pub fn closure(path: &str) -> Result<Vec<String>> {
        Ok(run(Command::new("nix-store").args(["-qR", path]))?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Whether `path` is valid in the local store.
    pub fn is_valid(path: &str) -> bool {
        Command::new("nix-store")
            .args(["--check-validity", path])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Deletes whichever of `paths` are in the local store (unrooted).
    pub fn delete(paths: &[String]) -> Result<()> {
        run(Command::new("nix-store")
            .args(["--delete", "--ignore-liveness"])
            .args(paths))?;
        Ok(())
    }

    /// A signed binary cache in `dir/cache`, as docs/testing.md describes.
    pub struct Cache {
        pub dir: PathBuf,
        pub public_key: String,
        secret_key: PathBuf,
    }

    impl Cache {
        pub fn new(dir: &Path, name: &str) -> Result<Self> {
            let secret_key = dir.join("cache.sk");
            let public = dir.join("cache.pk");
            run(Command::new("nix-store")
                .arg("--generate-binary-cache-key")
                .arg(name)
                .arg(&secret_key)
                .arg(&public))?;
            Ok(Self {
                dir: dir.join("cache"),
                public_key: std::fs::read_to_string(&public)?.trim().to_owned(),
                secret_key,
            })
        }

        /// Copies the closure of `path` into the cache and signs it.
        pub fn push(&self, path: &str) -> Result<()> {
            let url = format!("file://{}", self.dir.display());
            run(Command::new("nix")
                .args(["--extra-experimental-features", "nix-command", "copy", "--to"])
                .arg(format!("{url}?compression=zstd"))
                .arg(path))?;
            run(Command::new("nix")
                .args(["--extra-experimental-features", "nix-command", "store", "sign"])
                .arg("--key-file")
                .arg(&self.secret_key)
                .args(["--store", &url, "-r", path]))?;
            Ok(())
        }
    }
}

/// Processor cores of this machine.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
