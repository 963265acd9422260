//! The loopback binary cache the realise step reads from: for the length of
//! one `nix-store --realise`, the agent listens on `127.0.0.1:<random port>`
//! and relays each GET or HEAD under `/<n>/…` to substituter `n` with the
//! same client, the same credentials and the same redirect policy the
//! preflight used. Nix therefore fetches the closure the preflight checked,
//! from the same caches, without ever seeing a credential; it still checks
//! every signature against the pinned keys itself. It serves only the
//! objects of the closure it was started for (its narinfos and NARs, and
//! `nix-cache-info`): another local process reaching the port gets nothing
//! the realised store paths will not show it anyway. `file://` substituters
//! are handed to Nix as they are (there is nothing to authenticate).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use std::path::Path;

use ferry_signer::StorePath;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::io::cache::client::{BinaryCaches, CacheError, ClosureObjects, MAX_PREFETCH_NAR_BYTES};
use crate::io::cache::credentials::Loaded;
use crate::io::nix::{Store, StoreError};

/// A request head longer than this is refused (Nix sends a few hundred bytes).
const MAX_HEAD_BYTES: usize = 16 << 10;

/// The most bytes of NARs fetched ahead of Nix held at once.
const MAX_PREFETCHED_BYTES: usize = 32 << 20;

/// How many NARs are fetched ahead at once.
const PREFETCH_PARALLEL: usize = 8;

/// NARs fetched ahead of Nix's requests, by substituter and path; each is
/// taken out as it is served.
type Prefetched = Mutex<HashMap<(usize, String), Vec<u8>>>;

/// The relay: a running loopback cache serving one closure; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    substituters: Vec<String>,
    task: tokio::task::JoinHandle<()>,
    prefetch: tokio::task::JoinHandle<()>,
    prefetched: Arc<Prefetched>,
    failure: Arc<Mutex<Option<Failure>>>,
}

/// What the relay last saw go wrong upstream: in full, and in a status's
/// words.
#[derive(Debug, Clone)]
struct Failure {
    detail: String,
    summary: String,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub head: bool,
    /// The substituter's index.
    pub cache: usize,
    /// The path under it (`nix-cache-info`, `<hash>.narinfo`, `nar/…`).
    pub rest: String,
}

/// Reads a request line (`GET /SESSION/0/nar/x.nar.xz HTTP/1.1`) into a
/// route; the HTTP status to answer otherwise. Pure, so it is tested
/// without sockets.
pub fn route(request_line: &str, session: &str) -> Result<Route, u16> {
    let crate::io::http_line::RequestLine { head, path: target } = crate::io::http_line::parse(request_line)?;
    let Some(target) = target
        .strip_prefix('/')
        .and_then(|t| t.strip_prefix(session))
        .and_then(|t| t.strip_prefix('/'))
    else {
        return Err(404);
    };
    let Some((index, rest)) = target.split_once('/') else {
        return Err(404);
    };
    let cache: usize = index.parse().map_err(|_| 404u16)?;
    let safe = |c: char| c.is_ascii_alphanumeric() || "._-+=/".contains(c);
    if rest.is_empty()
        || !rest.chars().all(safe)
        || rest.starts_with('/')
        || rest
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(404);
    }
    Ok(Route {
        head,
        cache,
        rest: rest.to_owned(),
    })
}

