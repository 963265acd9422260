//! The deploy branch read from a static mirror (git's "dumb HTTP" layout,
//! as `ferry-signer mirror` writes it and any web server, bucket or CDN
//! serves it). libgit2 does not speak that protocol, so this is the agent's
//! own: a tip check is one conditional GET of `info/refs` (a 304 when
//! nothing changed: a few hundred bytes, headers included); a fetch reads
//! `objects/info/packs` and downloads only the packs this host lacks,
//! indexed by libgit2 as they arrive. Same deadlines and caps as the other
//! transports; a redirect to another host is refused. A mirror in an S3
//! bucket (`s3://bucket/prefix`) is read the same way with signed GETs, so
//! the bucket can stay private. Nothing here is trusted: the source
//! verifies what it fetched exactly as from a forge.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use git2::{Oid, Repository};
use reqwest::header::HeaderValue;

use crate::io::git::http::{basic_auth, body_error, client, request_error, time_left};
use crate::io::git::limits::{LS_TIMEOUT, MAX_FETCH_BYTES, PACK_TIMEOUT};
use ferry_signer::mirror::{is_pack_name, parse_packs, parse_refs, MAX_INDEX_BYTES};
use ferry_signer::s3::{AwsCredentials, AwsCredentialsError, S3Location};

/// Why the mirror could not be read. Every one is worth a retry: a mirror
/// being written, a CDN serving a stale or cut file, a server restarting.
#[derive(Debug, thiserror::Error)]
pub enum MirrorFault {
    #[error("{0}")]
    Http(#[from] io::Error),
    #[error("{file}: {detail}")]
    Bad { file: String, detail: String },
    #[error("the mirror has no branch `{0}`")]
    NoBranch(String),
    #[error("the packs would exceed {MAX_FETCH_BYTES} bytes")]
    TooLarge,
    #[error("no credentials for {location}: {source} (set source.s3_credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the agent's environment)")]
    Credentials {
        location: String,
        source: AwsCredentialsError,
    },
    #[error(transparent)]
    Git(#[from] git2::Error),
}

/// The last `info/refs` read, with what to ask again with.
#[derive(Debug, Clone)]
struct LastRefs {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    tip: Oid,
}

/// Where a mirror's files are read from.
#[derive(Debug)]
enum Origin {
    /// A web server or CDN: plain GETs, with the source's token if any.
    Web(String),
    /// A bucket: GETs signed with the key from `credentials_file` or the
    /// standard places, or anonymous ones when none is configured anywhere
    /// (a public bucket).
    S3 {
        location: S3Location,
        credentials_file: Option<PathBuf>,
    },
}

/// A GET of one file of the mirror, ready to send.
struct Prepared {
    url: String,
    headers: Vec<(&'static str, HeaderValue)>,
    /// What a 401 or 403 means, when credentials were sent or are needed.
    refused: Option<String>,
}

/// One mirror's origin and what was last read from it.
#[derive(Debug)]
pub struct Mirror {
    origin: Origin,
    last: Mutex<Option<LastRefs>>,
}

/// Whether `url` serves a static mirror rather than git's smart protocol:
/// asked the way git asks (`info/refs?service=git-upload-pack`), a smart
/// server answers with its advertisement's content type, a static one with
/// the plain `info/refs` file. `None` when it cannot tell yet (anything
/// but a 200: a mirror not written yet, a server down), to ask again later.
pub fn is_static(url: &str, auth: Option<&HeaderValue>) -> Result<Option<bool>, MirrorFault> {
    let (timeout, limit) = time_left(LS_TIMEOUT)?;
    let mut request = client()?
        .get(format!(
            "{}/info/refs?service=git-upload-pack",
            url.trim_end_matches('/')
        ))
        .timeout(timeout);
    if let Some(auth) = auth {
        request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
    }
    let response = request.send().map_err(|e| request_error(e, limit))?;
    if response.status().as_u16() != 200 {
        return Ok(None);
    }
    let smart = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-git-upload-pack-advertisement"));
    Ok(Some(!smart))
}

impl Mirror {
    /// A mirror served over http(s) at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            origin: Origin::Web(url.trim_end_matches('/').to_owned()),
            last: Mutex::new(None),
        }
    }

    /// A mirror in a bucket, read with the key pair in `credentials_file`
    /// (AWS shared-credentials format) or found as for `s3://` caches.
    pub fn s3(location: S3Location, credentials_file: Option<PathBuf>) -> Self {
        Self {
            origin: Origin::S3 {
                location,
                credentials_file,
            },
            last: Mutex::new(None),
        }
    }

    /// The key pair a bucket is read with, read afresh (a rotated key is
    /// picked up); `None` to read anonymously when nothing is configured.
    fn s3_credentials(
        location: &S3Location,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<AwsCredentials>, MirrorFault> {
        match ferry_signer::s3::find_credentials(file, location.bucket.profile.as_deref(), env) {
            Ok(c) => Ok(Some(c)),
            Err(AwsCredentialsError::Read { .. })
                if file.is_none()
                    && location.bucket.profile.is_none()
                    && env("AWS_SHARED_CREDENTIALS_FILE").is_none() =>
            {
                Ok(None)
            }
            Err(source) => Err(MirrorFault::Credentials {
                location: location.to_string(),
                source,
            }),
        }
    }

    /// The request for `rel`, with the token or, for a bucket, the
    /// signature (nothing when reading a public bucket anonymously).
    fn request(&self, rel: &str, auth: Option<&HeaderValue>) -> Result<Prepared, MirrorFault> {
        match &self.origin {
            Origin::Web(base) => {
                let headers = auth
                    .map(|a| vec![("authorization", a.clone())])
                    .unwrap_or_default();
                let refused = auth.map(|_| "the token in source.token_file was refused".to_owned());
                Ok(Prepared {
                    url: format!("{base}/{rel}"),
                    headers,
                    refused,
                })
            }
            Origin::S3 {
                location,
                credentials_file,
            } => {
                let url = location.object_url(rel);
                let env = |k: &str| std::env::var(k).ok();
                let Some(credentials) = Self::s3_credentials(location, credentials_file.as_deref(), &env)?
                else {
                    let refused = "the bucket does not allow anonymous reads: set source.s3_credentials_file";
                    return Ok(Prepared {
                        url,
                        headers: Vec::new(),
                        refused: Some(refused.into()),
                    });
                };
                let parsed = reqwest::Url::parse(&url).map_err(|e| MirrorFault::Bad {
                    file: rel.to_owned(),
                    detail: e.to_string(),
                })?;
                let mut headers = Vec::new();
                for (name, value) in ferry_signer::s3::sign(
                    "GET",
                    &parsed,
                    &location.bucket.region,
                    "s3",
                    &credentials,
                    chrono::Utc::now(),
                ) {
                    let mut value = HeaderValue::from_str(&value).map_err(|e| MirrorFault::Bad {
                        file: rel.to_owned(),
                        detail: e.to_string(),
                    })?;
                    value.set_sensitive(true);
                    headers.push((name, value));
                }
                let refused = format!(
                    "the bucket refused the key from {}: check it, and that the bucket's policy lets it read {location}",
                    credentials.source
                );
                Ok(Prepared {
                    url,
                    headers,
                    refused: Some(refused),
                })
            }
        }
    }

    /// GETs `rel` under the mirror, within what is left of `default`'s
    /// deadline, with `auth` and the extra headers; the response of a 200 or
    /// a 304, else the status in words.
    fn get(
        &self,
        rel: &str,
        default: Duration,
        auth: Option<&HeaderValue>,
        extra: &[(reqwest::header::HeaderName, HeaderValue)],
    ) -> Result<(reqwest::blocking::Response, Duration), MirrorFault> {
        let (timeout, limit) = time_left(default)?;
        let Prepared {
            url,
            headers,
            refused,
        } = self.request(rel, auth)?;
        let mut request = client()?.get(url).timeout(timeout);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        for (name, value) in extra {
            request = request.header(name, value.clone());
        }
        let response = request.send().map_err(|e| request_error(e, limit))?;
        match (response.status().as_u16(), refused) {
            (200 | 304, _) => Ok((response, limit)),
            (code @ (401 | 403), Some(refused)) => {
                Err(io::Error::other(format!("{rel}: HTTP {code}: {refused}")).into())
            }
            (code, _) => Err(io::Error::other(format!(
                "{rel}: HTTP {code}: {}",
                response
                    .status()
                    .canonical_reason()
                    .unwrap_or("unexpected status")
            ))
            .into()),
        }
    }

    /// The branch tip: one GET of `info/refs`, conditional on the last one
    /// (`If-None-Match`, else `If-Modified-Since`), so an unchanged mirror answers
    /// 304 and nothing is read.
    pub fn tip(&self, branch: &str, auth: Option<&HeaderValue>) -> Result<Oid, MirrorFault> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut conditions = Vec::new();
        // The ETag alone when there is one: a date has a resolution of a
        // second, and S3 answers 304 to a date condition that holds even
        // when the ETag differs (a mirror rewritten within the second).
        match &last {
            Some(LastRefs { etag: Some(etag), .. }) => {
                conditions.push((reqwest::header::IF_NONE_MATCH, etag.clone()))
            }
            Some(LastRefs {
                last_modified: Some(modified),
                ..
            }) => conditions.push((reqwest::header::IF_MODIFIED_SINCE, modified.clone())),
            _ => {}
        }
        let (response, limit) = self.get("info/refs", LS_TIMEOUT, auth, &conditions)?;
        if response.status().as_u16() == 304 {
            if let Some(last) = last {
                return Ok(last.tip);
            }
        }
        let etag = response.headers().get(reqwest::header::ETAG).cloned();
        let last_modified = response.headers().get(reqwest::header::LAST_MODIFIED).cloned();
        let text = read_index(response, MAX_INDEX_BYTES, limit, "info/refs")?;
        let wanted = format!("refs/heads/{branch}");
        let refs = parse_refs(&text).map_err(|detail| MirrorFault::Bad {
            file: "info/refs".into(),
            detail,
        })?;
        let tip = refs
            .into_iter()
            .find(|(_, name)| *name == wanted)
            .map(|(id, _)| id)
            .ok_or_else(|| MirrorFault::NoBranch(branch.to_owned()))?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRefs {
            etag,
            last_modified,
            tip,
        });
        Ok(tip)
    }

