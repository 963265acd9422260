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
//! `info/refs`, each by an atomic rename. The mirror is untrusted: every
//! agent verifies what it reads from it exactly as from the forge.

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
    #[error(transparent)]
    Git(#[from] git2::Error),
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

/// Reads the layout of the mirror at `dir` (empty for a new mirror).
pub fn read_layout(dir: &Path) -> Result<Layout, MirrorError> {
    let read = |file: &'static str| -> Result<Option<String>, MirrorError> {
        let path = dir.join(file);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() > MAX_INDEX_BYTES => Err(MirrorError::Foreign {
                file,
                detail: format!("larger than {MAX_INDEX_BYTES} bytes"),
            }),
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MirrorError::Write { path, source }),
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

/// Brings the mirror at `dir` up to `branch` of `repo`: one new pack with
/// what the branch's tip has that the mirrored tips do not (all of it for a
/// new mirror, or when the mirrored tip is not in `repo`), then the pack
/// list and the refs. Idempotent; a crash leaves at worst a pack no list
/// names yet, which the next update names.
pub fn update(repo: &Repository, branch: &str, dir: &Path) -> Result<Mirrored, MirrorError> {
    let refname = format!("refs/heads/{branch}");
    let tip = repo
        .find_reference(&refname)
        .ok()
        .and_then(|r| r.target())
        .ok_or_else(|| MirrorError::NoBranch {
            repo: repo.path().to_owned(),
            branch: branch.to_owned(),
        })?;
    let layout = read_layout(dir)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| MirrorError::Write { path, source }
    };
    let pack_dir = dir.join("objects/pack");
    std::fs::create_dir_all(&pack_dir).map_err(io(&pack_dir))?;
    std::fs::create_dir_all(dir.join("info")).map_err(io(&dir.join("info")))?;
    let already = layout
        .refs
        .iter()
        .any(|(id, name)| *id == tip && *name == refname);
    if already && layout.packs.iter().all(|p| pack_dir.join(p).exists()) {
        return Ok(Mirrored::UpToDate { tip });
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
        // Written beside the final names, then renamed: a reader following
        // the list never finds half a pack.
        let staging = tempfile::Builder::new()
            .prefix(".ferry-pack-")
            .tempdir_in(&pack_dir)
            .map_err(io(&pack_dir))?;
        builder.write(staging.path(), 0o644)?;
        let name = builder
            .name()?
            .ok_or_else(|| git2::Error::from_str("the pack builder named no pack"))?
            .to_owned();
        let pack = format!("pack-{name}.pack");
        for ext in ["idx", "pack"] {
            let file = format!("pack-{name}.{ext}");
            let to = pack_dir.join(&file);
            std::fs::rename(staging.path().join(&file), &to).map_err(io(&to))?;
        }
        if !packs.contains(&pack) {
            packs.push(pack.clone());
        }
        added = Some(pack);
    }
    let mut list: String = packs.iter().map(|p| format!("P {p}\n")).collect();
    list.push('\n');
    write_atomically(&dir.join("objects/info/packs"), list.as_bytes())?;
    write_atomically(&dir.join("info/refs"), format!("{tip}\t{refname}\n").as_bytes())?;
    write_atomically(&dir.join("HEAD"), format!("ref: {refname}\n").as_bytes())?;
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
