//! nginx serving a binary cache directory the way a private cache is served
//! in production: behind HTTP Basic auth (what a netrc answers) or a bearer
//! token (Attic, Cachix), optionally redirecting narinfo requests to a
//! second, open server on another port and host name (as caches send
//! clients to a CDN); or a caching proxy in front of another server, as a
//! CDN stands in front of a static mirror ([`Nginx::cache_in_front`]).
//! Every request a server receives is logged, with its `Authorization`
//! header and the bytes each way, so a test sees what was sent where.
//!
//! The executable is an `nginx` on `PATH`, or the one `scripts/install-deps`
//! unpacks into `/var/lib/ferry-test/nginx` (`FERRY_TEST_NGINX`). It runs
//! in the foreground as one process, with its own prefix, configuration,
//! logs and temporary files in a temporary directory: nothing of a system
//! nginx (`/etc/nginx`, port 80, its service) is read or touched.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Who the cache server lets in.
#[derive(Debug, Clone)]
pub enum Access {
    /// Everyone (a public cache).
    Anyone,
    /// HTTP Basic with this user and password (an htpasswd file); 401
    /// otherwise.
    Basic { user: String, password: String },
    /// `Authorization: Bearer <token>`; 401 otherwise, and 403 for
    /// `forbidden`, a valid token that may not read this cache.
    Bearer {
        token: String,
        forbidden: Option<String>,
    },
}

/// Why nginx could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("nginx is not installed (not on PATH, not in {dir}): run scripts/install-deps")]
    NotInstalled { dir: PathBuf },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
}

/// One request as nginx logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The port it arrived on ([`Nginx::port`] or [`Nginx::mirror_port`]).
    pub port: u16,
    pub method: String,
    pub target: String,
    pub status: u16,
    /// Bytes of the answer, headers included (`$bytes_sent`), and of the
    /// request (`$request_length`).
    pub bytes_sent: u64,
    pub request_length: u64,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// A running nginx; stopped (and its directory removed) on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    /// The cache's port, on 127.0.0.1.
    pub port: u16,
    /// The open mirror's port, on 127.0.0.2: another host, so another
    /// origin (an address rather than a name such as `localhost`, which a
    /// minimal system without `/etc/hosts` cannot resolve).
    pub mirror_port: u16,
}

/// The nginx executable the tests use.
pub fn executable() -> Result<PathBuf, NginxError> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let dir = std::env::var_os("FERRY_TEST_NGINX")
        .map_or_else(|| PathBuf::from("/var/lib/ferry-test/nginx"), PathBuf::from);
    on_path
        .into_iter()
        .chain([dir.join("usr/sbin/nginx")])
        .find(|p| p.is_file())
        .ok_or(NginxError::NotInstalled { dir })
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NginxError {
    let what = what.into();
    move |source| NginxError::Io { what, source }
}

