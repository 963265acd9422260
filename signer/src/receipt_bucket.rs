//! The bucket host receipts are kept in, as both programs reach it:
//! `s3://bucket/prefix?region=…&endpoint=…&profile=…` (Nix's `s3://`
//! parameters, [`ReceiptBucket::parse`]), the URL of one receipt, the
//! ListObjectsV2 request of a release's receipts and its answer
//! ([`list_url`], [`parse_list`]: pure, bounded, fuzzed — the bucket is not
//! trusted), and [`Reader`], the fleet commands' blocking reader: it lists a
//! release's keys (1,000 a page), fetches them with bounded parallelism and
//! judges each with [`crate::receipt::verify`]. The agent writes with the
//! same URLs and signatures (its own async client).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::names::{CommitId, HostName};
use crate::receipt::{self, HostKeys, Verdict, MAX_RECEIPT_BYTES};
use crate::s3::{self, Addressing, AwsCredentials, S3Cache};

/// A listing page longer than this is refused (1,000 keys take ~300 KB).
pub const MAX_LIST_BYTES: usize = 4 << 20;
/// Keys asked for per listing page (S3's most).
pub const PAGE_KEYS: u32 = 1000;
/// A release with more receipts than this is refused.
pub const MAX_RECEIPTS: usize = 200_000;
/// Receipts fetched at once.
pub const PARALLEL_FETCHES: usize = 16;
/// How long one request to the bucket may take, its body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where receipts are kept: a bucket and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptBucket {
    pub bucket: S3Cache,
    /// Without slashes at either end; may be empty.
    pub prefix: String,
}

impl ReceiptBucket {
    /// Parses `s3://bucket[/prefix][?region=…&endpoint=…&profile=…&scheme=…]`
    /// (`s3::S3Location`), the prefix held to plain key characters.
    pub fn parse(url: &str) -> Result<Self, s3::S3UrlError> {
        let location = s3::S3Location::parse(url)?;
        let prefix = location.prefix;
        let prefix_ok = (prefix.is_empty() || prefix.split('/').all(|part| !part.is_empty()))
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c));
        if !prefix_ok {
            return Err(s3::S3UrlError {
                url: url.to_owned(),
                problem: format!(
                    "the key prefix `{prefix}` may hold letters, digits, `-`, `_`, `.` and `/` between parts"
                ),
            });
        }
        Ok(Self {
            bucket: location.bucket,
            prefix,
        })
    }

    /// The URL of `host`'s receipt for `release`.
    pub fn receipt_url(&self, release: &CommitId, host: &HostName) -> String {
        self.bucket
            .object_url(&receipt::object_key(&self.prefix, release, host))
    }

    /// `s3://bucket/prefix`, for messages (no parameters, no credentials).
    pub fn describe(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket.bucket),
            p => format!("s3://{}/{p}", self.bucket.bucket),
        }
    }
}

/// The ListObjectsV2 request for the keys under `key_prefix`, from
/// `continuation` (the token of the page before) on.
pub fn list_url(bucket: &S3Cache, key_prefix: &str, continuation: Option<&str>) -> String {
    let base = match bucket.addressing {
        Addressing::Path => format!("{}://{}/{}", bucket.scheme, bucket.endpoint, bucket.bucket),
        Addressing::VirtualHost => format!("{}://{}.{}/", bucket.scheme, bucket.bucket, bucket.endpoint),
    };
    // Parameters in the order SigV4 sorts them: the URL is signed as sent.
    let mut query = Vec::new();
    if let Some(token) = continuation {
        query.push(format!("continuation-token={}", s3::uri_encode(token, true)));
    }
    query.push("list-type=2".to_owned());
    query.push(format!("max-keys={PAGE_KEYS}"));
    query.push(format!("prefix={}", s3::uri_encode(key_prefix, true)));
    format!("{base}?{}", query.join("&"))
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<String>,
    /// The token of the next page, when the listing goes on.
    pub next: Option<String>,
}