impl Relay {
    /// Listens on a random loopback port and serves `caches` with
    /// `credentials` until dropped.
    pub async fn start(
        caches: BinaryCaches,
        credentials: Arc<Loaded>,
        objects: ClosureObjects,
    ) -> std::io::Result<Self> {
        let objects = Arc::new(objects);
        let prefetched: Arc<Prefetched> = Arc::default();
        let ahead = prefetched.clone();
        let prefetch = tokio::spawn(prefetch(
            caches.clone(),
            credentials.clone(),
            objects.clone(),
            prefetched.clone(),
        ));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        // Each relay's URLs are its own: Nix keeps what it learns of a
        // substituter (narinfos found and not found) by URL, so no later
        // relay, even on the same port, can be answered from an earlier
        // one's entries, and within a realise Nix may use them freely.
        let session = {
            let mut bytes = [0u8; 8];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let substituters = caches
            .substituters()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.starts_with("file://") {
                    s.clone()
                } else {
                    format!("http://127.0.0.1:{port}/{session}/{i}")
                }
            })
            .collect();
        let failure = Arc::new(Mutex::new(None));
        let recorded = failure.clone();
        let session: Arc<str> = session.into();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        // The head and the body are separate writes: without
                        // this, Nagle holds the body back until the client's
                        // delayed ACK of the head, up to 40 ms per request.
                        let _ = stream.set_nodelay(true);
                        let (caches, credentials, recorded) = (caches.clone(), credentials.clone(), recorded.clone());
                        let (objects, session, prefetched) = (objects.clone(), session.clone(), prefetched.clone());
                        connections.spawn(async move {
                            let served = Served { objects: &objects, prefetched: &prefetched };
                            if let Err(e) = serve(stream, &session, &caches, &credentials, served).await {
                                warn!("binary cache relay: {e}");
                                let failure = Failure { detail: e.to_string(), summary: e.summary() };
                                *recorded.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self {
            substituters,
            task,
            prefetch,
            prefetched: ahead,
            failure,
        })
    }

    /// The substituters to hand Nix, in the configured order.
    pub fn substituters(&self) -> &[String] {
        &self.substituters
    }

    /// How many NARs fetched ahead wait to be served.
    pub fn prefetched(&self) -> usize {
        self.prefetched.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The last upstream problem, if any (why Nix could not substitute).
    pub fn failure(&self) -> Option<String> {
        self.last_failure().map(|f| f.detail)
    }

    fn last_failure(&self) -> Option<Failure> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.prefetch.abort();
    }
}

/// What a relay answers from its own memory: the walk's narinfos, and the
/// NARs fetched ahead.
#[derive(Clone, Copy)]
struct Served<'a> {
    objects: &'a ClosureObjects,
    prefetched: &'a Prefetched,
}

/// Fetches the closure's small NARs ahead of Nix, a few at a time, into
/// `into` (at most [`MAX_PREFETCHED_BYTES`]). Best effort: a NAR that fails,
/// stalls past one progress window or is larger than its narinfo promised
/// is left out, and Nix's own request for it is relayed as any other is
/// (with the errors and stall checks that path has).
async fn prefetch(
    caches: BinaryCaches,
    credentials: Arc<Loaded>,
    objects: Arc<ClosureObjects>,
    into: Arc<Prefetched>,
) {
    let window = caches.nar_progress().window;
    let mut queue = objects.small_nars().iter().cloned();
    let mut tasks = tokio::task::JoinSet::new();
    let mut held = 0usize;
    loop {
        while tasks.len() < PREFETCH_PARALLEL && held < MAX_PREFETCHED_BYTES {
            let Some((cache, rest)) = queue.next() else { break };
            let (caches, credentials) = (caches.clone(), credentials.clone());
            tasks.spawn(async move {
                let body = tokio::time::timeout(window, fetch_small(&caches, &credentials, cache, &rest))
                    .await
                    .ok()
                    .flatten();
                body.map(|body| ((cache, rest), body))
            });
        }
        let Some(done) = tasks.join_next().await else {
            return;
        };
        if let Ok(Some((key, body))) = done {
            if held + body.len() <= MAX_PREFETCHED_BYTES {
                held += body.len();
                into.lock().unwrap_or_else(|p| p.into_inner()).insert(key, body);
            }
        }
    }
}

/// One small NAR, whole; `None` on any failure or past
/// [`MAX_PREFETCH_NAR_BYTES`].
async fn fetch_small(
    caches: &BinaryCaches,
    credentials: &Loaded,
    cache: usize,
    rest: &str,
) -> Option<Vec<u8>> {
    let mut response = caches.relay(cache, rest, false, credentials).await.ok()??;
    let length = response.content_length();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_PREFETCH_NAR_BYTES {
            return None;
        }
    }
    // Cut short: left to the relayed path, which says so.
    (length.is_none_or(|n| n == body.len() as u64)).then_some(body)
}

/// Answers the requests on `stream`, one after another on the same
/// connection (Nix's curl keeps it open), until the client closes it or an
/// answer cannot say its length (then it ends the connection).
async fn serve(
    mut stream: TcpStream,
    session: &str,
    caches: &BinaryCaches,
    credentials: &Loaded,
    served: Served<'_>,
) -> Result<(), CacheError> {
    let mut pending = Vec::new();
    loop {
        let Some(line) = read_head(&mut stream, &mut pending).await else {
            return Ok(());
        };
        match answer(&mut stream, &line, session, caches, credentials, served).await? {
            Connection::KeepAlive => continue,
            Connection::Close => return Ok(()),
        }
    }
}

