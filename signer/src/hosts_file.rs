//! The hosts file `ferry-signer release --hosts-file` and `rollout` read: a
//! JSON object as `nix eval --json` prints it, each host naming a toplevel
//! and optionally an action. Parsed strictly into validated entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::names::{HostName, StorePath};
use crate::release::HostEntry;

/// Larger hosts files are refused unread (about 50,000 hosts fit).
pub const MAX_HOSTS_FILE_BYTES: u64 = 16 << 20;

/// Why a hosts file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostsFileError {
    #[error("cannot read hosts file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("hosts file {path} is larger than {MAX_HOSTS_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("hosts file {path}: expected a JSON object like {{\"web1\": \"/nix/store/…\"}}: {detail}")]
    Syntax { path: PathBuf, detail: String },
    #[error("hosts file {path}: host `{host}`: {problem}")]
    Host {
        path: PathBuf,
        host: String,
        problem: String,
    },
}

/// One host: a bare toplevel, or an object with an action.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum HostJson {
    Toplevel(String),
    Entry {
        toplevel: String,
        #[serde(default)]
        action: Option<String>,
    },
}

/// Parses a hosts file's bytes; `path` names it in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<HostName, HostEntry>, HostsFileError> {
    let raw: BTreeMap<String, HostJson> =
        serde_json::from_slice(bytes).map_err(|e| HostsFileError::Syntax {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    // Collected rather than inserted one by one: the names arrive sorted, so
    // the map is built in one pass.
    raw.into_iter()
        .map(|(name, value)| {
            let err = |problem: String| HostsFileError::Host {
                path: path.to_owned(),
                host: name.clone(),
                problem,
            };
            let host: HostName = name.parse().map_err(|e| err(format!("{e}")))?;
            let (toplevel, action) = match value {
                HostJson::Toplevel(t) => (t, None),
                HostJson::Entry { toplevel, action } => (toplevel, action),
            };
            let toplevel: StorePath = toplevel.parse().map_err(|e| err(format!("{e}")))?;
            if toplevel.is_derivation() {
                return Err(err(format!(
                    "{toplevel} is a derivation, not a built system (hosts never build): give the toplevel's output path, as `nix build --print-out-paths` prints it"
                )));
            }
            let entry = HostEntry {
                toplevel,
                action: action
                    .map(|a| a.parse())
                    .transpose()
                    .map_err(|e| err(format!("{e}")))?
                    .unwrap_or_default(),
            };
            Ok((host, entry))
        })
        .collect()
}

/// Reads and parses a hosts file.
pub fn read(path: &Path) -> Result<BTreeMap<HostName, HostEntry>, HostsFileError> {
    let read_err = |source| HostsFileError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_HOSTS_FILE_BYTES {
        return Err(HostsFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse(path, &std::fs::read(path).map_err(read_err)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-25.11";

    #[test]
    fn both_shapes_parse() {
        let text = format!(r#"{{"web1": "{T}", "db1": {{"toplevel": "{T}", "action": "boot"}}}}"#);
        let hosts = parse(Path::new("h.json"), text.as_bytes()).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[&"db1".parse().unwrap()].action.as_str(), "boot");
        assert_eq!(hosts[&"web1".parse().unwrap()].action.as_str(), "switch");
    }

    #[test]
    fn bad_files_are_refused_with_the_host_named() {
        let p = Path::new("h.json");
        assert!(matches!(parse(p, b"[1]"), Err(HostsFileError::Syntax { .. })));
        let bad_path = parse(p, br#"{"web1": "/tmp/x"}"#).unwrap_err().to_string();
        assert!(bad_path.contains("host `web1`"), "{bad_path}");
        let bad_name = format!(r#"{{"web 1": "{T}"}}"#);
        assert!(matches!(
            parse(p, bad_name.as_bytes()),
            Err(HostsFileError::Host { host, .. }) if host == "web 1"
        ));
        let bad_action = format!(r#"{{"web1": {{"toplevel": "{T}", "action": "reboot"}}}}"#);
        assert!(parse(p, bad_action.as_bytes()).is_err());
        let drv = r#"{"web1": "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-25.11.drv"}"#;
        let drv = parse(p, drv.as_bytes()).unwrap_err().to_string();
        assert!(
            drv.contains("host `web1`")
                && drv.contains("is a derivation")
                && drv.contains("--print-out-paths"),
            "{drv}"
        );
    }
}
