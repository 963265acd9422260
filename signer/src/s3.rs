//! S3 as both programs speak it. `s3://` URLs as Nix spells them
//! (`s3://bucket?region=…&endpoint=…&profile=…&scheme=…`): the HTTPS URL of
//! an object (virtual-host style on AWS, path style on a custom endpoint, or
//! as `addressing-style` says), AWS Signature Version 4 for GET and HEAD
//! (the agent reading caches and mirrors) and for PUT with a body (the
//! signer writing a mirror), credentials from the standard places, and S3's
//! XML error answers read into plain words.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// An S3 error document longer than this is not read.
pub const MAX_ERROR_BYTES: usize = 64 << 10;

/// Why an `s3://` URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{url}`: {problem}")]
pub struct S3UrlError {
    pub url: String,
    pub problem: String,
}

/// Path style (`endpoint/bucket/key`) or virtual-host style (`bucket.endpoint/key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Path,
    VirtualHost,
}

/// A validated `s3://` substituter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Cache {
    pub bucket: String,
    pub region: String,
    /// `https` (default) or `http`.
    pub scheme: String,
    /// Host (and port) of the endpoint.
    pub endpoint: String,
    pub addressing: Addressing,
    /// The profile of the shared credentials file (`profile=`), if named.
    pub profile: Option<String>,
}

impl S3Cache {
    /// Parses Nix's `s3://` URL form.
    pub fn parse(url: &str) -> Result<S3Cache, S3UrlError> {
        let bad = |problem: String| S3UrlError {
            url: url.to_owned(),
            problem,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL".into()))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = bucket.trim_end_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(bad(format!(
                "`{bucket}` is not an S3 bucket name (3 to 63 lowercase letters, digits, `-` and `.`)"
            )));
        }
        let mut region = "us-east-1".to_owned();
        let mut scheme = "https".to_owned();
        let mut endpoint = None;
        let mut profile = None;
        let mut addressing = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let ok_value = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_graphic() && c != '/' || c == '/' && k == "endpoint");
            if !ok_value {
                return Err(bad(format!("`{k}` needs a value")));
            }
            match k {
                "region" => region = v.to_owned(),
                "scheme" if v == "https" || v == "http" => scheme = v.to_owned(),
                "scheme" => return Err(bad("scheme must be https or http".into())),
                "endpoint" => endpoint = Some(v.to_owned()),
                "profile" => profile = Some(v.to_owned()),
                "addressing-style" => {
                    addressing = match v {
                        "path" => Some(Addressing::Path),
                        "virtual" => Some(Addressing::VirtualHost),
                        "auto" => None,
                        _ => return Err(bad("addressing-style must be auto, path or virtual".into())),
                    }
                }
                // Nix's upload settings: meaningless for reading.
                "compression" | "parallel-compression" | "write-nar-listing" | "ls-compression"
                | "narinfo-compression" | "log-compression" | "multipart-upload" | "buffer-size"
                | "secret-key" | "priority" | "want-mass-query" => {}
                other => {
                    return Err(bad(format!(
                        "unknown parameter `{other}` (known: region, endpoint, profile, scheme, addressing-style)"
                    )))
                }
            }
        }
        // An endpoint may be given as a URL; its scheme then wins.
        let endpoint = match endpoint {
            Some(e) => {
                let host = if let Some(h) = e.strip_prefix("https://") {
                    scheme = "https".into();
                    h
                } else if let Some(h) = e.strip_prefix("http://") {
                    scheme = "http".into();
                    h
                } else {
                    e.as_str()
                };
                let host = host.trim_end_matches('/');
                // A host name, IPv4 or [IPv6] address, and port: anything
                // else (`@`, `?`, `#`, a backslash) moves the host or the path.
                let host_char = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
                if host.is_empty() || !host.chars().all(host_char) {
                    return Err(bad(format!("endpoint `{e}` is not a host[:port] or URL")));
                }
                Some(host.to_owned())
            }
            None => None,
        };
        let addressing = addressing.unwrap_or(match (&endpoint, bucket.contains('.')) {
            // Custom endpoints (MinIO, R2, Hetzner, Garage) take path style, as Nix uses them.
            (Some(_), _) => Addressing::Path,
            // A dotted bucket breaks the wildcard certificate.
            (None, true) => Addressing::Path,
            (None, false) => Addressing::VirtualHost,
        });
        // The region names the default endpoint's host and the signature's
        // scope: a character outside a host name's would send the request
        // elsewhere (`@`) or cut the object's key off (`?`, `#`).
        if !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad(format!(
                "region `{region}` is not a region name (letters, digits, `-`, `_` and `.`)"
            )));
        }
        let endpoint = endpoint.unwrap_or_else(|| format!("s3.{region}.amazonaws.com"));
        Ok(S3Cache {
            bucket: bucket.to_owned(),
            region,
            scheme,
            endpoint,
            addressing,
            profile,
        })
    }

    /// The URL of object `key` (`nix-cache-info`, `<hash>.narinfo`, `nar/…`).
    pub fn object_url(&self, key: &str) -> String {
        let key = uri_encode(key, false);
        match self.addressing {
            Addressing::Path => format!("{}://{}/{}/{key}", self.scheme, self.endpoint, self.bucket),
            Addressing::VirtualHost => {
                format!("{}://{}.{}/{key}", self.scheme, self.bucket, self.endpoint)
            }
        }
    }
}