/// Whether a connection can carry another request after an answer.
enum Connection {
    KeepAlive,
    Close,
}

/// Reads one request head from `stream` (after what `pending` already
/// holds) and returns its request line; the bytes after the head stay in
/// `pending`. `None` when the client closed or sent too much.
async fn read_head(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 2048];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&head);
            return Some(text.lines().next().unwrap_or("").to_owned());
        }
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 || pending.len() + n > MAX_HEAD_BYTES {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Answers one request whose request line is `line`: what the connection
/// can do after it.
async fn answer(
    stream: &mut TcpStream,
    line: &str,
    session: &str,
    caches: &BinaryCaches,
    credentials: &Loaded,
    served: Served<'_>,
) -> Result<Connection, CacheError> {
    let objects = served.objects;
    let route = match route(line, session) {
        Ok(r) => r,
        // A request this relay cannot read: answered, and the connection
        // ended, as nothing after it can be trusted to be framed.
        Err(code @ (400 | 405)) => {
            respond(stream, code, None).await?;
            return Ok(Connection::Close);
        }
        Err(code) => return respond(stream, code, None).await,
    };
    if route.rest != "nix-cache-info" && !objects.contains(&route.rest) {
        return respond(stream, 404, None).await;
    }
    // A narinfo the walk read from this substituter and checked: answered
    // with those bytes, without asking the cache again.
    if let Some(body) = objects.narinfo(route.cache, &route.rest) {
        return respond_with(stream, body, route.head).await;
    }
    // A NAR fetched ahead: served once, then dropped.
    if !route.head {
        let ahead = served
            .prefetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(route.cache, route.rest.clone()));
        if let Some(body) = ahead {
            return respond_with(stream, &body, false).await;
        }
    }
    // The answer's head counts as the first window's progress: a cache that
    // never answers (or whose name never resolves) is cut off as one that
    // stops mid-body is.
    let progress = caches.nar_progress();
    let mut window_end = tokio::time::Instant::now() + progress.window;
    let stalled = |rest: &str| CacheError::Stalled {
        cache: caches
            .substituters()
            .get(route.cache)
            .cloned()
            .unwrap_or_default(),
        object: rest.to_owned(),
        window: progress.window,
        min_bytes: progress.min_bytes,
    };
    let upstream = tokio::time::timeout_at(
        window_end,
        caches.relay(route.cache, &route.rest, route.head, credentials),
    )
    .await
    .unwrap_or_else(|_| Err(stalled(&route.rest)));
    let mut response = match upstream {
        Ok(Some(r)) => r,
        Ok(None) => return respond(stream, 404, None).await,
        Err(e) => {
            let _ = respond(stream, 502, None).await;
            return Err(e);
        }
    };
    let length = response.content_length();
    let after = respond(stream, 200, length).await?;
    if route.head {
        return Ok(after);
    }
    // The body must keep coming: at least `min_bytes` in every window, or
    // it is cut off (Nix then sees it end short and fails, and the
    // realise is retried), naming the cache.
    let mut received: u64 = 0;
    let mut total: u64 = 0;
    loop {
        // Reading a chunk is cancel-safe: a window that ends while one is
        // awaited loses nothing.
        match tokio::time::timeout_at(window_end, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                received = received.saturating_add(chunk.len() as u64);
                total = total.saturating_add(chunk.len() as u64);
                if stream.write_all(&chunk).await.is_err() {
                    return Ok(Connection::Close); // Nix hung up.
                }
            }
            // The whole body, as long as its head said: the connection
            // can carry the next request.
            Ok(Ok(None)) if length == Some(total) => return Ok(after),
            Ok(Ok(None)) => return Ok(Connection::Close),
            Ok(Err(e)) => {
                return Err(CacheError::Unreachable {
                    url: format!("substituter #{} /{}", route.cache, route.rest),
                    detail: e.to_string(),
                })
            }
            Err(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= window_end {
            if progress.stalled(received) {
                return Err(stalled(&route.rest));
            }
            window_end = now + progress.window;
            received = 0;
        }
    }
}

/// Answers 200 with `body` from memory (its head alone for a HEAD).
async fn respond_with(stream: &mut TcpStream, body: &[u8], head: bool) -> Result<Connection, CacheError> {
    let after = respond(stream, 200, Some(body.len() as u64)).await?;
    if !head && stream.write_all(body).await.is_err() {
        return Ok(Connection::Close); // Nix hung up.
    }
    Ok(after)
}

/// Writes an answer's head: with a length (an error's is 0) the connection
/// stays open for the next request; a 200 whose length is unknown ends it
/// (its body then runs to the close).
async fn respond(stream: &mut TcpStream, code: u16, length: Option<u64>) -> Result<Connection, CacheError> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Gateway",
    };
    let length = length.or((code != 200).then_some(0));
    let mut head = format!("HTTP/1.1 {code} {reason}\r\n");
    let after = match length {
        Some(n) => {
            head.push_str(&format!("Content-Length: {n}\r\n"));
            Connection::KeepAlive
        }
        None => {
            head.push_str("Connection: close\r\n");
            Connection::Close
        }
    };
    head.push_str("\r\n");
    // A client that went away is not the cache's problem.
    if stream.write_all(head.as_bytes()).await.is_err() {
        return Ok(Connection::Close);
    }
    Ok(after)
}