/// Reads a ListObjectsV2 answer: every `<Contents><Key>`, and the next
/// page's token when `<IsTruncated>true`. Bounded; an answer that says
/// it goes on without a token is refused (it would list forever).
pub fn parse_list(body: &[u8]) -> Result<ListPage, String> {
    if body.len() > MAX_LIST_BYTES {
        return Err(format!("the listing is larger than {MAX_LIST_BYTES} bytes"));
    }
    let text = std::str::from_utf8(body).map_err(|_| "the listing is not UTF-8".to_owned())?;
    if !text.contains("<ListBucketResult") {
        return Err("not a ListObjectsV2 answer (no <ListBucketResult>)".into());
    }
    let mut page = ListPage::default();
    let mut rest = text;
    while let Some(at) = rest.find("<Contents>") {
        let after = &rest[at + "<Contents>".len()..];
        let end = after
            .find("</Contents>")
            .ok_or_else(|| "a <Contents> element is not closed".to_owned())?;
        let contents = &after[..end];
        let key = element(contents, "Key").ok_or_else(|| "a <Contents> element has no <Key>".to_owned())?;
        if key.is_empty() || key.len() > 1024 {
            return Err("a key is empty or longer than 1024 bytes".into());
        }
        page.keys.push(key);
        if page.keys.len() > PAGE_KEYS as usize {
            return Err(format!("more than {PAGE_KEYS} keys in one page"));
        }
        rest = &after[end + "</Contents>".len()..];
    }
    let truncated = element(text, "IsTruncated").is_some_and(|t| t == "true");
    if truncated {
        let token = element(text, "NextContinuationToken")
            .filter(|t| !t.is_empty() && t.len() <= 1024)
            .ok_or_else(|| "the listing goes on but gives no usable <NextContinuationToken>".to_owned())?;
        page.next = Some(token);
    }
    Ok(page)
}

/// The text of the first `<name>…</name>` in `xml`, entities decoded.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(unescape(&xml[start..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Why the receipts could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// Network trouble, 5xx, a slow answer: the next poll tries again.
    #[error("cannot read receipts from {bucket}: {detail}")]
    Transient { bucket: String, detail: String },
    /// Credentials refused, no such bucket, an answer that makes no sense.
    #[error("cannot read receipts from {bucket}: {detail}")]
    Refused { bucket: String, detail: String },
}

impl BucketError {
    /// Whether a later try may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// What a read of one release's receipts found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipts {
    /// Each host with a receipt under the release, and the verdict on it.
    pub by_host: BTreeMap<HostName, Verdict>,
    /// Keys under the release that name no host (not a host name, or
    /// nested deeper): never counted, shown.
    pub strays: Vec<String>,
    /// Requests made to the bucket.
    pub requests: u32,
}

/// The fleet commands' reader of a bucket.
#[derive(Debug)]
pub struct Reader {
    location: ReceiptBucket,
    credentials: AwsCredentials,
    http: reqwest::blocking::Client,
    timeout: Duration,
}

impl Reader {
    /// A reader of `location` with `credentials`, each request given
    /// [`REQUEST_TIMEOUT`].
    pub fn new(location: ReceiptBucket, credentials: AwsCredentials) -> Self {
        Self::with_timeout(location, credentials, REQUEST_TIMEOUT)
    }

    /// A reader whose requests may take `timeout` each, the body included.
    pub fn with_timeout(location: ReceiptBucket, credentials: AwsCredentials, timeout: Duration) -> Self {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(PARALLEL_FETCHES)
            .build()
            .expect("the TLS backend initialises");
        Self {
            location,
            credentials,
            http,
            timeout,
        }
    }

