//! git's smart HTTP protocol under libgit2, carried by reqwest over rustls, so
//! the agent needs no OpenSSL: one TLS stack (the forge client's), trusting
//! the host's CA store (NixOS `security.pki`) and Mozilla's roots. libgit2 still
//! speaks the git protocol; this module only moves its bytes: a GET of
//! `info/refs` for the ref advertisement, one POST to `git-upload-pack` per
//! negotiation round. Pushing is not supported (the agent never pushes).
//!
//! The token for a call is passed down on the calling thread ([`with_token`]),
//! since libgit2 calls the transport synchronously on that thread; it is sent
//! as HTTP Basic `x-access-token:TOKEN` (what GitHub, Gitea/Forgejo and GitLab
//! accept) and never appears in a message.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use reqwest::header::HeaderValue;
use zeroize::Zeroizing;

use crate::io::git::limits::{
    connect_timeout, current_deadline, past_deadline, LS_TIMEOUT, MAX_ADVERTISEMENT_BYTES, PACK_TIMEOUT,
};

thread_local! {
    static TOKEN: RefCell<Option<Zeroizing<String>>> = const { RefCell::new(None) };
}

static CLIENT: OnceLock<Result<reqwest::blocking::Client, String>> = OnceLock::new();

/// Routes libgit2's `http://` and `https://` remotes through this module.
/// Idempotent; call before the first remote operation.
pub fn install() -> Result<(), git2::Error> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            for scheme in ["http", "https"] {
                // SAFETY: git2 requires registration to be synchronised with
                // the creation of transports; the OnceLock runs it exactly
                // once, before this process makes any remote connection
                // (Source calls it before connecting).
                #[allow(unsafe_code)]
                unsafe {
                    git2::transport::register(scheme, |remote| {
                        Transport::smart(remote, true, HttpSubtransport::default())
                    })
                    .map_err(|e| e.message().to_owned())?;
                }
            }
            Ok(())
        })
        .clone()
        .map_err(|m| git2::Error::from_str(&m))
}

/// Runs `f` (libgit2 remote calls) with `token` offered to HTTP remotes.
pub fn with_token<T>(token: Option<Zeroizing<String>>, f: impl FnOnce() -> T) -> T {
    /// Puts the previous token back even if `f` panics.
    struct Restore(Option<Zeroizing<String>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            TOKEN.with(|t| *t.borrow_mut() = previous);
        }
    }
    let _restore = Restore(TOKEN.with(|t| t.replace(token)));
    f()
}

pub(crate) fn client() -> io::Result<&'static reqwest::blocking::Client> {
    CLIENT
        .get_or_init(|| {
            let connect = connect_timeout();
            reqwest::blocking::Client::builder()
                .user_agent(concat!("git/2.0 (ferry-agent/", env!("CARGO_PKG_VERSION"), ")"))
                .connect_timeout(connect)
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let from = attempt.previous().last().cloned();
                    let to = attempt.url().clone();
                    match from {
                        _ if attempt.previous().len() > 5 => attempt.error("too many redirects"),
                        Some(from) if !redirect_allowed(&from, &to) => attempt.error(format!(
                            "redirected from {from} to {to}, another host, port or scheme: set source.url to where the repository is"
                        )),
                        _ => attempt.follow(),
                    }
                }))
                .build()
                .map_err(|e| format!("cannot set up HTTPS: {e}"))
        })
        .as_ref()
        .map_err(|m| io::Error::other(m.clone()))
}

/// One remote connection. Remembers where the ref advertisement was finally
/// served from, so the negotiation POSTs follow a (same-host) redirect, as
/// git does.
#[derive(Default)]
struct HttpSubtransport {
    redirected: Mutex<Option<String>>,
}

const LS_SUFFIX: &str = "/info/refs?service=git-upload-pack";

