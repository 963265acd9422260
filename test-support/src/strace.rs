//! What a power cut would keep, read from a syscall trace: `strace` records
//! every file operation a program makes, and [`check`] holds those inside one
//! directory to the order a power cut requires. A cut keeps only what was
//! synced, so a file that replaces another must have its data synced before
//! the rename that makes it appear, and the rename, like every entry created
//! or removed, must be synced in its directory before the program goes on to
//! the next change. A file written in place (not atomically) is named.

use std::collections::{BTreeSet, HashMap};

/// The system calls [`command`] traces.
const TRACED: &str = "trace=open,openat,creat,write,pwrite64,writev,fsync,fdatasync,\
                      rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,rmdir";

/// The `strace` command line (before the traced program's) that writes the
/// trace [`parse`] reads to `output`: every thread followed, file
/// descriptors shown with their paths, no data.
pub fn command(output: &str) -> Vec<String> {
    ["strace", "-f", "-qq", "-y", "-s", "0", "-e", TRACED, "-o", output]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// One system call that succeeded, as the thread `pid` made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub pid: u32,
    pub name: String,
    pub args: String,
    /// The line of the trace, for messages.
    pub line: usize,
}

/// The successful calls of a trace written with [`command`], in order (a
/// call another thread interrupted is put together again).
pub fn parse(text: &str) -> Vec<Call> {
    let mut unfinished: HashMap<u32, String> = HashMap::new();
    let mut calls = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((pid, rest)) = line.trim_start().split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let rest = rest.trim_start();
        let whole = if let Some(start) = rest.strip_suffix("<unfinished ...>") {
            unfinished.insert(pid, start.trim_end().to_owned());
            continue;
        } else if rest.starts_with("<... ") {
            let Some((_, tail)) = rest.split_once(" resumed>") else {
                continue;
            };
            match unfinished.remove(&pid) {
                Some(start) => format!("{start}{tail}"),
                None => continue,
            }
        } else {
            rest.to_owned()
        };
        // `name(args) = result`, strace padding the `=` with spaces.
        let Some(open) = whole.find('(') else { continue };
        let Some(eq) = whole.rfind(" = ") else { continue };
        let head = whole[..eq].trim_end();
        let Some(close) = head.strip_suffix(')').map(str::len) else {
            continue;
        };
        let result = whole[eq + 3..].trim();
        if result.starts_with('-') || close < open {
            continue;
        }
        calls.push(Call {
            pid,
            name: whole[..open].to_owned(),
            args: whole[open + 1..close].to_owned(),
            line: i + 1,
        });
    }
    calls
}

/// The quoted strings among a call's arguments (its paths).
fn quoted(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = args;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out
}

/// The path of the file descriptor a call's arguments begin with (`7</a/b>`).
fn fd_path(args: &str) -> Option<String> {
    let start = args.find('<')?;
    if !args[..start].chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let end = args[start..].find('>')?;
    Some(args[start + 1..start + end].to_owned())
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => path[..i].into(),
        None => ".".into(),
    }
}

/// Whether a call puts a file in place under a new name (its second path).
fn names(call: &str) -> bool {
    matches!(call, "rename" | "renameat" | "renameat2" | "link" | "linkat")
}

/// Holds every file put in place under `under` (renamed or linked there) to
/// the first rule of [`check`] alone: its data synced before it is named.
/// For a program whose other writes are its own business (libgit2's objects
/// and refs). Returns how many files were put in place, or every breach.
pub fn synced_before_named(calls: &[Call], under: &str) -> Result<usize, Vec<String>> {
    let mut synced: HashMap<(u32, String), bool> = HashMap::new();
    let mut named = 0;
    let mut breaches = Vec::new();
    for call in calls {
        match call.name.as_str() {
            "write" | "pwrite64" | "writev" => {
                if let Some(path) = fd_path(&call.args) {
                    synced.insert((call.pid, path), false);
                }
            }
            "fsync" | "fdatasync" => {
                if let Some(path) = fd_path(&call.args) {
                    synced.insert((call.pid, path), true);
                }
            }
            name if names(name) => {
                let paths = quoted(&call.args);
                let [src, dst, ..] = paths.as_slice() else {
                    continue;
                };
                if !dst.starts_with(&format!("{under}/")) {
                    continue;
                }
                named += 1;
                if synced.get(&(call.pid, src.clone())) != Some(&true) {
                    breaches.push(format!(
                        "line {}: {src} is named {dst} before its data was synced",
                        call.line
                    ));
                }
            }
            _ => {}
        }
    }
    if breaches.is_empty() {
        Ok(named)
    } else {
        Err(breaches)
    }
}

/// What a trace shows was done durably in the directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Durable {
    /// Files put in place by a rename, their data synced first.
    pub replaced: BTreeSet<String>,
    /// Files removed, the removal synced.
    pub removed: BTreeSet<String>,
    /// Directories created, synced in their parent.
    pub created: BTreeSet<String>,
}

