//! git's own protocol (`git://`, port 9418) under libgit2, replacing its
//! built-in transport so that it is bounded as HTTP is: each operation
//! (`remote_tip`'s ref advertisement, a whole fetch) has one total deadline,
//! not a timeout per read, and the ref advertisement a size cap, so a server
//! that drips bytes or advertises without end cannot hold or grow the agent.
//! libgit2 still speaks the protocol; this module connects and moves its
//! bytes, counting them and the time.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};

use crate::io::git::limits::{
    connect_timeout, current_deadline, past_deadline, MAX_ADVERTISEMENT_BYTES, MAX_FETCH_BYTES,
};

/// git's port.
const DEFAULT_PORT: u16 = 9418;

/// Routes libgit2's `git://` remotes through this module. Idempotent; call
/// before the first remote operation.
pub fn install() -> Result<(), git2::Error> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: as in `git_http::install`: registered exactly once,
            // before this process makes any remote connection.
            #[allow(unsafe_code)]
            unsafe {
                git2::transport::register("git", |remote| Transport::smart(remote, false, GitSubtransport))
                    .map_err(|e| e.message().to_owned())
            }
        })
        .clone()
        .map_err(|m| git2::Error::from_str(&m))
}

/// Resolves `host` within `left`. The system resolver cannot be cancelled,
/// so it runs on a thread of its own that is left to finish by itself when
/// the deadline passes first.
fn resolve(host: &str, port: u16, left: Duration, limit: Duration) -> io::Result<Vec<std::net::SocketAddr>> {
    resolve_with(host, port, left, limit, |host, port| {
        (host.as_str(), port).to_socket_addrs().map(Iterator::collect)
    })
}

fn resolve_with(
    host: &str,
    port: u16,
    left: Duration,
    limit: Duration,
    lookup: impl FnOnce(String, u16) -> io::Result<Vec<std::net::SocketAddr>> + Send + 'static,
) -> io::Result<Vec<std::net::SocketAddr>> {
    // An address needs no resolver, nor a thread to bound one.
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = host.to_owned();
    std::thread::Builder::new()
        .name("ferry-resolve".into())
        .spawn(move || {
            let _ = tx.send(lookup(owned, port));
        })?;
    match rx.recv_timeout(left) {
        Ok(answer) => answer.map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {host}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} (resolving {host})", past_deadline("git://", limit)),
        )),
    }
}

struct GitSubtransport;