impl SmartSubtransport for HttpSubtransport {
    fn action(&self, url: &str, action: Service) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let mut url = url.trim_end_matches('/').to_owned();
        if action == Service::UploadPack {
            if let Some(base) = self.redirected.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                url = base;
            }
        }
        let auth = TOKEN
            .with(|t| t.borrow().as_ref().map(|token| basic_auth(token)))
            .transpose()?;
        match action {
            Service::UploadPackLs => {
                let (timeout, limit) = time_left(LS_TIMEOUT).map_err(to_git)?;
                let mut request = client()
                    .map_err(to_git)?
                    .get(format!("{url}{LS_SUFFIX}"))
                    .timeout(timeout);
                if let Some(auth) = &auth {
                    request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
                }
                let response = request.send().map_err(|e| to_git(request_error(e, limit)))?;
                let response = check(
                    response,
                    "application/x-git-upload-pack-advertisement",
                    auth.is_some(),
                )
                .map_err(to_git)?;
                let served_from = response.url().as_str();
                if let Some(base) = served_from.strip_suffix(LS_SUFFIX).filter(|b| *b != url) {
                    *self.redirected.lock().unwrap_or_else(|e| e.into_inner()) = Some(base.to_owned());
                }
                Ok(Box::new(Advertisement {
                    response,
                    read: 0,
                    limit,
                }))
            }
            Service::UploadPack => Ok(Box::new(UploadPack {
                url,
                auth,
                request: Vec::new(),
                response: None,
                limit: PACK_TIMEOUT,
            })),
            Service::ReceivePackLs | Service::ReceivePack => {
                Err(git2::Error::from_str("ferry-agent only fetches; it never pushes"))
            }
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// The ref advertisement, read as it arrives, and refused with the limit's
/// name past [`MAX_ADVERTISEMENT_BYTES`].
struct Advertisement {
    response: reqwest::blocking::Response,
    read: u64,
    /// The operation's deadline, for the message when the body runs past it.
    limit: Duration,
}

impl Read for Advertisement {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = MAX_ADVERTISEMENT_BYTES - self.read;
        if left == 0 {
            return Err(io::Error::other(format!(
                "the ref advertisement exceeded {MAX_ADVERTISEMENT_BYTES} bytes: not a deploy repository, or a hostile server"
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self
            .response
            .read(&mut buf[..want])
            .map_err(|e| body_error(e, self.limit))?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Write for Advertisement {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("the ref advertisement takes no request body"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One negotiation round: libgit2 writes the whole request, then reads; the
/// POST is sent at the first read.
struct UploadPack {
    url: String,
    auth: Option<HeaderValue>,
    request: Vec<u8>,
    response: Option<reqwest::blocking::Response>,
    /// The operation's deadline, once the request is sent.
    limit: Duration,
}

impl Write for UploadPack {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.response.is_some() {
            return Err(io::Error::other(
                "git-upload-pack request written after its response",
            ));
        }
        self.request.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for UploadPack {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            let (timeout, limit) = time_left(PACK_TIMEOUT)?;
            self.limit = limit;
            let mut request = client()?
                .post(format!("{}/git-upload-pack", self.url))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-git-upload-pack-request",
                )
                .header(reqwest::header::ACCEPT, "application/x-git-upload-pack-result")
                .timeout(timeout)
                .body(std::mem::take(&mut self.request));
            if let Some(auth) = &self.auth {
                request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
            }
            let response = request.send().map_err(|e| request_error(e, limit))?;
            self.response = Some(check(
                response,
                "application/x-git-upload-pack-result",
                self.auth.is_some(),
            )?);
        }
        let limit = self.limit;
        self.response
            .as_mut()
            .expect("sent above")
            .read(buf)
            .map_err(|e| body_error(e, limit))
    }
}

/// Accepts a 200 with git's content type; names everything else plainly (the
/// caller names the remote).
fn check(
    response: reqwest::blocking::Response,
    content_type: &str,
    had_token: bool,
) -> io::Result<reqwest::blocking::Response> {
    let status = response.status();
    let fail = |what: String| Err(io::Error::other(format!("HTTP {}: {what}", status.as_u16())));
    match status.as_u16() {
        200 => {}
        401 | 403 if had_token => return fail("the token in source.token_file was refused".into()),
        401 | 403 => return fail("the repository needs a token: set source.token_file".into()),
        404 => return fail("no git repository there (check source.url)".into()),
        _ => return fail(status.canonical_reason().unwrap_or("unexpected status").into()),
    }
    let got = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !got.starts_with(content_type) {
        return Err(io::Error::other(format!(
            "not a smart git HTTP server (content type `{got}`, expected `{content_type}`): serve the repository with git http-backend or a forge"
        )));
    }
    Ok(response)
}

/// What is left of the operation's deadline (`git_daemon::with_deadline`,
/// or `default` from now when none was set) as a request timeout, which
/// bounds the body too, and the deadline's length; an error once it passed.
pub(crate) fn time_left(default: Duration) -> io::Result<(Duration, Duration)> {
    let Some((deadline, limit)) = current_deadline() else {
        return Ok((default, default));
    };
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            past_deadline("HTTP", limit),
        ));
    }
    Ok((left, limit))
}

/// A body that stopped: past the deadline, said so.
pub(crate) fn body_error(e: io::Error, limit: Duration) -> io::Error {
    let timed_out = e.kind() == io::ErrorKind::TimedOut
        || std::iter::successors(Some(&e as &dyn std::error::Error), |s| s.source()).any(|s| {
            s.downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_timeout)
        });
    if timed_out {
        io::Error::new(io::ErrorKind::TimedOut, past_deadline("HTTP", limit))
    } else {
        e
    }
}

pub(crate) fn request_error(e: reqwest::Error, limit: Duration) -> io::Error {
    let what = if e.is_timeout() {
        past_deadline("HTTP", limit)
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    // The innermost cause names what happened (DNS, TLS, refused).
    let mut cause = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    io::Error::other(format!("{what} ({cause})"))
}

/// Redirects stay on the same host and port and never go from HTTPS to plain
/// HTTP: the token is sent with every request, so it must not travel to a
/// server the configuration did not name, nor in clear.
fn redirect_allowed(from: &reqwest::Url, to: &reqwest::Url) -> bool {
    // Same origin only. Even http→https is refused: reqwest drops the
    // Authorization header on a port change, so the redirected request would
    // fail as "token refused" after the token had already gone out in clear.
    to.scheme() == from.scheme()
        && to.host_str() == from.host_str()
        && to.port_or_known_default() == from.port_or_known_default()
}

/// `Authorization: Basic x-access-token:TOKEN`, marked sensitive so the HTTP
/// stack never shows it.
pub(crate) fn basic_auth(token: &str) -> Result<HeaderValue, git2::Error> {
    let userpass = Zeroizing::new(format!("x-access-token:{token}"));
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(userpass.as_bytes()));
    let header = Zeroizing::new(format!("Basic {}", encoded.as_str()));
    let mut value = HeaderValue::from_str(&header).map_err(|_| {
        git2::Error::from_str("the token in source.token_file is not valid in an HTTP header")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn to_git(e: io::Error) -> git2::Error {
    git2::Error::from_str(&e.to_string())
}

#[cfg(test)]
mod tests {
    use super::redirect_allowed;

    #[test]
    fn redirects_stay_on_the_named_host_and_never_downgrade() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let from = url("https://git.example.com/ops/deploy");
        assert!(redirect_allowed(
            &from,
            &url("https://git.example.com/ops/deploy.git/info/refs")
        ));
        assert!(!redirect_allowed(
            &from,
            &url("https://evil.example.net/ops/deploy.git/info/refs")
        ));
        assert!(!redirect_allowed(
            &from,
            &url("http://git.example.com/ops/deploy.git/info/refs")
        ));
        assert!(!redirect_allowed(
            &from,
            &url("https://git.example.com:8443/ops/deploy.git")
        ));
        assert!(!redirect_allowed(
            &url("http://git.example.com/ops/deploy"),
            &url("https://git.example.com/ops/deploy")
        ));
    }
}