    /// Downloads the packs `repo` lacks, each indexed as it arrives, all
    /// within the fetch deadline and cap. Returns the bytes downloaded.
    pub fn fetch(&self, repo: &Repository, auth: Option<&HeaderValue>) -> Result<u64, MirrorFault> {
        let (response, limit) = self.get("objects/info/packs", PACK_TIMEOUT, auth, &[])?;
        let text = read_index(response, MAX_INDEX_BYTES, limit, "objects/info/packs")?;
        let packs = parse_packs(&text).map_err(|detail| MirrorFault::Bad {
            file: "objects/info/packs".into(),
            detail,
        })?;
        let have = repo.path().join("objects/pack");
        let mut fetched = 0;
        for name in packs.iter().filter(|p| !have.join(p).exists()) {
            debug_assert!(is_pack_name(name));
            let rel = format!("objects/pack/{name}");
            let (response, limit) = self.get(&rel, PACK_TIMEOUT, auth, &[])?;
            fetched += self.index_pack(
                repo,
                response,
                name,
                &rel,
                MAX_FETCH_BYTES as u64 - fetched,
                limit,
            )?;
        }
        Ok(fetched)
    }

    /// Streams one pack into the repository's object database (libgit2
    /// checks it and writes its index); refused past `budget` bytes, or when
    /// its checksum is not the one its name promises. Returns its size.
    fn index_pack(
        &self,
        repo: &Repository,
        mut response: reqwest::blocking::Response,
        name: &str,
        rel: &str,
        budget: u64,
        limit: Duration,
    ) -> Result<u64, MirrorFault> {
        let odb = repo.odb()?;
        let mut writer = odb.packwriter()?;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        // The last 20 bytes of a pack are its SHA-1, which names it.
        let mut tail: Vec<u8> = Vec::with_capacity(40);
        loop {
            let n = response.read(&mut buf).map_err(|e| body_error(e, limit))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > budget {
                return Err(MirrorFault::TooLarge);
            }
            std::io::Write::write_all(&mut writer, &buf[..n]).map_err(|e| MirrorFault::Bad {
                file: rel.to_owned(),
                detail: format!("not a valid pack: {e}"),
            })?;
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 20 {
                tail.drain(..tail.len() - 20);
            }
        }
        let named = name.trim_start_matches("pack-").trim_end_matches(".pack");
        let checksum: String = tail.iter().map(|b| format!("{b:02x}")).collect();
        if checksum != named {
            return Err(MirrorFault::Bad {
                file: rel.to_owned(),
                detail: "truncated, or not the pack its name says (its checksum differs)".into(),
            });
        }
        writer.commit().map_err(|e| MirrorFault::Bad {
            file: rel.to_owned(),
            detail: format!("not a valid pack: {}", e.message()),
        })?;
        Ok(total)
    }
}

