//! The deploy branch read from a static mirror (git's "dumb HTTP" layout,
//! as `ferry-signer mirror` writes it and any web server, bucket or CDN
//! serves it). libgit2 does not speak that protocol, so this is the agent's
//! own: a tip check is one conditional GET of `info/refs` (a 304 when
//! nothing changed: a few hundred bytes, headers included); a fetch reads
//! `objects/info/packs` and downloads only the packs this host lacks,
//! indexed by libgit2 as they arrive. Same deadlines and caps as the other
//! transports; a redirect to another host is refused. Nothing here is
//! trusted: the source verifies what it fetched exactly as from a forge.

use std::io::{self, Read};
use std::sync::Mutex;
use std::time::Duration;

use git2::{Oid, Repository};
use reqwest::header::HeaderValue;

use crate::io::git::http::{basic_auth, body_error, client, request_error, time_left};
use crate::io::git::limits::{LS_TIMEOUT, MAX_FETCH_BYTES, PACK_TIMEOUT};
use ferry_signer::mirror::{is_pack_name, parse_packs, parse_refs, MAX_INDEX_BYTES};

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

/// One mirror's URL and what was last read from it.
#[derive(Debug)]
pub struct Mirror {
    base: String,
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
    pub fn new(url: &str) -> Self {
        Self {
            base: url.trim_end_matches('/').to_owned(),
            last: Mutex::new(None),
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
        let mut request = client()?.get(format!("{}/{rel}", self.base)).timeout(timeout);
        if let Some(auth) = auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        for (name, value) in extra {
            request = request.header(name, value.clone());
        }
        let response = request.send().map_err(|e| request_error(e, limit))?;
        match response.status().as_u16() {
            200 | 304 => Ok((response, limit)),
            401 | 403 if auth.is_some() => Err(io::Error::other(format!(
                "{rel}: HTTP {}: the token in source.token_file was refused",
                response.status().as_u16()
            ))
            .into()),
            code => Err(io::Error::other(format!(
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
    /// (`If-None-Match`, `If-Modified-Since`), so an unchanged mirror answers
    /// 304 and nothing is read.
    pub fn tip(&self, branch: &str, auth: Option<&HeaderValue>) -> Result<Oid, MirrorFault> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut conditions = Vec::new();
        if let Some(last) = &last {
            if let Some(etag) = &last.etag {
                conditions.push((reqwest::header::IF_NONE_MATCH, etag.clone()));
            }
            if let Some(modified) = &last.last_modified {
                conditions.push((reqwest::header::IF_MODIFIED_SINCE, modified.clone()));
            }
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
    /// within the fetch deadline and cap. Returns how many were new.
    pub fn fetch(&self, repo: &Repository, auth: Option<&HeaderValue>) -> Result<usize, MirrorFault> {
        let (response, limit) = self.get("objects/info/packs", PACK_TIMEOUT, auth, &[])?;
        let text = read_index(response, MAX_INDEX_BYTES, limit, "objects/info/packs")?;
        let packs = parse_packs(&text).map_err(|detail| MirrorFault::Bad {
            file: "objects/info/packs".into(),
            detail,
        })?;
        let have = repo.path().join("objects/pack");
        let mut budget = MAX_FETCH_BYTES as u64;
        let mut fetched = 0;
        for name in packs.iter().filter(|p| !have.join(p).exists()) {
            debug_assert!(is_pack_name(name));
            let rel = format!("objects/pack/{name}");
            let (response, limit) = self.get(&rel, PACK_TIMEOUT, auth, &[])?;
            budget -= self.index_pack(repo, response, name, &rel, budget, limit)?;
            fetched += 1;
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