/// Holds the calls inside `dir` (and `dir` itself) to the order a power cut
/// requires, thread by thread:
///
/// - a rename's source was synced (`fsync`, `fdatasync`) after its last write;
/// - a rename, a removal or a new directory is synced in its directory (an
///   `fsync` of the directory) before the thread's next rename, new
///   directory or new file, and before the trace ends;
/// - nothing is written in place except the files named in `in_place`
///   (basenames: files kept for information only) and the files a rename
///   of the trace puts in place.
///
/// Paths under one of `left` (another program's files, such as libgit2's
/// repository) are left out. Returns what was done durably, or every
/// breach, with its trace line.
pub fn check(calls: &[Call], dir: &str, in_place: &[&str], left: &[&str]) -> Result<Durable, Vec<String>> {
    let left = |p: &str| left.iter().any(|l| p == *l || p.starts_with(&format!("{l}/")));
    let inside = |p: &str| (p == dir || p.starts_with(&format!("{dir}/"))) && !left(p);
    // Files written to be renamed into place, wherever they are named.
    let renamed: BTreeSet<&str> = calls
        .iter()
        .filter(|c| names(&c.name))
        .filter_map(|c| c.args.split('"').nth(1))
        .collect();
    let mut done = Durable::default();
    let mut breaches = Vec::new();
    // Per thread: whether each written file was synced since its last
    // write, and the directories that owe a sync (with what owes it).
    let mut synced: HashMap<(u32, String), bool> = HashMap::new();
    let mut owed: HashMap<u32, Vec<(String, String, usize)>> = HashMap::new();
    let settle =
        |owed: &mut HashMap<u32, Vec<(String, String, usize)>>, call: &Call, breaches: &mut Vec<String>| {
            for (dir, what, line) in owed.remove(&call.pid).unwrap_or_default() {
                breaches.push(format!(
                    "line {line}: {what}, but {dir} was not synced before line {} ({} {})",
                    call.line, call.name, call.args
                ));
            }
        };
    for call in calls {
        let paths = quoted(&call.args);
        match call.name.as_str() {
            "write" | "pwrite64" | "writev" => {
                if let Some(path) = fd_path(&call.args).filter(|p| inside(p)) {
                    synced.insert((call.pid, path), false);
                }
            }
            "fsync" | "fdatasync" => {
                if let Some(path) = fd_path(&call.args) {
                    synced.insert((call.pid, path.clone()), true);
                    if let Some(list) = owed.get_mut(&call.pid) {
                        list.retain(|(d, _, _)| *d != path);
                    }
                }
            }
            "open" | "openat" | "creat" => {
                let Some(path) = paths.first().filter(|p| inside(p)) else {
                    continue;
                };
                let writes = call.args.contains("O_WRONLY") || call.args.contains("O_RDWR");
                let creates = call.name == "creat" || call.args.contains("O_CREAT");
                if creates {
                    settle(&mut owed, call, &mut breaches);
                }
                let name = path.rsplit('/').next().unwrap_or_default();
                if writes && !renamed.contains(path.as_str()) && !in_place.contains(&name) {
                    breaches.push(format!(
                        "line {}: {path} is written in place: a power cut can leave it torn",
                        call.line
                    ));
                }
            }
            name if names(name) => {
                let [src, dst, ..] = paths.as_slice() else {
                    continue;
                };
                if !inside(dst) || left(dst) {
                    continue;
                }
                settle(&mut owed, call, &mut breaches);
                if synced.get(&(call.pid, src.clone())) != Some(&true) {
                    breaches.push(format!(
                        "line {}: {src} is renamed to {dst} before its data was synced",
                        call.line
                    ));
                }
                owed.entry(call.pid).or_default().push((
                    parent(dst),
                    format!("{src} was renamed to {dst}"),
                    call.line,
                ));
                done.replaced.insert(dst.clone());
            }
            "unlink" | "unlinkat" | "rmdir" => {
                let Some(path) = paths.first().filter(|p| inside(p)) else {
                    continue;
                };
                owed.entry(call.pid).or_default().push((
                    parent(path),
                    format!("{path} was removed"),
                    call.line,
                ));
                done.removed.insert(path.clone());
            }
            "mkdir" | "mkdirat" => {
                let Some(path) = paths.first().filter(|p| inside(p)) else {
                    continue;
                };
                settle(&mut owed, call, &mut breaches);
                owed.entry(call.pid).or_default().push((
                    parent(path),
                    format!("{path} was created"),
                    call.line,
                ));
                done.created.insert(path.clone());
            }
            _ => {}
        }
    }
    for (_, list) in owed {
        for (dir, what, line) in list {
            breaches.push(format!(
                "line {line}: {what}, but {dir} was never synced after it"
            ));
        }
    }
    if breaches.is_empty() {
        Ok(done)
    } else {
        Err(breaches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(body: &str) -> Vec<Call> {
        parse(body)
    }

    /// A durable replacement as `strace -f -y` writes it.
    const GOOD: &str = r#"7 openat(AT_FDCWD</>, "/s/.tmpAb", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 5</s/.tmpAb>
7 write(5</s/.tmpAb>, ""..., 12) = 12
7 fsync(5</s/.tmpAb>) = 0
7 rename("/s/.tmpAb", "/s/state.json") = 0
7 openat(AT_FDCWD</>, "/s", O_RDONLY|O_CLOEXEC) = 6</s>
7 fsync(6</s>)               = 0
"#;

    #[test]
    fn a_synced_replacement_passes() {
        let done = check(&trace(GOOD), "/s", &[], &[]).unwrap();
        assert_eq!(done.replaced, BTreeSet::from(["/s/state.json".to_owned()]));
    }

    #[test]
    fn each_missing_sync_is_named() {
        // The data not synced before the rename.
        let calls = trace(&GOOD.replace("7 fsync(5</s/.tmpAb>) = 0\n", ""));
        let err = check(&calls, "/s", &[], &[]).unwrap_err();
        assert!(err[0].contains("before its data was synced"), "{err:?}");
        // Written again after the sync.
        let calls = trace(&GOOD.replace("7 rename(", "7 write(5</s/.tmpAb>, \"\"..., 1) = 1\n7 rename("));
        assert!(check(&calls, "/s", &[], &[]).is_err());
        // The directory never synced after the rename.
        let calls = trace(&GOOD.replace("7 fsync(6</s>)               = 0\n", ""));
        let err = check(&calls, "/s", &[], &[]).unwrap_err();
        assert!(err[0].contains("/s was never synced"), "{err:?}");
        // A removal, then the next file created before the directory's sync.
        let calls = trace(&format!("7 unlink(\"/s/outbox/1.json\") = 0\n{GOOD}"));
        let err = check(&calls, "/s", &[], &[]).unwrap_err();
        assert!(err[0].contains("/s/outbox/1.json was removed"), "{err:?}");
        // A directory created, and files made in it before its parent's sync.
        let calls = trace(&format!(
            "7 mkdir(\"/s/x\", 0700) = 0\n{}",
            GOOD.replace("/s/.tmp", "/s/x/.tmp")
        ));
        assert!(check(&calls, "/s", &[], &[]).is_err());
        // Written in place.
        let calls = trace("7 openat(AT_FDCWD</>, \"/s/state.json\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 5</s/state.json>\n");
        let err = check(&calls, "/s", &[], &[]).unwrap_err();
        assert!(err[0].contains("written in place"), "{err:?}");
        assert!(check(&calls, "/s", &["state.json"], &[]).is_ok());
    }

    #[test]
    fn another_program_s_files_are_left_to_it_but_their_names_come_after_their_data() {
        let libgit2 = "7 openat(AT_FDCWD</>, \"/s/repo/objects/pack/tmp_pack\", O_RDWR|O_CREAT|O_EXCL, 0444) = 5</s/repo/objects/pack/tmp_pack>\n\
                       7 pwrite64(5</s/repo/objects/pack/tmp_pack>, \"\"..., 10, 0) = 10\n\
                       7 fsync(5</s/repo/objects/pack/tmp_pack>) = 0\n\
                       7 link(\"/s/repo/objects/pack/tmp_pack\", \"/s/repo/objects/pack/pack-1.pack\") = 0\n\
                       7 openat(AT_FDCWD</>, \"/s/repo/config\", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 6</s/repo/config>\n";
        let calls = trace(libgit2);
        assert!(check(&calls, "/s", &[], &[]).is_err());
        assert!(check(&calls, "/s", &[], &["/s/repo"]).is_ok());
        assert_eq!(synced_before_named(&calls, "/s/repo/objects"), Ok(1));
        let unsynced = trace(&libgit2.replace("7 fsync(5</s/repo/objects/pack/tmp_pack>) = 0\n", ""));
        let err = synced_before_named(&unsynced, "/s/repo/objects").unwrap_err();
        assert!(err[0].contains("before its data was synced"), "{err:?}");
    }

    #[test]
    fn calls_another_thread_interrupted_are_put_together() {
        let calls = parse(
            "7 rename(\"/s/.tmpAb\", \"/s/f\" <unfinished ...>\n\
             8 write(3<pipe:[1]>, \"\"..., 1) = 1\n\
             7 <... rename resumed>) = 0\n\
             9 unlink(\"/s/gone\") = -1 ENOENT (No such file or directory)\n",
        );
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].name, "rename");
        assert_eq!(quoted(&calls[1].args), ["/s/.tmpAb", "/s/f"]);
    }
}