impl SmartSubtransport for GitSubtransport {
    fn action(&self, url: &str, action: Service) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        match action {
            Service::UploadPackLs => Ok(Box::new(
                Connection::open(url).map_err(|e| git2::Error::from_str(&e.to_string()))?,
            )),
            // Stateful: libgit2 goes on with the stream of the advertisement.
            Service::UploadPack => Err(git2::Error::from_str("git:// negotiates on its first connection")),
            Service::ReceivePackLs | Service::ReceivePack => {
                Err(git2::Error::from_str("ferry-agent only fetches; it never pushes"))
            }
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// One `git-upload-pack` connection with its deadline and byte budgets.
struct Connection {
    stream: TcpStream,
    deadline: Instant,
    limit: Duration,
    /// Bytes read so far, and whether the client has spoken (after which the
    /// advertisement is over and the pack budget applies).
    read: u64,
    negotiating: bool,
}

impl Connection {
    fn open(url: &str) -> io::Result<Self> {
        let (deadline, limit) = current_deadline()
            .unwrap_or_else(|| (Instant::now() + Duration::from_secs(60), Duration::from_secs(60)));
        let parsed = reqwest::Url::parse(url).map_err(|e| io::Error::other(format!("{url}: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| io::Error::other(format!("{url} names no host")))?;
        let port = parsed.port().unwrap_or(DEFAULT_PORT);
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let mut last = io::Error::other(format!("{host} has no address"));
        let mut connected = None;
        let addrs = resolve(
            bare_host,
            port,
            deadline.saturating_duration_since(Instant::now()),
            limit,
        )?;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&addr, connect_timeout().min(left).max(Duration::from_millis(1)))
            {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream =
            connected.ok_or_else(|| io::Error::new(last.kind(), format!("cannot connect ({last})")))?;
        let mut connection = Connection {
            stream,
            deadline,
            limit,
            read: 0,
            negotiating: false,
        };
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let request = format!("git-upload-pack {}\0host={authority}\0", parsed.path());
        connection.send(format!("{:04x}{request}", request.len() + 4).as_bytes())?;
        Ok(connection)
    }

    /// The time left, or the error that says the deadline passed.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                past_deadline("git://", self.limit),
            ));
        }
        Ok(left)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write_all(bytes).map_err(|e| self.timed_out(e))
    }

    fn timed_out(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.left().err().unwrap_or(e),
            _ => e,
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let budget = if self.negotiating {
            MAX_FETCH_BYTES as u64 + MAX_ADVERTISEMENT_BYTES
        } else {
            MAX_ADVERTISEMENT_BYTES
        };
        if self.read >= budget {
            return Err(io::Error::other(if self.negotiating {
                format!("the git:// server sent more than {budget} bytes: fetch aborted")
            } else {
                format!("the ref advertisement exceeded {MAX_ADVERTISEMENT_BYTES} bytes: not a deploy repository, or a hostile server")
            }));
        }
        let left = self.left()?;
        self.stream.set_read_timeout(Some(left))?;
        quick_ack(&self.stream);
        let want = buf
            .len()
            .min(usize::try_from(budget - self.read).unwrap_or(usize::MAX));
        let n = loop {
            match self.stream.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(|e| self.timed_out(e))?,
            }
        };
        self.read += n as u64;
        Ok(n)
    }
}

/// Asks the kernel to acknowledge what arrives next at once. git's server
/// writes its answer to a negotiation round in several small writes; under
/// Nagle's algorithm it holds back the last of them until the first is
/// acknowledged, and Linux delays that acknowledgement by up to 40 ms while
/// this side has nothing to send: every fetch of a long branch paid it once
/// (50 ms against 8 ms for a 3-commit one). The setting lapses by itself, so
/// it is renewed before every read. Best effort: a kernel without it only
/// loses the 40 ms again.
fn quick_ack(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::net::sockopt::set_tcp_quickack(stream, true);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.negotiating = true;
        self.send(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that never answers (a DNS server dropping queries) is
    /// inside the operation's deadline, and the error says so.
    #[test]
    fn name_resolution_is_inside_the_deadline() {
        let (_keep, never) = std::sync::mpsc::channel::<()>();
        let never = std::sync::Mutex::new(never);
        let err = resolve_with(
            "git.example.com",
            DEFAULT_PORT,
            Duration::from_millis(50),
            Duration::from_secs(60),
            move |_, _| {
                let _ = never.lock().unwrap().recv();
                Ok(Vec::new())
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let err = err.to_string();
        assert!(
            err.contains("within 60s") && err.contains("resolving git.example.com"),
            "{err}"
        );
        // A resolver that answers is used.
        let addr: std::net::SocketAddr = "127.0.0.1:9418".parse().unwrap();
        let found = resolve_with(
            "localhost",
            DEFAULT_PORT,
            Duration::from_secs(60),
            Duration::from_secs(60),
            move |_, _| Ok(vec![addr]),
        )
        .unwrap();
        assert_eq!(found, [addr]);
        // An address is its own answer: the resolver is not asked.
        for (host, expected) in [("10.1.2.3", "10.1.2.3:9418"), ("[::1]", "[::1]:9418")] {
            let found = resolve_with(
                host,
                DEFAULT_PORT,
                Duration::from_secs(60),
                Duration::from_secs(60),
                |host, _| panic!("{host} was looked up"),
            )
            .unwrap();
            assert_eq!(found, [expected.parse().unwrap()]);
        }
    }
}
