//! A static mirror of the deploy branch: git's "dumb HTTP" layout, plain
//! files any web server, bucket or CDN serves, and `git clone` reads.
//!
//! ```text
//! HEAD                       ref: refs/heads/<branch>
//! info/refs                  <commit>\trefs/heads/<branch>
//! objects/info/packs         P pack-<hash>.pack, one line per pack
//! objects/pack/pack-<hash>.{pack,idx}
//! ```
//!
//! Each update adds one pack holding what the new tip has that the
//! mirrored tip did not; packs already there are never rewritten, so a
//! cache in front keeps them for ever and an agent downloads only the packs
//! it lacks. Files are written so that a reader never sees a ref before its
//! objects: the pack and its index first, then the pack list, then
//! `info/refs`, each whole (a rename on disk, one PUT in a bucket). The
//! mirror lives in a directory a web server serves ([`DirStore`]) or in an
//! S3 bucket ([`S3Store`], signed as the agent signs its reads). It is
//! untrusted: every agent verifies what it reads from it exactly as from
//! the forge.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

/// Why a mirror could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("the branch `{branch}` does not exist in {repo}")]
    NoBranch { repo: PathBuf, branch: String },
    #[error("cannot write the mirror at {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the mirror's `{file}` is not one Ferry or `git update-server-info` wrote: {detail}; write the mirror afresh into an empty directory")]
    Foreign { file: &'static str, detail: String },
    #[error("`{0}`: {1}")]
    Target(String, String),
    #[error("{url}: {detail}")]
    S3 { url: String, detail: String },
    #[error(transparent)]
    Git(#[from] git2::Error),
}

impl MirrorError {
    /// A request to `url` in a bucket that failed with `detail`.
    fn s3(url: &impl std::fmt::Display, detail: impl std::fmt::Display) -> Self {
        Self::S3 {
            url: url.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirrored {
    /// The mirror already had this tip.
    UpToDate { tip: Oid },
    /// A pack (`pack-<name>.pack`) with `objects` objects was added, and the
    /// branch now points at `tip`.
    Added { tip: Oid, pack: String, objects: usize },
}

/// The mirror's files, as a reader finds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// `(commit, ref name)` from `info/refs`.
    pub refs: Vec<(Oid, String)>,
    /// Pack names (`pack-<hash>.pack`) from `objects/info/packs`.
    pub packs: Vec<String>,
}

/// The most bytes of `info/refs` or `objects/info/packs` read (a deploy
/// mirror has one ref and a pack per release).
pub const MAX_INDEX_BYTES: usize = 4 << 20;

/// Parses `info/refs`: `<40 hex>\t<ref name>` lines (peeled tags, `^{}`,
/// are skipped). Untrusted input: anything else is refused, by line.
pub fn parse_refs(text: &str) -> Result<Vec<(Oid, String)>, String> {
    let mut refs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let (id, name) = line
            .split_once('\t')
            .ok_or_else(|| format!("line {}: expected `<commit>\\t<ref>`", i + 1))?;
        if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {}: `{}` is not a commit id", i + 1, short(id)));
        }
        if name.ends_with("^{}") {
            continue;
        }
        if !git2::Reference::is_valid_name(name) {
            return Err(format!("line {}: `{}` is not a ref name", i + 1, short(name)));
        }
        let oid = Oid::from_str(id).map_err(|e| format!("line {}: {}", i + 1, e.message()))?;
        refs.push((oid, name.to_owned()));
    }
    Ok(refs)
}

/// Parses `objects/info/packs`: `P pack-<40 hex>.pack` lines (a blank line
/// ends it, as git writes it). Untrusted input: a name that is not a pack's
/// is refused, so it can never name a path of its own choosing.
pub fn parse_packs(text: &str) -> Result<Vec<String>, String> {
    let mut packs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let name = line
            .strip_prefix("P ")
            .ok_or_else(|| format!("line {}: expected `P pack-<hash>.pack`", i + 1))?;
        if !is_pack_name(name) {
            return Err(format!("line {}: `{}` is not a pack name", i + 1, short(name)));
        }
        packs.push(name.to_owned());
    }
    Ok(packs)
}