    /// A reader of `url`, with credentials from the standard places
    /// (`env`, the shared credentials file and the URL's `profile=`).
    pub fn open(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, BucketError> {
        let refused = |detail: String| BucketError::Refused {
            bucket: url.split('?').next().unwrap_or(url).to_owned(),
            detail,
        };
        let location = ReceiptBucket::parse(url).map_err(|e| refused(e.problem))?;
        let credentials = s3::find_credentials(None, location.bucket.profile.as_deref(), env)
            .map_err(|e| refused(format!("no credentials: {e}")))?;
        Ok(Self::new(location, credentials))
    }

    pub fn location(&self) -> &ReceiptBucket {
        &self.location
    }

    /// Lists `release`'s receipts, fetches them ([`PARALLEL_FETCHES`] at a
    /// time) and judges each against `keys`.
    pub fn read(&self, release: &CommitId, keys: &HostKeys) -> Result<Receipts, BucketError> {
        let requests = AtomicU32::new(0);
        let key_prefix = receipt::release_prefix(&self.location.prefix, release);
        let mut listed = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let url = list_url(&self.location.bucket, &key_prefix, next.as_deref());
            requests.fetch_add(1, Ordering::Relaxed);
            let body = self.get(&url, MAX_LIST_BYTES)?;
            let page = parse_list(&body).map_err(|detail| self.refused(detail))?;
            listed.extend(page.keys);
            if listed.len() > MAX_RECEIPTS {
                return Err(self.refused(format!("more than {MAX_RECEIPTS} receipts under {key_prefix}")));
            }
            match page.next {
                Some(token) if Some(&token) != next.as_ref() => next = Some(token),
                Some(_) => return Err(self.refused("the listing repeats its continuation token".into())),
                None => break,
            }
        }
        let mut found = Receipts::default();
        let mut hosts = Vec::new();
        for key in listed {
            match key
                .strip_prefix(&key_prefix)
                .and_then(|name| name.parse::<HostName>().ok())
            {
                Some(host) => hosts.push(host),
                None => found.strays.push(key),
            }
        }
        let next_index = AtomicUsize::new(0);
        let results = Mutex::new(Vec::with_capacity(hosts.len()));
        let failure: Mutex<Option<BucketError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL_FETCHES.min(hosts.len()) {
                scope.spawn(|| loop {
                    if failure.lock().expect("no panics").is_some() {
                        return;
                    }
                    let i = next_index.fetch_add(1, Ordering::Relaxed);
                    let Some(host) = hosts.get(i) else { return };
                    let url = self.location.receipt_url(release, host);
                    requests.fetch_add(1, Ordering::Relaxed);
                    // Anything longer is forged anyway: one byte more tells.
                    match self.get_optional(&url, MAX_RECEIPT_BYTES + 1) {
                        Ok(Some(object)) => {
                            let verdict = receipt::verify(&object, release, host, keys);
                            results.lock().expect("no panics").push((host.clone(), verdict));
                        }
                        // Listed, then gone: as if never written.
                        Ok(None) => {}
                        Err(e) => {
                            failure.lock().expect("no panics").get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().expect("no panics") {
            return Err(e);
        }
        found.by_host = results.into_inner().expect("no panics").into_iter().collect();
        found.requests = requests.into_inner();
        Ok(found)
    }

    fn refused(&self, detail: String) -> BucketError {
        BucketError::Refused {
            bucket: self.location.describe(),
            detail,
        }
    }

    fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, BucketError> {
        self.get_optional(url, limit)?
            .ok_or_else(|| self.refused("no such bucket (HTTP 404): check the s3:// URL".into()))
    }

    /// GETs `url` signed; `None` for a 404; the body up to `limit` bytes.
    fn get_optional(&self, url: &str, limit: usize) -> Result<Option<Vec<u8>>, BucketError> {
        let transient = |detail: String| BucketError::Transient {
            bucket: self.location.describe(),
            detail,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| self.refused(format!("bad URL {url}: {e}")))?;
        let headers = s3::sign(
            "GET",
            &parsed,
            &self.location.bucket.region,
            "s3",
            &self.credentials,
            chrono::Utc::now(),
        );
        let mut request = self.http.get(parsed);
        for (name, value) in headers {
            let mut value = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| self.refused("credentials that cannot be sent in a header".into()))?;
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        let slow = || {
            transient(format!(
                "no whole answer within {}: tried again at the next poll",
                humantime::format_duration(self.timeout)
            ))
        };
        let deadline = std::time::Instant::now() + self.timeout;
        let response = request.send().map_err(|e| match e.is_timeout() {
            true => slow(),
            false => transient(crate::forge::without_url(&e)),
        })?;
        let code = response.status().as_u16();
        // One total deadline for the body too: the client's timeout bounds
        // each read, and a bucket that drips a byte per read would pass it.
        let read = read_before(response, limit, deadline);
        match code {
            200..=299 => match read {
                Ok(body) => Ok(Some(body)),
                Err(None) => Err(slow()),
                Err(Some(e)) if e.kind() == std::io::ErrorKind::TimedOut => Err(slow()),
                Err(Some(e)) => Err(transient(format!("the answer broke off: {e}"))),
            },
            _ if read.is_err() && !(400..500).contains(&code) => Err(slow()),
            404 if !String::from_utf8_lossy(read.as_deref().unwrap_or_default()).contains("NoSuchBucket") => {
                Ok(None)
            }
            408 | 429 | 500..=599 => {
                let e = s3::parse_error(read.as_deref().unwrap_or_default());
                Err(transient(format!(
                    "HTTP {code}{}: tried again at the next poll",
                    e.code.map(|c| format!(" ({c})")).unwrap_or_default()
                )))
            }
            _ => {
                let e = s3::parse_error(read.as_deref().unwrap_or_default());
                let words = [e.code, e.message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ");
                let advice = match code {
                    401 | 403 => {
                        " — check the credentials (from the AWS_* variables, the shared credentials file or profile=) and that they may list and read the prefix"
                    }
                    404 => " — check the bucket in the s3:// URL",
                    _ => "",
                };
                Err(self.refused(format!("HTTP {code} {words}{advice}")))
            }
        }
    }
}

/// At most `limit` bytes of `response`'s body, read whole before
/// `deadline`; `Err(None)` when the deadline passed first.
fn read_before(
    mut response: reqwest::blocking::Response,
    limit: usize,
    deadline: std::time::Instant,
) -> Result<Vec<u8>, Option<std::io::Error>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if std::time::Instant::now() >= deadline {
            return Err(None);
        }
        match response.read(&mut chunk) {
            Ok(0) => return Ok(body),
            Ok(n) => {
                body.extend_from_slice(&chunk[..n]);
                if body.len() >= limit {
                    body.truncate(limit);
                    return Ok(body);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let b = ReceiptBucket::parse("s3://fleet/ferry/receipts/?endpoint=http://127.0.0.1:9000&region=eu")
            .unwrap();
        assert_eq!(b.prefix, "ferry/receipts");
        assert_eq!(b.describe(), "s3://fleet/ferry/receipts");
        let release: CommitId = "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap();
        assert_eq!(
            b.receipt_url(&release, &"web1".parse().unwrap()),
            "http://127.0.0.1:9000/fleet/ferry/receipts/9fceb02d0ae598e95dc970b74767f19372d61af8/web1"
        );
        assert_eq!(
            list_url(&b.bucket, "ferry/receipts/abc/", Some("a/b+c=")),
            "http://127.0.0.1:9000/fleet?continuation-token=a%2Fb%2Bc%3D&list-type=2&max-keys=1000&prefix=ferry%2Freceipts%2Fabc%2F"
        );
        let aws = ReceiptBucket::parse("s3://fleet").unwrap();
        assert_eq!(aws.prefix, "");
        assert_eq!(
            list_url(&aws.bucket, "x/", None),
            "https://fleet.s3.us-east-1.amazonaws.com/?list-type=2&max-keys=1000&prefix=x%2F"
        );
        for bad in [
            "s3://fleet/a/../b",
            "s3://fleet/a//b",
            "s3://fleet/a b",
            "s3://Fleet",
            "http://x",
        ] {
            assert!(ReceiptBucket::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listings() {
        let page = parse_list(
            br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>fleet</Name><Prefix>r/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>r/web1</Key><Size>900</Size></Contents><Contents><Key>r/a&amp;b</Key></Contents>
<NextContinuationToken>tok/en=</NextContinuationToken></ListBucketResult>"#,
        )
        .unwrap();
        assert_eq!(page.keys, ["r/web1", "r/a&b"]);
        assert_eq!(page.next.as_deref(), Some("tok/en="));
        let last =
            parse_list(b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>").unwrap();
        assert_eq!(last, ListPage::default());
        for (bad, words) in [
            (
                &b"<Error><Code>AccessDenied</Code></Error>"[..],
                "not a ListObjectsV2",
            ),
            (b"<ListBucketResult><Contents><Key>x</Key>", "not closed"),
            (b"<ListBucketResult><Contents></Contents>", "no <Key>"),
            (
                b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
                "NextContinuationToken",
            ),
            (b"\xff<ListBucketResult>", "UTF-8"),
        ] {
            let e = parse_list(bad).unwrap_err();
            assert!(e.contains(words), "{e}");
        }
        let many: String = (0..=PAGE_KEYS)
            .map(|i| format!("<Contents><Key>k{i}</Key></Contents>"))
            .collect();
        assert!(parse_list(format!("<ListBucketResult>{many}").as_bytes()).is_err());
    }
}