/// Whether `commit`, its tree's entries and every commit of its history are
/// in `repo`: a revwalk fails at the first missing commit.
pub fn complete(repo: &Repository, commit: Oid) -> Result<(), git2::Error> {
    let tree = repo.find_commit(commit)?.tree()?;
    let odb = repo.odb()?;
    for entry in tree.iter() {
        if !odb.exists(entry.id()) {
            return Err(git2::Error::from_str(
                "an object of the release's tree is missing",
            ));
        }
    }
    let mut walk = repo.revwalk()?;
    walk.push(commit)?;
    for id in walk {
        repo.find_commit(id?)?;
    }
    Ok(())
}

/// Reads a small index file, refused past `cap` bytes.
fn read_index(
    response: reqwest::blocking::Response,
    cap: usize,
    limit: Duration,
    file: &str,
) -> Result<String, MirrorFault> {
    let mut bytes = Vec::new();
    response
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| body_error(e, limit))?;
    if bytes.len() > cap {
        return Err(MirrorFault::Bad {
            file: file.into(),
            detail: format!("larger than {cap} bytes: not a deploy mirror, or a hostile server"),
        });
    }
    String::from_utf8(bytes).map_err(|_| MirrorFault::Bad {
        file: file.into(),
        detail: "not text".into(),
    })
}

/// `Authorization` for a token, as the smart transport sends it.
pub fn auth(token: Option<&str>) -> Result<Option<HeaderValue>, git2::Error> {
    token.map(basic_auth).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> S3Location {
        S3Location::parse("s3://deploy/ops/deploy.git?region=eu-central-1").unwrap()
    }

    #[test]
    fn a_bucket_is_read_anonymously_only_when_no_key_is_configured_anywhere() {
        let nothing = |k: &str| (k == "HOME").then(|| "/nonexistent".to_owned());
        assert!(Mirror::s3_credentials(&location(), None, &nothing)
            .unwrap()
            .is_none());

        let named = Mirror::s3_credentials(&location(), Some(Path::new("/run/missing")), &nothing)
            .unwrap_err()
            .to_string();
        assert!(
            named.contains("s3://deploy/ops/deploy.git")
                && named.contains("/run/missing")
                && named.contains("source.s3_credentials_file"),
            "{named}"
        );

        let keys = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_owned()),
            _ => None,
        };
        let found = Mirror::s3_credentials(&location(), None, &keys).unwrap().unwrap();
        assert_eq!(found.access_key_id, "AKID");
    }
}