/// A place under a key prefix in a bucket, `s3://bucket/prefix?region=…`
/// (the query as for [`S3Cache`]): where a static mirror is written and
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: S3Cache,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix][?query]`; a prefix may not hold `.` or
    /// `..` parts.
    pub fn parse(url: &str) -> Result<S3Location, S3UrlError> {
        let bad = |problem: &str| S3UrlError {
            url: url.to_owned(),
            problem: problem.to_owned(),
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not an s3:// URL"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == ".." || part == ".") {
            return Err(bad("the key prefix may not hold `.` or `..`"));
        }
        let bucket = S3Cache::parse(&format!("s3://{bucket}?{query}")).map_err(|e| S3UrlError {
            url: url.to_owned(),
            problem: e.problem,
        })?;
        Ok(S3Location {
            bucket,
            prefix: prefix.to_owned(),
        })
    }

    /// The URL of `rel` under the prefix.
    pub fn object_url(&self, rel: &str) -> String {
        match self.prefix.as_str() {
            "" => self.bucket.object_url(rel),
            p => self.bucket.object_url(&format!("{p}/{rel}")),
        }
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket.bucket, self.prefix)
    }
}

/// An access key pair (and session token), redacted in `Debug`.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
    /// Where they were found, for messages.
    pub source: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why no credentials could be found.
#[derive(Debug, thiserror::Error)]
pub enum AwsCredentialsError {
    #[error("cannot read {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{path}: no profile [{profile}] with aws_access_key_id and aws_secret_access_key")]
    NoProfile { path: PathBuf, profile: String },
}

/// Reads a shared credentials file (`~/.aws/credentials` format):
/// `[profile]` sections of `key = value` lines; `#` and `;` start comments.
pub fn parse_shared_credentials(text: &str) -> BTreeMap<String, BTreeMap<String, Zeroizing<String>>> {
    let mut profiles: BTreeMap<String, BTreeMap<String, Zeroizing<String>>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = name.strip_prefix("profile ").unwrap_or(name).trim().to_owned();
            profiles.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(p), Some((k, v))) = (&current, line.split_once('=')) {
            profiles
                .entry(p.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), Zeroizing::new(v.trim().to_owned()));
        }
    }
    profiles
}