/// An htpasswd line for `user` with an Apache MD5 hash from the `openssl` CLI.
fn htpasswd(user: &str, password: &str) -> Result<String, NginxError> {
    let out = Command::new("openssl")
        .args(["passwd", "-apr1", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(password.as_bytes())?;
            child.wait_with_output()
        })
        .map_err(io(
            "running openssl passwd (scripts/install-deps installs openssl)",
        ))?;
    if !out.status.success() {
        return Err(NginxError::Failed {
            what: "openssl passwd".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(format!(
        "{user}:{}\n",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

/// An nginx string literal (for tokens in the configuration).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Nginx {
    /// Serves the binary cache directory `root` to those `access` lets in;
    /// narinfo requests are answered with a redirect to the mirror if
    /// `redirect_narinfos`. The mirror serves `root` to anyone.
    pub fn serve(root: &Path, access: &Access, redirect_narinfos: bool) -> Result<Self, NginxError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-nginx")
            .tempdir()
            .map_err(io("creating nginx's directory"))?;
        let d = dir.path();
        for sub in ["tmp", "logs"] {
            std::fs::create_dir(d.join(sub)).map_err(io(format!("creating {}", d.join(sub).display())))?;
        }
        let (port, mirror_port) = (crate::free_port(), crate::free_port());
        let guard = match access {
            Access::Anyone => String::new(),
            Access::Basic { user, password } => {
                let file = d.join("htpasswd");
                std::fs::write(&file, htpasswd(user, password)?).map_err(io("writing htpasswd"))?;
                format!(
                    "auth_basic \"binary cache\";\n      auth_basic_user_file {};\n",
                    file.display()
                )
            }
            Access::Bearer { token, forbidden } => {
                let forbidden = forbidden
                    .as_deref()
                    .map(|f| {
                        format!(
                            "if ($http_authorization = {}) {{ return 403; }}\n      ",
                            quoted(&format!("Bearer {f}"))
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "{forbidden}if ($http_authorization != {}) {{ return 401; }}\n",
                    quoted(&format!("Bearer {token}"))
                )
            }
        };
        let redirect = if redirect_narinfos {
            // try_files runs after the access check, so only those let in
            // are sent on.
            format!(
                "location ~ \\.narinfo$ {{\n      {guard}      try_files /.ferry-never @mirror;\n    }}\n    \
                 location @mirror {{ return 302 http://127.0.0.2:{mirror_port}$request_uri; }}\n    "
            )
        } else {
            String::new()
        };
        let servers = format!(
            r#"  server {{
    listen 127.0.0.1:{port};
    root {root};
    {redirect}    location / {{
      {guard}    }}
  }}
  server {{
    listen 127.0.0.2:{mirror_port};
    root {root};
  }}
"#,
            root = root.display(),
        );
        Self::launch(dir, &servers, "", port, mirror_port)
    }

    /// A caching proxy in front of `origin` (an `http://host:port` URL), as
    /// a CDN stands in front of a static mirror: answers kept
    /// `lifetime_secs`, revalidated with the origin after, one request to
    /// the origin at a time per file, and conditional requests answered
    /// from the cache. Its log shows what clients asked of the edge; the
    /// origin's log what reached the origin.
    pub fn cache_in_front(origin: &str, lifetime_secs: u64) -> Result<Self, NginxError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-nginx-edge")
            .tempdir()
            .map_err(io("creating nginx's directory"))?;
        for sub in ["tmp", "logs", "cache"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path).map_err(io(format!("creating {}", path.display())))?;
        }
        let (port, mirror_port) = (crate::free_port(), crate::free_port());
        let cache = dir.path().join("cache");
        let extra = format!(
            "  proxy_cache_path {} levels=1:2 keys_zone=edge:1m max_size=256m inactive=1h use_temp_path=off;\n",
            cache.display()
        );
        let servers = format!(
            r#"  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass {origin};
      proxy_cache edge;
      proxy_cache_valid 200 {lifetime_secs}s;
      proxy_cache_revalidate on;
      proxy_cache_lock on;
    }}
  }}
  server {{
    listen 127.0.0.2:{mirror_port};
    return 404;
  }}
"#
        );
        Self::launch(dir, &servers, &extra, port, mirror_port)
    }

    /// A plain proxy in front of `origin` (an `http://host:port` URL) that
    /// keeps nothing and passes the client's `Host` on, so requests signed
    /// for the proxy's address (SigV4 signs the host) still verify at the
    /// origin; its log shows every request that went through.
    pub fn log_in_front(origin: &str) -> Result<Self, NginxError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-nginx-proxy")
            .tempdir()
            .map_err(io("creating nginx's directory"))?;
        for sub in ["tmp", "logs"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path).map_err(io(format!("creating {}", path.display())))?;
        }
        let (port, mirror_port) = (crate::free_port(), crate::free_port());
        let servers = format!(
            r#"  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass {origin};
      proxy_set_header Host $http_host;
      proxy_buffering off;
    }}
  }}
  server {{
    listen 127.0.0.2:{mirror_port};
    return 404;
  }}