/// `pack-<40 or 64 hex>.pack`.
pub fn is_pack_name(name: &str) -> bool {
    name.strip_prefix("pack-")
        .and_then(|n| n.strip_suffix(".pack"))
        .is_some_and(|h| (h.len() == 40 || h.len() == 64) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Where a mirror's files live, named by their path in the layout
/// (`info/refs`, `objects/pack/pack-….pack`).
pub trait Store {
    /// The file, or `None` when there is none.
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, MirrorError>;
    /// Whether the file is there.
    fn exists(&self, rel: &str) -> Result<bool, MirrorError>;
    /// Writes the file whole: a reader sees the old one or the new one.
    fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), MirrorError>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// A mirror in a directory.
#[derive(Debug, Clone)]
pub struct DirStore(pub PathBuf);

impl Store for DirStore {
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, MirrorError> {
        let path = self.0.join(rel);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MirrorError::Write { path, source }),
        }
    }

    fn exists(&self, rel: &str) -> Result<bool, MirrorError> {
        Ok(self.0.join(rel).exists())
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), MirrorError> {
        write_atomically(&self.0.join(rel), bytes)
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// A mirror in an S3 bucket, under a key prefix:
/// `s3://bucket/prefix?region=…&endpoint=…&profile=…` (the parameters of
/// Nix's `s3://` URLs), with credentials from the standard places.
#[derive(Debug)]
pub struct S3Store {
    location: crate::s3::S3Location,
    credentials: crate::s3::AwsCredentials,
    http: reqwest::blocking::Client,
}

impl S3Store {
    /// The store `url` names, with credentials from `env` (the process's
    /// environment) or the shared credentials file.
    pub fn open(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, MirrorError> {
        let bad = |detail: String| MirrorError::Target(url.to_owned(), detail);
        let location = crate::s3::S3Location::parse(url).map_err(|e| bad(e.problem))?;
        let credentials = crate::s3::find_credentials(None, location.bucket.profile.as_deref(), env)
            .map_err(|e| bad(format!("no credentials: {e}")))?;
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(600))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            location,
            credentials,
            http,
        })
    }

    fn url(&self, rel: &str) -> Result<reqwest::Url, MirrorError> {
        let url = self.location.object_url(rel);
        reqwest::Url::parse(&url).map_err(|e| MirrorError::s3(&url, e))
    }

    /// Sends a signed request; the response of a 2xx or a 404 (`None`).
    fn send(
        &self,
        method: reqwest::Method,
        rel: &str,
        body: Option<&[u8]>,
    ) -> Result<Option<reqwest::blocking::Response>, MirrorError> {
        let url = self.url(rel)?;
        let headers = crate::s3::sign_body(
            method.as_str(),
            &url,
            &self.location.bucket.region,
            "s3",
            &self.credentials,
            chrono::Utc::now(),
            body.unwrap_or_default(),
        );
        let mut request = self.http.request(method, url.clone());
        for (name, value) in headers {
            let mut value =
                reqwest::header::HeaderValue::from_str(&value).map_err(|e| MirrorError::s3(&url, e))?;
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        if let Some(b) = body {
            request = request.body(b.to_vec());
        }
        let response = request.send().map_err(|e| MirrorError::s3(&url, e))?;
        match response.status().as_u16() {
            200..=299 => Ok(Some(response)),
            404 => Ok(None),
            code => {
                let mut text = Vec::new();
                let _ = response
                    .take(crate::s3::MAX_ERROR_BYTES as u64)
                    .read_to_end(&mut text);
                let error = crate::s3::parse_error(&text);
                Err(MirrorError::s3(&url, format!("HTTP {code}: {error:?}")))
            }
        }
    }
}

impl Store for S3Store {
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, MirrorError> {
        let Some(response) = self.send(reqwest::Method::GET, rel, None)? else {
            return Ok(None);
        };
        let url = response.url().clone();
        let mut bytes = Vec::new();
        response
            .take(MAX_INDEX_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| MirrorError::s3(&url, e))?;
        Ok(Some(bytes))
    }

    fn exists(&self, rel: &str) -> Result<bool, MirrorError> {
        Ok(self.send(reqwest::Method::HEAD, rel, None)?.is_some())
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), MirrorError> {
        match self.send(reqwest::Method::PUT, rel, Some(bytes))? {
            Some(_) => Ok(()),
            None => Err(MirrorError::s3(&self.url(rel)?, "HTTP 404: no such bucket")),
        }
    }

    fn describe(&self) -> String {
        self.location.to_string()
    }
}

/// Reads the layout of the mirror in `store` (empty for a new mirror).
pub fn read_layout(store: &dyn Store) -> Result<Layout, MirrorError> {
    let read = |file: &'static str| -> Result<Option<String>, MirrorError> {
        match store.read(file)? {
            Some(bytes) if bytes.len() > MAX_INDEX_BYTES => Err(MirrorError::Foreign {
                file,
                detail: format!("larger than {MAX_INDEX_BYTES} bytes"),
            }),
            Some(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            None => Ok(None),
        }
    };
    let refs = match read("info/refs")? {
        Some(text) => parse_refs(&text).map_err(|detail| MirrorError::Foreign {
            file: "info/refs",
            detail,
        })?,
        None => Vec::new(),
    };
    let packs = match read("objects/info/packs")? {
        Some(text) => parse_packs(&text).map_err(|detail| MirrorError::Foreign {
            file: "objects/info/packs",
            detail,
        })?,
        None => Vec::new(),
    };
    Ok(Layout { refs, packs })
}

/// Brings the mirror in `store` up to `branch` of `repo`: one new pack with
/// what the branch's tip has that the mirrored tips do not (all of it for a
/// new mirror, or when the mirrored tip is not in `repo`), then the pack
/// list and the refs. Idempotent; a crash leaves at worst a pack no list
/// names yet, which the next update names.
pub fn update(repo: &Repository, branch: &str, store: &dyn Store) -> Result<Mirrored, MirrorError> {
    let refname = format!("refs/heads/{branch}");
    let tip = repo
        .find_reference(&refname)
        .ok()
        .and_then(|r| r.target())
        .ok_or_else(|| MirrorError::NoBranch {
            repo: repo.path().to_owned(),
            branch: branch.to_owned(),
        })?;
    let layout = read_layout(store)?;
    let already = layout
        .refs
        .iter()
        .any(|(id, name)| *id == tip && *name == refname);
    if already {
        let mut complete = true;
        for p in &layout.packs {
            complete &= store.exists(&format!("objects/pack/{p}"))?;
        }
        if complete {
            return Ok(Mirrored::UpToDate { tip });
        }
    }

    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    for (mirrored, _) in &layout.refs {
        // A mirrored tip this repository does not have (the branch was
        // rewritten) hides nothing: the new pack then holds everything.
        if repo.find_commit(*mirrored).is_ok() {
            walk.hide(*mirrored)?;
        }
    }
    let mut builder = repo.packbuilder()?;
    builder.insert_walk(&mut walk)?;
    let objects = builder.object_count();
    let mut packs = layout.packs.clone();
    let mut added = None;
    if objects > 0 {
        let staging = tempfile::Builder::new()
            .prefix("ferry-mirror-")
            .tempdir()
            .map_err(|source| MirrorError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        builder.write(staging.path(), 0o644)?;
        let name = builder
            .name()?
            .ok_or_else(|| git2::Error::from_str("the pack builder named no pack"))?
            .to_owned();
        let pack = format!("pack-{name}.pack");
        // The index first: a reader that finds the pack finds its index.
        for ext in ["idx", "pack"] {
            let file = format!("pack-{name}.{ext}");
            let path = staging.path().join(&file);
            let bytes = std::fs::read(&path).map_err(|source| MirrorError::Write { path, source })?;
            store.write(&format!("objects/pack/{file}"), &bytes)?;
        }
        if !packs.contains(&pack) {
            packs.push(pack.clone());
        }
        added = Some(pack);
    }
    let mut list: String = packs.iter().map(|p| format!("P {p}\n")).collect();
    list.push('\n');
    store.write("objects/info/packs", list.as_bytes())?;
    store.write("info/refs", format!("{tip}\t{refname}\n").as_bytes())?;
    store.write("HEAD", format!("ref: {refname}\n").as_bytes())?;
    Ok(match added {
        Some(pack) => Mirrored::Added { tip, pack, objects },
        None => Mirrored::UpToDate { tip },
    })
}

/// Writes `path` by a rename of a synced temporary file beside it, dated
/// at least a second after the file it replaces: `info/refs` keeps its size
/// from one release to the next, and web servers (nginx) derive `ETag` and
/// `Last-Modified` from size and whole-second times, so two updates within
/// a second would otherwise look unchanged to a conditional GET.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MirrorError> {
    use std::io::Write as _;
    let err = |source| MirrorError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    let previous = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let now = std::time::SystemTime::now();
    if let Some(after) = previous
        .map(|p| p + std::time::Duration::from_secs(1))
        .filter(|a| *a > now)
    {
        tmp.as_file().set_modified(after).map_err(err)?;
    }
    tmp.as_file().sync_all().map_err(err)?;
    let tmp = tmp.into_temp_path();
    // Readable by the web server, like the packs.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn refs_and_packs_parse_as_git_writes_them() {
        let refs = parse_refs(&format!("{A}\trefs/heads/deploy\n{A}\trefs/tags/v1^{{}}\n")).unwrap();
        assert_eq!(
            refs,
            [(Oid::from_str(A).unwrap(), "refs/heads/deploy".to_owned())]
        );
        let packs = parse_packs(&format!("P pack-{A}.pack\n\n")).unwrap();
        assert_eq!(packs, [format!("pack-{A}.pack")]);
    }

    #[test]
    fn anything_else_is_refused_by_line() {
        for (text, says) in [
            ("nonsense\n", "line 1: expected"),
            (&format!("{A}x\trefs/heads/deploy\n") as &str, "not a commit id"),
            (&format!("{A}\trefs/heads/../../etc\n"), "not a ref name"),
        ] {
            let e = parse_refs(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        for (text, says) in [
            ("pack-x.pack\n", "line 1: expected"),
            ("P ../../../etc/passwd\n", "not a pack name"),
            (&format!("P pack-{A}.idx\n") as &str, "not a pack name"),
        ] {
            let e = parse_packs(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