/// Credentials for `profile`: from `file` if the configuration names one;
/// else from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and
/// `AWS_SESSION_TOKEN`) when no profile is asked for; else from the shared
/// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`),
/// profile `profile`, `AWS_PROFILE` or `default`.
pub fn find_credentials(
    file: Option<&Path>,
    profile: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AwsCredentials, AwsCredentialsError> {
    if file.is_none() && profile.is_none() {
        if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            return Ok(AwsCredentials {
                access_key_id: id,
                secret_access_key: Zeroizing::new(secret),
                session_token: env("AWS_SESSION_TOKEN").map(Zeroizing::new),
                source: "the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables".into(),
            });
        }
    }
    let path = match file {
        Some(f) => f.to_owned(),
        None => match env("AWS_SHARED_CREDENTIALS_FILE") {
            Some(f) => PathBuf::from(f),
            None => PathBuf::from(env("HOME").unwrap_or_else(|| "/root".into())).join(".aws/credentials"),
        },
    };
    let profile = profile
        .map(str::to_owned)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let text = std::fs::read_to_string(&path)
        .map(Zeroizing::new)
        .map_err(|e| AwsCredentialsError::Read {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    let mut profiles = parse_shared_credentials(&text);
    let found = profiles.remove(&profile).and_then(|mut p| {
        let id = p.remove("aws_access_key_id")?;
        let secret = p.remove("aws_secret_access_key")?;
        Some(AwsCredentials {
            access_key_id: id.to_string(),
            secret_access_key: secret,
            session_token: p.remove("aws_session_token"),
            source: format!("{} [{profile}]", path.display()),
        })
    });
    found.ok_or(AwsCredentialsError::NoProfile { path, profile })
}

/// The headers that sign a GET or HEAD of `url` (no body) at `now`:
/// `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token` if any, and
/// `authorization`. Pure; `url` must already be percent-encoded as sent.
pub fn sign(
    method: &str,
    url: &reqwest::Url,
    region: &str,
    service: &str,
    credentials: &AwsCredentials,
    now: DateTime<Utc>,
) -> Vec<(&'static str, Zeroizing<String>)> {
    sign_body(method, url, region, service, credentials, now, &[])
}

/// The headers that sign a request of `url` carrying `body` (a PUT) at
/// `now`, as [`sign`] does for one without (whose body is empty). Pure.
pub fn sign_body(
    method: &str,
    url: &reqwest::Url,
    region: &str,
    service: &str,
    credentials: &AwsCredentials,
    now: DateTime<Utc>,
    body: &[u8],
) -> Vec<(&'static str, Zeroizing<String>)> {
    let sha256 = hex(&Sha256::digest(body));
    let payload = Payload {
        extra: &[],
        sha256: &sha256,
    };
    sign_with(method, url, (region, service), credentials, now, &payload)
}

/// What is signed besides the method and URL: headers the caller sends
/// (lower-case names) and the body's SHA-256 (hex).
struct Payload<'a> {
    extra: &'a [(&'static str, &'a str)],
    sha256: &'a str,
}

/// [`sign`] with `payload`, in the credential scope `(region, service)`.
fn sign_with(
    method: &str,
    url: &reqwest::Url,
    (region, service): (&str, &str),
    credentials: &AwsCredentials,
    now: DateTime<Utc>,
    payload: &Payload<'_>,
) -> Vec<(&'static str, Zeroizing<String>)> {
    let (extra, payload_sha256) = (payload.extra, payload.sha256);
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let day = now.format("%Y%m%d").to_string();
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_owned(),
    };
    let mut headers: Vec<(&'static str, String)> = vec![
        ("host", host),
        ("x-amz-content-sha256", payload_sha256.to_owned()),
        ("x-amz-date", amz_date.clone()),
    ];
    headers.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token", token.to_string()));
    }
    headers.sort_by_key(|(k, _)| *k);
    let signed_headers = headers.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let mut query: Vec<(String, String)> = url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let path = if url.path().is_empty() { "/" } else { url.path() };
    let canonical_request = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}"
    );
    let scope = format!("{day}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let secret = Zeroizing::new(format!("AWS4{}", credentials.secret_access_key.as_str()));
    let k_date = Zeroizing::new(hmac(secret.as_bytes(), day.as_bytes()));
    let k_region = Zeroizing::new(hmac(&k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&k_region, service.as_bytes()));
    let k_signing = Zeroizing::new(hmac(&k_service, b"aws4_request"));
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    let mut out: Vec<(&'static str, Zeroizing<String>)> = headers
        .into_iter()
        .filter(|(k, _)| *k != "host" && !extra.iter().any(|(e, _)| e == k))
        .map(|(k, v)| (k, Zeroizing::new(v)))
        .collect();
    out.push((
        "authorization",
        Zeroizing::new(format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        )),
    ));
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// S3's URI encoding: unreserved characters as they are, everything else
/// `%XX`; `/` kept unless `encode_slash`.
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What an S3 error document says (`<Error><Code>…</Code><Message>…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3ErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
    /// `<Region>`, sent with a wrong-region answer.
    pub region: Option<String>,
}

/// Reads the fields Ferry uses from an S3 error document (untrusted: size
/// bounded, values cut to 200 characters, never fails).
pub fn parse_error(body: &[u8]) -> S3ErrorBody {
    let body = &body[..body.len().min(MAX_ERROR_BYTES)];
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&close)?;
        let raw = &text[start..start + len];
        let value = raw
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        let value: String = value.chars().filter(|c| !c.is_control()).take(200).collect();
        Some(value.trim().to_owned()).filter(|v| !v.is_empty())
    };
    S3ErrorBody {
        code: field("Code"),
        message: field("Message"),
        region: field("Region"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the empty payload (GET and HEAD carry none).
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn creds(id: &str, secret: &str) -> AwsCredentials {
        AwsCredentials {
            access_key_id: id.into(),
            secret_access_key: Zeroizing::new(secret.into()),
            session_token: None,
            source: "test".into(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The signature of `url` (and `extra` headers) with the key pair of
    /// AWS's S3 Signature Version 4 examples, at their date.
    fn example_signature(url: &str, extra: &[(&'static str, &str)]) -> String {
        let h = sign_with(
            "GET",
            &reqwest::Url::parse(url).unwrap(),
            ("us-east-1", "s3"),
            &creds("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            at("2013-05-24T00:00:00Z"),
            &Payload {
                extra,
                sha256: EMPTY_SHA256,
            },
        );
        let auth = h
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1
            .to_string();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;"
        ));
        auth.rsplit("Signature=").next().unwrap().to_owned()
    }

    /// The published examples of the S3 API reference ("Signature
    /// Calculations for the Authorization Header: Transferring Payload in a
    /// Single Chunk"): GET Object (with a Range header), GET Bucket Lifecycle
    /// and GET Bucket (List Objects).
    #[test]
    fn sigv4_matches_the_aws_s3_examples() {
        assert_eq!(
            example_signature(
                "https://examplebucket.s3.amazonaws.com/test.txt",
                &[("range", "bytes=0-9")]
            ),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(
            example_signature("https://examplebucket.s3.amazonaws.com/?lifecycle", &[]),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
        assert_eq!(
            example_signature("https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J", &[]),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn sigv4_signing_key_matches_the_aws_documentation() {
        // "Examples of how to derive a signing key for Signature Version 4".
        let secret = "AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let k = hmac(secret.as_bytes(), b"20120215");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"iam");
        let k = hmac(&k, b"aws4_request");
        assert_eq!(
            hex(&k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn s3_urls_as_nix_spells_them() {
        let aws = S3Cache::parse("s3://nix-cache?region=eu-central-1").unwrap();
        assert_eq!(
            aws.object_url("abc.narinfo"),
            "https://nix-cache.s3.eu-central-1.amazonaws.com/abc.narinfo"
        );
        let minio = S3Cache::parse("s3://cache?endpoint=minio.example.com:9000&profile=ci&region=x").unwrap();
        assert_eq!(
            minio.object_url("nar/a.nar.zst"),
            "https://minio.example.com:9000/cache/nar/a.nar.zst"
        );
        assert_eq!(minio.profile.as_deref(), Some("ci"));
        let local = S3Cache::parse("s3://cache?endpoint=http://127.0.0.1:5000").unwrap();
        assert_eq!(
            local.object_url("nix-cache-info"),
            "http://127.0.0.1:5000/cache/nix-cache-info"
        );
        let virt = S3Cache::parse("s3://cache?endpoint=r2.example.com&addressing-style=virtual").unwrap();
        assert_eq!(virt.object_url("x"), "https://cache.r2.example.com/x");
        assert_eq!(S3Cache::parse("s3://a.b.c").unwrap().addressing, Addressing::Path);
        for (bad, says) in [
            ("s3://Bucket", "bucket name"),
            ("s3://ok-bucket?region=", "needs a value"),
            ("s3://ok-bucket?colour=red", "unknown parameter `colour`"),
            ("s3://ok-bucket?scheme=ftp", "https or http"),
            ("s3://ok-bucket?endpoint=http://u@h", "not a host"),
            // Found by the fuzzer: a region or endpoint that moves the URL.
            ("s3://ok-bucket?region=x@evil.example#", "not a region name"),
            ("s3://ok-bucket?region=eu-?x", "not a region name"),
            ("s3://ok-bucket?endpoint=h\\x", "not a host"),
        ] {
            let e = S3Cache::parse(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_from_the_variables_the_shared_file_or_a_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = sdef\n\n; comment\n[ci]\naws_access_key_id=AKCI\naws_secret_access_key=sci\naws_session_token = tok\n",
        )
        .unwrap();
        let file_s = file.display().to_string();
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKENV".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("senv".to_owned()),
            "AWS_SHARED_CREDENTIALS_FILE" => Some(file_s.clone()),
            _ => None,
        };
        assert_eq!(find_credentials(None, None, &env).unwrap().access_key_id, "AKENV");
        let ci = find_credentials(None, Some("ci"), &env).unwrap();
        assert_eq!(ci.access_key_id, "AKCI");
        assert_eq!(ci.session_token.as_deref().map(String::as_str), Some("tok"));
        assert!(!format!("{ci:?}").contains("sci"));
        assert_eq!(
            find_credentials(Some(&file), None, &env).unwrap().access_key_id,
            "AKDEF"
        );
        let e = find_credentials(Some(&file), Some("prod"), &env).unwrap_err();
        assert!(e.to_string().contains("no profile [prod]"), "{e}");
        let e = find_credentials(Some(&dir.path().join("none")), None, &env).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn s3_error_documents() {
        let e = parse_error(
            b"<?xml version=\"1.0\"?><Error><Code>AuthorizationHeaderMalformed</Code><Message>the region &apos;us-east-1&apos; is wrong</Message><Region>eu-west-1</Region></Error>",
        );
        assert_eq!(e.code.as_deref(), Some("AuthorizationHeaderMalformed"));
        assert_eq!(e.message.as_deref(), Some("the region 'us-east-1' is wrong"));
        assert_eq!(e.region.as_deref(), Some("eu-west-1"));
        assert_eq!(parse_error(b"not xml"), S3ErrorBody::default());
        assert_eq!(parse_error(b"<Code></Code>").code, None);
        assert_eq!(
            parse_error(b"<Code>\x1b[31m</Code>").code.as_deref(),
            Some("[31m")
        );
    }

    #[test]
    fn uri_encoding_keeps_unreserved_and_slashes() {
        assert_eq!(uri_encode("nar/a+b c.nar", false), "nar/a%2Bb%20c.nar");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
    }
}