"#
        );
        Self::launch(dir, &servers, "", port, mirror_port)
    }

    /// Writes the configuration (`servers` and `extra` http-level lines
    /// around the shared settings), starts nginx and waits until both
    /// ports listen.
    fn launch(
        dir: tempfile::TempDir,
        servers: &str,
        extra: &str,
        port: u16,
        mirror_port: u16,
    ) -> Result<Self, NginxError> {
        let d = dir.path();
        let tmp = d.join("tmp");
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {error_log} warn;
events {{ worker_connections 512; }}
http {{
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  default_type application/octet-stream;
  types {{ text/x-nix-narinfo narinfo; }}
  keepalive_requests 100000;
  log_format seen '$server_port $request_method $status $bytes_sent $request_length $request_uri "$http_authorization"';
  access_log {access_log} seen;
{extra}{servers}}}
"#,
            pid = d.join("logs/nginx.pid").display(),
            error_log = d.join("logs/error.log").display(),
            access_log = d.join("logs/access.log").display(),
            tmp = tmp.display(),
        );
        let conf_file = d.join("nginx.conf");
        std::fs::write(&conf_file, conf).map_err(io("writing nginx.conf"))?;
        let child = Command::new(executable()?)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf_file)
            .arg("-e")
            .arg(d.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting nginx"))?;
        let mut nginx = Self {
            child,
            dir,
            port,
            mirror_port,
        };
        nginx.wait_until_listening()?;
        Ok(nginx)
    }

    fn wait_until_listening(&mut self) -> Result<(), NginxError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for address in self.addresses() {
            while TcpStream::connect(address).is_err() {
                let exited = self.child.try_wait().map_err(io("waiting for nginx"))?;
                if exited.is_some() || Instant::now() > deadline {
                    let log =
                        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default();
                    return Err(NginxError::Failed {
                        what: format!("starting nginx on ports {} and {}", self.port, self.mirror_port),
                        detail: match exited {
                            Some(status) => format!("it exited ({status}): {}", log.trim()),
                            None => format!("not listening after 20 s: {}", log.trim()),
                        },
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Where the cache and the mirror listen.
    fn addresses(&self) -> [(&'static str, u16); 2] {
        [("127.0.0.1", self.port), ("127.0.0.2", self.mirror_port)]
    }

    /// The cache's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx's process (one: no master, one worker), for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The mirror's URL, as the redirects name it.
    pub fn mirror_url(&self) -> String {
        format!("http://127.0.0.2:{}", self.mirror_port)
    }

    /// Every request logged so far, on both servers, oldest first. A marker
    /// request to each server is answered first, so everything answered
    /// before this call is in the log.
    pub fn requests(&self) -> Vec<Logged> {
        // One marker per call: an earlier call's markers prove nothing.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("/ferry-log-marker-{}-{call}", std::process::id());
        let addresses = self.addresses();
        for address in &addresses {
            if let Ok(mut s) = TcpStream::connect(address) {
                let _ = write!(s, "GET {marker} HTTP/1.0\r\n\r\n");
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        let log = self.dir.path().join("logs/access.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<Logged> = text.lines().filter_map(parse_line).collect();
            let markers = lines.iter().filter(|l| l.target == marker).count();
            if markers >= addresses.len() || Instant::now() > deadline {
                return lines
                    .into_iter()
                    .filter(|l| !l.target.starts_with("/ferry-log-marker-"))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `PORT METHOD STATUS SENT RECEIVED TARGET "AUTHORIZATION"` (nginx writes
/// `-` for none).
fn parse_line(line: &str) -> Option<Logged> {
    let mut words = line.splitn(7, ' ');
    let port = words.next()?.parse().ok()?;
    let method = words.next()?.to_owned();
    let status = words.next()?.parse().ok()?;
    let bytes_sent = words.next()?.parse().ok()?;
    let request_length = words.next()?.parse().ok()?;
    let target = words.next()?.to_owned();
    let authorization = words.next()?.strip_prefix('"')?.strip_suffix('"')?;
    Some(Logged {
        port,
        method,
        target,
        status,
        bytes_sent,
        request_length,
        authorization: (authorization != "-").then(|| authorization.to_owned()),
    })
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_read_with_and_without_authorization() {
        assert_eq!(
            parse_line(r#"8080 GET 401 345 120 /abc.narinfo "Bearer x y""#),
            Some(Logged {
                port: 8080,
                method: "GET".into(),
                target: "/abc.narinfo".into(),
                status: 401,
                bytes_sent: 345,
                request_length: 120,
                authorization: Some("Bearer x y".into()),
            })
        );
        assert_eq!(
            parse_line(r#"1 HEAD 200 10 20 /nix-cache-info "-""#)
                .unwrap()
                .authorization,
            None
        );
        assert_eq!(parse_line("garbage"), None);
    }
}