/// Realises `toplevel` from `caches` through the loopback relay: the relay
/// serves just the objects of the closure as the preflight's walk found and
/// checked them (or, without a recent one for this closure, as a walk made
/// now with freshly read credentials finds them), and Nix realises from it;
/// a failure says what the cache answered.
pub async fn realise_via_relay(
    store: &Store,
    caches: &BinaryCaches,
    toplevel: &StorePath,
    root_name: &str,
) -> Result<(), StoreError> {
    let (credentials, objects) = match caches.take_walk(toplevel) {
        // The preflight's walk holds while every path it found on disk is
        // still valid to Nix.
        Some(walked) if store.invalid_paths(&walked.on_disk).await?.is_empty() => {
            (walked.credentials, walked.objects)
        }
        _ => walk(store, caches, toplevel).await?,
    };
    let relay = Relay::start(caches.clone(), credentials, objects)
        .await
        .map_err(StoreError::Relay)?;
    let result = store
        .realise_from(toplevel, root_name, relay.substituters())
        .await;
    match (result, relay.last_failure()) {
        // Stopped with the agent: that, not the cache, is why.
        (Err(nix @ StoreError::Interrupted { .. }), _) => Err(nix),
        (Err(nix), Some(failure)) => Err(StoreError::Cache {
            nix: Box::new(nix),
            cache: failure.detail,
            summary: failure.summary,
        }),
        (result, _) => result,
    }
}

/// Walks `toplevel`'s closure with freshly read credentials, as the
/// preflight does: what exists in the store but is invalid to Nix is served
/// too.
async fn walk(
    store: &Store,
    caches: &BinaryCaches,
    toplevel: &StorePath,
) -> Result<(Arc<Loaded>, ClosureObjects), StoreError> {
    let store_dir = Path::new(ferry_signer::names::STORE_DIR);
    let credentials = caches.load_credentials().map_err(StoreError::Closure)?;
    let mut invalid = BTreeSet::new();
    loop {
        let (preflight, objects) = caches
            .walk(toplevel, store_dir, &credentials, &invalid)
            .await
            .map_err(StoreError::Closure)?;
        let found = store.invalid_paths(&preflight.on_disk).await?;
        if found.is_empty() {
            return Ok((credentials, objects));
        }
        invalid.extend(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_a_substituter_and_a_safe_path() {
        assert_eq!(
            route("GET /s1/1/nar/0abc.nar.xz HTTP/1.1", "s1"),
            Ok(Route {
                head: false,
                cache: 1,
                rest: "nar/0abc.nar.xz".into()
            })
        );
        assert_eq!(
            route("HEAD /s1/0/nix-cache-info HTTP/1.1", "s1").map(|r| r.head),
            Ok(true)
        );
        assert_eq!(
            route("GET /s1/0/abc.narinfo?x=1 HTTP/1.1", "s1").map(|r| r.rest),
            Ok("abc.narinfo".into())
        );
        assert_eq!(route("POST /s1/0/x HTTP/1.1", "s1"), Err(405));
        assert_eq!(route("GET /s1/0/../etc/passwd HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /s1/0//x HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /s1/0/a%2f HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /s1/x/a HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /s1/0/ HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /s1/ HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /s1/0/a", "s1"), Err(400));
        // Another relay's session, or none: not this relay's URL.
        assert_eq!(route("GET /s2/0/abc.narinfo HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /0/abc.narinfo HTTP/1.1", "s1"), Err(404));
        assert_eq!(route("GET /s1x/0/abc.narinfo HTTP/1.1", "s1"), Err(404));
    }
}
