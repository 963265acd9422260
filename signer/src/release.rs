//! The release: what `release.toml` on the deploy branch says each host should
//! run. Parsing is strict (unknown format, unknown keys, bad store paths or host
//! names and oversize files are refused with the offending line) and rendering
//! is canonical, so the file is both the signed contract and readable in review.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use toml::Spanned;

use crate::names::{CommitId, HostName, StorePath};

/// The file name of the release in the deploy branch's tree.
pub const RELEASE_FILE: &str = "release.toml";
/// The only release format this version understands.
pub const FORMAT: u32 = 1;
/// Larger `release.toml` files are refused unread (about 50,000 hosts fit).
pub const MAX_RELEASE_BYTES: usize = 8 << 20;

/// The largest serial a release can carry: TOML integers are signed 64-bit,
/// so anything above cannot be written in `release.toml` (nor read back).
pub const MAX_SERIAL: u64 = i64::MAX as u64;

/// A release: one signed statement of which system each host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Strictly increasing along the deploy branch; agents refuse anything not
    /// greater than what they last deployed.
    pub serial: u64,
    /// When the release was made.
    pub created: DateTime<Utc>,
    /// After this instant agents refuse the release (freeze protection).
    pub expires: Option<DateTime<Utc>>,
    /// The main-branch commit the systems were built from, if recorded.
    pub source: Option<CommitId>,
    /// Each host's entry.
    pub hosts: BTreeMap<HostName, HostEntry>,
}

/// Which hosts' entries a read of a release keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every entry, each one checked: the signer and the fleet commands.
    Fleet,
    /// Only this host's entry (none if the release does not name it): an
    /// agent, which decides nothing from any other host's entry.
    Host(&'a HostName),
}

/// What one host should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The system toplevel (`config.system.build.toplevel`).
    pub toplevel: StorePath,
    /// How to activate it.
    pub action: Action,
}

/// The `switch-to-configuration` action for a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Action {
    /// Make it the boot default and activate it now.
    #[default]
    Switch,
    /// Make it the boot default; it takes effect at the next reboot.
    Boot,
    /// Activate it now without making it the boot default.
    Test,
}

impl Action {
    /// The argument to `switch-to-configuration`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
        }
    }

    /// Whether the action makes the system the profile's new generation.
    pub fn sets_profile(self) -> bool {
        matches!(self, Action::Switch | Action::Boot)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an action: use switch, boot or test")]
pub struct ActionError(String);

impl FromStr for Action {
    type Err = ActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "switch" => Ok(Action::Switch),
            "boot" => Ok(Action::Boot),
            "test" => Ok(Action::Test),
            other => Err(ActionError(other.chars().take(40).collect())),
        }
    }
}

/// Why a `release.toml` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release.toml is {size} bytes, more than the {MAX_RELEASE_BYTES}-byte limit")]
    TooLarge { size: u64 },
    #[error("release.toml is not UTF-8 text")]
    NotUtf8,
    /// The reason first, then where (`line`, and the line itself with a
    /// caret under the place, in `snippet`), so a cut description keeps the
    /// reason.
    #[error("release.toml is not valid TOML at line {line}: {reason}{snippet}")]
    Syntax {
        line: usize,
        reason: String,
        snippet: String,
    },
    /// Valid TOML, but a key this format does not have, a value of the
    /// wrong type, or a key missing: `reason` names the key, `line` and
    /// `snippet` say where.
    #[error("release.toml line {line}: {reason}{snippet}")]
    Shape {
        line: usize,
        reason: String,
        snippet: String,
    },
    #[error("release.toml has no `format` key: expected `format = {FORMAT}` at the top")]
    MissingFormat,
    #[error("release.toml has format {0}, but this Ferry understands only format {FORMAT}: upgrade ferry")]
    UnknownFormat(i64),
    #[error("release.toml line {line}: {problem}")]
    Invalid { line: usize, problem: String },
}

impl Release {
    /// Parses and validates the bytes of a `release.toml`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReleaseError> {
        if bytes.len() > MAX_RELEASE_BYTES {
            return Err(ReleaseError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ReleaseError::NotUtf8)?;
        // Every release Ferry writes is in canonical form: read it without
        // the toml crate, which took two thirds of `ferry-signer show` for
        // 10,000 hosts (bench B8″). Anything else takes the strict path.
        if let Some(release) = Self::parse_canonical(text) {
            return Ok(release);
        }
        Self::parse_with_toml(text)
    }

    /// [`Release::parse`] keeping the entries `scope` asks for. For one
    /// host, a file in canonical form has its header and that host's entry
    /// read as strictly as `parse` reads them, and every other entry only
    /// checked for the canonical shape (sorted, one key per line), not
    /// parsed: 10,000 other hosts cost a scan, not 10,000 store paths
    /// validated and rendered back (bench B5). Any other text takes the
    /// whole strict parse and then keeps the one entry.
    pub fn parse_scoped(bytes: &[u8], scope: Scope<'_>) -> Result<Self, ReleaseError> {
        let Scope::Host(host) = scope else {
            return Self::parse(bytes);
        };
        if bytes.len() > MAX_RELEASE_BYTES {
            return Err(ReleaseError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ReleaseError::NotUtf8)?;
        if let Some(release) = Self::parse_canonical_for(text, host) {
            return Ok(release);
        }
        // Not canonical here, so not canonical as a whole either: the strict
        // parse alone decides.
        let mut release = Self::parse_with_toml(text)?;
        release.hosts.retain(|name, _| name == host);
        Ok(release)
    }

    /// The one-host fast path of [`Release::parse_scoped`]: `None` for any
    /// text whose header or whose entry for `host` is not exactly as
    /// [`Release::to_toml`] renders it, or whose other entries are not in
    /// its shape; the strict path then decides. The fuzz target
    /// `release_toml` checks that whatever it accepts, the strict parse
    /// accepts with the same header and the same entry for `host`, for a
    /// file whose other entries are valid.
    pub fn parse_canonical_for(text: &str, host: &HostName) -> Option<Self> {
        let (header, rest) = Self::canonical_header(text)?;
        let mut release = header;
        if rest == "\n[hosts]\n" {
            return Some(release);
        }
        let wanted = format!("[hosts.{host}]");
        let mut previous: Option<&str> = None;
        // The text ends with its last entry's newline, and nothing after.
        if !rest.ends_with('\n') || rest.ends_with("\n\n") {
            return None;
        }
        // Each entry after a blank line; the last one keeps its newline.
        for section in rest.strip_prefix('\n')?.split("\n\n") {
            let section = section.strip_suffix('\n').unwrap_or(section);
            let mut lines = section.split('\n');
            let head = lines.next()?;
            let name = head.strip_prefix("[hosts.")?.strip_suffix(']')?;
            // Sorted and unique, as rendering a map leaves them; a name's
            // own characters are checked only where it is parsed.
            if name.is_empty() || previous.is_some_and(|p| p >= name) {
                return None;
            }
            previous = Some(name);
            let toplevel = quoted(value(lines.next(), "toplevel")?)?;
            let action = match lines.next() {
                None => None,
                line => Some(quoted(value(line, "action")?)?),
            };
            if lines.next().is_some() {
                return None;
            }
            if head == wanted {
                let entry = HostEntry {
                    toplevel: toplevel.parse().ok()?,
                    action: action.map_or(Ok(Action::Switch), str::parse).ok()?,
                };
                // `action = "switch"` is never written: its absence says it.
                if action.is_some() && entry.action == Action::Switch
                    || entry.toplevel.to_string() != toplevel
                {
                    return None;
                }
                release.hosts.insert(host.clone(), entry);
            }
        }
        Some(release)
    }

    /// The header of a canonical `release.toml` (everything before the
    /// hosts), exactly as [`Release::to_toml`] renders it, and the rest of
    /// the text; `None` if it is not so.
    fn canonical_header(text: &str) -> Option<(Self, &str)> {
        let time = |v: &str| -> Option<DateTime<Utc>> {
            DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        // The header ends at the first blank line.
        let end = text.find("\n\n")? + 1;
        let (head, rest) = text.split_at(end);
        let mut lines = head.strip_suffix('\n')?.split('\n');
        if value(lines.next(), "format")? != FORMAT.to_string() {
            return None;
        }
        let serial = value(lines.next(), "serial")?
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=MAX_SERIAL).contains(s))?;
        let created = time(value(lines.next(), "created")?)?;
        let mut line = lines.next();
        let mut expires = None;
        if let Some(v) = value(line, "expires") {
            let e = time(v)?;
            if e <= created {
                return None;
            }
            expires = Some(e);
            line = lines.next();
        }
        let mut source = None;
        if let Some(v) = value(line, "source") {
            source = Some(quoted(v)?.parse::<CommitId>().ok()?);
            line = lines.next();
        }
        if line.is_some() {
            return None;
        }
        let release = Release {
            serial,
            created,
            expires,
            source,
            hosts: BTreeMap::new(),
        };
        (release.header_toml() == head).then_some((release, rest))
    }

    /// The fast path of [`Release::parse`]: a file exactly as
    /// [`Release::to_toml`] renders it, read line by line with the same
    /// validated types and rules as the strict path. `None` for any other
    /// text, valid or not: the strict path then decides. It answers only when
    /// rendering its result gives back the very same text, so (rendering
    /// being pinned to the toml crate's, and parsing a rendering giving back
    /// the release) it never disagrees with the strict path; the fuzz target
    /// `release_toml` checks that.
    pub fn parse_canonical(text: &str) -> Option<Self> {
        let (header, rest) = Self::canonical_header(text)?;
        // The blank line after the header, then the hosts.
        let mut lines = rest.strip_prefix('\n')?.split('\n').peekable();
        let mut hosts = BTreeMap::new();
        loop {
            let host: HostName = lines
                .next()?
                .strip_prefix("[hosts.")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            let toplevel: StorePath = quoted(value(lines.next(), "toplevel")?)?.parse().ok()?;
            let mut action = Action::Switch;
            if let Some(v) = value(lines.peek().copied(), "action") {
                action = quoted(v)?.parse().ok()?;
                lines.next();
            }
            hosts.insert(host, HostEntry { toplevel, action });
            // A blank line before the next host; the text's final newline
            // leaves one empty piece at the end.
            match (lines.next()?, lines.peek()) {
                ("", None) => break,
                ("", Some(_)) => continue,
                _ => return None,
            }
        }
        let release = Release { hosts, ..header };
        (release.to_toml() == text).then_some(release)
    }

    /// The strict parse through the toml crate alone: what [`Release::parse`]
    /// does with a file not in canonical form. Public for the differential
    /// fuzz target.
    pub fn parse_with_toml(text: &str) -> Result<Self, ReleaseError> {
        // One parse in the common case: a well-formed format-1 file.
        if let Ok(file) = toml::from_str::<ReleaseFileV1>(text) {
            if file.format == FORMAT {
                return file.validate(text);
            }
        }
        // Otherwise read `format` first, so a file from a newer Ferry says
        // "upgrade" rather than complaining about keys this version does not
        // know, then report what is wrong with a format-1 file.
        let table: toml::Table = toml::from_str(text).map_err(|e| syntax(text, &e))?;
        match table.get("format") {
            None => return Err(ReleaseError::MissingFormat),
            Some(toml::Value::Integer(n)) if *n == i64::from(FORMAT) => {}
            Some(toml::Value::Integer(n)) => return Err(ReleaseError::UnknownFormat(*n)),
            Some(_) => {
                return Err(ReleaseError::Invalid {
                    line: 1,
                    problem: "`format` must be an integer".into(),
                })
            }
        }
        let file: ReleaseFileV1 = toml::from_str(text).map_err(|e| shape(text, &e))?;
        file.validate(text)
    }

    /// Renders the canonical `release.toml` text (hosts sorted by name).
    /// Written directly rather than through the toml crate, which took 40%
    /// of `ferry-signer release` for 10,000 hosts (bench B6): every value is
    /// a validated name, store path, commit id or time, so nothing needs
    /// quoting beyond plain double quotes. A test pins the output to the
    /// toml crate's rendering.
    pub fn to_toml(&self) -> String {
        use std::fmt::Write as _;
        let mut s = self.header_toml();
        s.reserve(128 + self.hosts.len() * 100);
        if self.hosts.is_empty() {
            s.push_str("\n[hosts]\n");
        }
        for (name, entry) in &self.hosts {
            let _ = write!(s, "\n[hosts.{name}]\ntoplevel = \"{}\"\n", entry.toplevel);
            if entry.action != Action::Switch {
                let _ = writeln!(s, "action = \"{}\"", entry.action.as_str());
            }
        }
        s
    }

    /// The header of [`Release::to_toml`]: every line before the hosts.
    fn header_toml(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(160);
        let _ = write!(
            s,
            "format = {FORMAT}\nserial = {}\ncreated = {}\n",
            self.serial,
            toml_time(self.created)
        );
        if let Some(expires) = self.expires {
            let _ = writeln!(s, "expires = {}", toml_time(expires));
        }
        if let Some(source) = &self.source {
            let _ = writeln!(s, "source = \"{source}\"");
        }
        s
    }

    /// Whether the release is past its `expires` at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

/// The value of `key = VALUE` on a line of a canonical `release.toml`.
fn value<'a>(line: Option<&'a str>, key: &str) -> Option<&'a str> {
    line?.strip_prefix(key)?.strip_prefix(" = ")
}

/// A canonical string value without its quotes.
fn quoted(v: &str) -> Option<&str> {
    v.strip_prefix('"')?.strip_suffix('"')
}

/// A TOML error as [`ReleaseError::Syntax`]: the parser's own words (not
/// its rendering, which starts with the caret snippet), the line, and the
/// line shown with a caret.
fn syntax(text: &str, e: &toml::de::Error) -> ReleaseError {
    let reason = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return ReleaseError::Syntax {
            line: 1,
            reason,
            snippet: String::new(),
        };
    };
    // Untrusted input: never slice inside a character, whatever the span.
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let line = line_of(text, start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let column = text[line_start..start].chars().count();
    let snippet = format!("\n  | {line_text}\n  | {}^", " ".repeat(column));
    ReleaseError::Syntax {
        line,
        reason,
        snippet,
    }
}

/// A file that is valid TOML but not a release as [`ReleaseError::Shape`]:
/// the key at the place the parser points to (or the one its message
/// names, for a missing key), and the reason in plain words.
fn shape(text: &str, e: &toml::de::Error) -> ReleaseError {
    let ReleaseError::Syntax {
        line,
        reason,
        snippet,
    } = syntax(text, e)
    else {
        unreachable!("syntax() makes a Syntax error")
    };
    let named = |r: &str| {
        let (_, rest) = r.split_once("missing field `")?;
        Some(rest.split_once('`')?.0.to_owned())
    };
    let at = snippet
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("  | "))
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let reason = reason
        .replace("expected i64", "expected an integer")
        .replace("expected u32", "expected an integer")
        .replace("expected a string", "expected a quoted string");
    // "`key`: " before a reason that does not name the key itself.
    let reason = match named(&reason).or(at) {
        Some(k) if !reason.contains(&format!("`{k}`")) => format!("`{k}`: {reason}"),
        _ => reason,
    };
    ReleaseError::Shape {
        line,
        reason,
        snippet,
    }
}

fn toml_time(t: DateTime<Utc>) -> toml::value::Datetime {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
        .parse()
        .expect("RFC 3339 is TOML")
}

/// `release.toml`, format 1, as read. Kept apart from [`Release`] so the
/// on-disk shape is an explicit interface.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFileV1 {
    format: u32,
    serial: Spanned<i64>,
    created: Spanned<toml::value::Datetime>,
    expires: Option<Spanned<toml::value::Datetime>>,
    source: Option<Spanned<String>>,
    hosts: BTreeMap<String, HostFileV1>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFileV1 {
    toplevel: Spanned<String>,
    action: Option<Spanned<String>>,
}

/// The toml crate's rendering of a release, the reference `to_toml` is tested against.
#[cfg(test)]
#[derive(serde::Serialize)]
struct ReleaseFileOut<'a> {
    format: u32,
    serial: u64,
    created: toml::value::Datetime,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<toml::value::Datetime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    hosts: BTreeMap<String, HostOut<'a>>,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct HostOut<'a> {
    toplevel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
}

impl ReleaseFileV1 {
    fn validate(self, text: &str) -> Result<Release, ReleaseError> {
        let invalid = |span: std::ops::Range<usize>, problem: String| ReleaseError::Invalid {
            line: line_of(text, span.start),
            problem,
        };
        let serial = u64::try_from(*self.serial.get_ref())
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| invalid(self.serial.span(), "`serial` must be a positive integer".into()))?;
        let created = timestamp(&self.created, "created").map_err(|p| invalid(self.created.span(), p))?;
        let expires = match &self.expires {
            Some(e) => {
                let t = timestamp(e, "expires").map_err(|p| invalid(e.span(), p))?;
                if t <= created {
                    return Err(invalid(e.span(), "`expires` must be later than `created`".into()));
                }
                Some(t)
            }
            None => None,
        };
        let source = match &self.source {
            Some(s) => Some(
                s.get_ref()
                    .parse::<CommitId>()
                    .map_err(|e| invalid(s.span(), format!("`source`: {e}")))?,
            ),
            None => None,
        };
        let mut hosts = BTreeMap::new();
        for (name, entry) in self.hosts {
            let host: HostName = name
                .parse()
                .map_err(|e| invalid(entry.toplevel.span(), format!("hosts: {e}")))?;
            let toplevel = entry
                .toplevel
                .get_ref()
                .parse::<StorePath>()
                .map_err(|e| invalid(entry.toplevel.span(), format!("hosts.{host}.toplevel: {e}")))?;
            let action = match &entry.action {
                Some(a) => a
                    .get_ref()
                    .parse::<Action>()
                    .map_err(|e| invalid(a.span(), format!("hosts.{host}.action: {e}")))?,
                None => Action::Switch,
            };
            hosts.insert(host, HostEntry { toplevel, action });
        }
        if hosts.is_empty() {
            return Err(invalid(
                0..0,
                "`hosts` is empty: a release names at least one host".into(),
            ));
        }
        Ok(Release {
            serial,
            created,
            expires,
            source,
            hosts,
        })
    }
}

fn timestamp(t: &Spanned<toml::value::Datetime>, key: &str) -> Result<DateTime<Utc>, String> {
    let dt = t.get_ref();
    if dt.date.is_none() || dt.time.is_none() || dt.offset.is_none() {
        return Err(format!(
            "`{key}` must be a date and time with an offset, e.g. 2026-11-21T23:00:00Z"
        ));
    }
    DateTime::parse_from_rfc3339(&dt.to_string())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{key}`: {e}"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The toml crate's rendering, which `to_toml` writes by hand.
    fn reference_toml(r: &Release) -> String {
        let file = ReleaseFileOut {
            format: FORMAT,
            serial: r.serial,
            created: toml_time(r.created),
            expires: r.expires.map(toml_time),
            source: r.source.as_ref().map(|s| s.as_str().to_owned()),
            hosts: r
                .hosts
                .iter()
                .map(|(name, entry)| {
                    let action = (entry.action != Action::Switch).then(|| entry.action.as_str());
                    (
                        name.as_str().to_owned(),
                        HostOut {
                            toplevel: entry.toplevel.as_str().to_owned(),
                            action,
                        },
                    )
                })
                .collect(),
        };
        toml::to_string(&file).unwrap()
    }

    /// The example release, the same without `expires` and `source`, and
    /// a copy of the example with hosts with odd names, every
    /// action and a toplevel of unusual characters (`odd_base_minimal`:
    /// added to the minimal release instead).
    fn variants(odd_base_minimal: bool) -> (Release, Release, Release) {
        let full = Release::parse(example().as_bytes()).unwrap();
        let mut minimal = full.clone();
        minimal.expires = None;
        minimal.source = None;
        let mut odd = if odd_base_minimal {
            minimal.clone()
        } else {
            full.clone()
        };
        for (i, name) in ["a", "web-1", "db_2", "X9"].iter().enumerate() {
            let action = [Action::Switch, Action::Boot, Action::Test][i % 3];
            odd.hosts.insert(
                name.parse().unwrap(),
                HostEntry {
                    toplevel: "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-a+b-c.d_e?f=g"
                        .parse()
                        .unwrap(),
                    action,
                },
            );
        }
        (full, minimal, odd)
    }

    #[test]
    fn to_toml_matches_the_toml_crate() {
        let (full, minimal, odd_names) = variants(false);
        let mut empty = minimal.clone();
        empty.hosts.clear();
        for r in [full, minimal, odd_names, empty] {
            assert_eq!(r.to_toml(), reference_toml(&r));
        }
    }

    #[test]
    fn the_canonical_fast_path_agrees_with_the_strict_one() {
        let (full, minimal, actions) = variants(true);
        let mut tested = Vec::new();
        for r in [full, minimal, actions] {
            let text = r.to_toml();
            assert_eq!(Release::parse_canonical(&text).as_ref(), Some(&r), "{text}");
            assert_eq!(Release::parse_with_toml(&text).as_ref(), Ok(&r), "{text}");
            tested.push(text);
        }
        // Valid TOML, but not as Ferry writes it: the strict path decides.
        let text = &tested[0];
        for other in [
            example(),
            text.replace("serial = 42", "serial=42"),
            text.replace("\n[hosts.db1]", "\n# a comment\n[hosts.db1]"),
            format!("{text}\n"),
            text.replace('\n', "\r\n"),
            text.replace("[hosts.web1]", "[hosts.\"web1\"]"),
        ] {
            assert_eq!(Release::parse_canonical(&other), None, "{other}");
            assert_eq!(
                Release::parse(other.as_bytes()).unwrap(),
                Release::parse_with_toml(&other).unwrap()
            );
        }
        // What the strict path refuses, the fast path never accepts.
        for bad in [
            text.replace("serial = 42", "serial = 0"),
            text.replace("expires = 2026-12-21", "expires = 2026-11-20"),
            text.replace(WEB1, "/nix/store/short-web1"),
            text.replace("action = \"boot\"", "action = \"reboot\""),
            text.replace("[hosts.web1]", "[hosts.web1.x]"),
            text.split("\n[hosts.").next().unwrap().to_owned() + "\n[hosts]\n",
        ] {
            assert_eq!(Release::parse_canonical(&bad), None, "{bad}");
            assert!(Release::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    const WEB1: &str = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-25.11";
    const DB1: &str = "/nix/store/9zqmb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-db1-25.11";

    fn example() -> String {
        format!(
            r#"format = 1
serial = 42
created = 2026-11-21T23:00:00Z
expires = 2026-12-21T23:00:00Z
source = "9fceb02d0ae598e95dc970b74767f19372d61af8"

[hosts.web1]
toplevel = "{WEB1}"
[hosts.db1]
toplevel = "{DB1}"
action = "boot"
"#
        )
    }

    /// The canonical text of `example()`'s release with a third host.
    fn canonical() -> String {
        let mut release = Release::parse(example().as_bytes()).unwrap();
        let web2: HostName = "web2".parse().unwrap();
        let entry = release.hosts[&"web1".parse::<HostName>().unwrap()].clone();
        release.hosts.insert(web2, entry);
        release.to_toml()
    }

    fn host(name: &str) -> HostName {
        name.parse().unwrap()
    }

    #[test]
    fn a_read_for_one_host_keeps_the_header_and_that_hosts_entry() {
        let text = canonical();
        let whole = Release::parse(text.as_bytes()).unwrap();
        for name in ["db1", "web1", "web2", "absent"] {
            let h = host(name);
            let mut one = whole.clone();
            one.hosts.retain(|n, _| *n == h);
            assert_eq!(
                Release::parse_canonical_for(&text, &h).as_ref(),
                Some(&one),
                "{name}"
            );
            assert_eq!(
                Release::parse_scoped(text.as_bytes(), Scope::Host(&h)),
                Ok(one),
                "{name}"
            );
        }
        let empty = Release {
            hosts: BTreeMap::new(),
            ..whole.clone()
        };
        let empty_text = empty.to_toml();
        assert_eq!(
            Release::parse_canonical_for(&empty_text, &host("web1")),
            Some(empty)
        );
        // A text not in canonical form takes the strict parse, then keeps one.
        let h = host("db1");
        let mut one = whole;
        one.hosts.retain(|n, _| *n == h);
        let loose = format!("# a comment\n{}", example());
        assert_eq!(Release::parse_canonical_for(&loose, &h), None);
        assert_eq!(Release::parse_scoped(loose.as_bytes(), Scope::Host(&h)), Ok(one));
    }

    #[test]
    fn a_read_for_one_host_checks_only_the_shape_of_the_others() {
        let text = canonical();
        // Another host's store path is not this host's business...
        let broken = text.replacen(
            &format!("toplevel = \"{DB1}\""),
            "toplevel = \"/tmp/not-a-store-path\"",
            1,
        );
        assert!(Release::parse(broken.as_bytes()).is_err());
        let web1 = Release::parse_scoped(broken.as_bytes(), Scope::Host(&host("web1"))).unwrap();
        assert_eq!(web1.hosts.keys().collect::<Vec<_>>(), [&host("web1")]);
        // ...but its own is, as strictly as the whole file's parse.
        let err = Release::parse_scoped(broken.as_bytes(), Scope::Host(&host("db1"))).unwrap_err();
        assert!(matches!(err, ReleaseError::Invalid { .. }), "{err}");
        // The shape is checked everywhere: entries out of order or twice, a
        // key the format does not have, or anything after the last entry
        // send the text to the strict parse; so does this host's own entry
        // not rendered as Ferry renders it (`action = "switch"` written out).
        let swapped = text.replacen("[hosts.db1]", "[hosts.zz1]", 1);
        let twice = text.replacen("[hosts.web2]", "[hosts.web1]", 1);
        let unknown = text.replacen("action = \"boot\"", "colour = \"blue\"", 1);
        let switch = text.replacen("action = \"boot\"", "action = \"switch\"", 1);
        let trailing = format!("{text}\n");
        for (odd, name) in [
            (&swapped, "web1"),
            (&twice, "web1"),
            (&unknown, "web1"),
            (&switch, "db1"),
            (&trailing, "web1"),
        ] {
            assert_ne!(odd, &text);
            assert_eq!(Release::parse_canonical_for(odd, &host(name)), None, "{odd}");
        }
        // The strict parse refuses the duplicate and the unknown key.
        for refused in [&twice, &unknown] {
            assert!(Release::parse_scoped(refused.as_bytes(), Scope::Host(&host("web1"))).is_err());
        }
        // Too large is refused before anything is read.
        let big = vec![b'#'; MAX_RELEASE_BYTES + 1];
        assert!(matches!(
            Release::parse_scoped(&big, Scope::Host(&host("web1"))),
            Err(ReleaseError::TooLarge { .. })
        ));
    }

    fn invalid(text: &str) -> (usize, String) {
        match Release::parse(text.as_bytes()).unwrap_err() {
            ReleaseError::Invalid { line, problem } => (line, problem),
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn parses_the_design_example() {
        let r = Release::parse(example().as_bytes()).unwrap();
        assert_eq!(r.serial, 42);
        assert_eq!(r.hosts.len(), 2);
        let db1 = &r.hosts[&"db1".parse().unwrap()];
        assert_eq!(db1.action, Action::Boot);
        assert_eq!(db1.toplevel.as_str(), DB1);
        assert_eq!(
            r.source.unwrap().as_str(),
            "9fceb02d0ae598e95dc970b74767f19372d61af8"
        );
        assert_eq!(r.expires.unwrap().to_rfc3339(), "2026-12-21T23:00:00+00:00");
    }

    #[test]
    fn render_round_trips() {
        let r = Release::parse(example().as_bytes()).unwrap();
        let text = r.to_toml();
        assert!(text.starts_with("format = 1\nserial = 42\n"), "{text}");
        assert_eq!(Release::parse(text.as_bytes()).unwrap(), r);
        assert!(
            !text.contains("action = \"switch\""),
            "default action is not written"
        );
    }

    #[test]
    fn expiry() {
        let r = Release::parse(example().as_bytes()).unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(!r.is_expired(at("2026-12-21T22:59:59Z")));
        assert!(r.is_expired(at("2026-12-21T23:00:00Z")));
    }

    #[test]
    fn unknown_format_says_upgrade() {
        let text = example().replace("format = 1", "format = 2\nnew_key = true");
        assert_eq!(
            Release::parse(text.as_bytes()),
            Err(ReleaseError::UnknownFormat(2))
        );
        assert!(ReleaseError::UnknownFormat(2).to_string().contains("upgrade"));
        let text = example().replace("format = 1\n", "");
        assert_eq!(Release::parse(text.as_bytes()), Err(ReleaseError::MissingFormat));
    }

    #[test]
    fn bad_store_path_names_host_and_line() {
        let text = example().replace(DB1, "/nix/store/short-db1");
        let (line, problem) = invalid(&text);
        assert_eq!(line, 10);
        assert!(
            problem.starts_with("hosts.db1.toplevel: `/nix/store/short-db1` is not a Nix store path"),
            "{problem}"
        );
    }

    #[test]
    fn bad_host_name() {
        let text = example().replace("[hosts.web1]", "[hosts.\"web 1\"]");
        let (line, problem) = invalid(&text);
        assert_eq!(line, 8, "the entry's toplevel line");
        assert!(problem.contains("not a valid host name"), "{problem}");
    }

    #[test]
    fn other_refusals() {
        let e = |from: &str, to: &str| invalid(&example().replacen(from, to, 1)).1;
        assert!(e("serial = 42", "serial = 0").contains("positive"));
        assert!(e("serial = 42", "serial = -3").contains("positive"));
        assert!(e("action = \"boot\"", "action = \"reboot\"").contains("use switch, boot or test"));
        assert!(e("expires = 2026-12-21T23:00:00Z", "expires = 2026-11-20T23:00:00Z").contains("later than"));
        assert!(e("created = 2026-11-21T23:00:00Z", "created = 2026-11-21T23:00:00").contains("offset"));
        assert!(e("9fceb02d0ae598e95dc970b74767f19372d61af8", "main").contains("commit id"));
        let no_hosts = "format = 1\nserial = 1\ncreated = 2026-11-21T23:00:00Z\n[hosts]\n";
        assert!(invalid(no_hosts).1.contains("empty"));
    }

    #[test]
    fn syntax_errors_are_refused_as_not_toml() {
        for text in [
            example().replace("[hosts.web1]", "[hosts.web1"),
            example().replace("serial = 42", "serial = \"42"),
            example().replace("serial = 42", "serial 42"),
        ] {
            let err = Release::parse(text.as_bytes()).unwrap_err();
            assert!(matches!(err, ReleaseError::Syntax { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("release.toml is not valid TOML at line "),
                "{err}"
            );
        }
    }

    /// Valid TOML that is not a release names the key, never calls the
    /// file invalid TOML.
    #[test]
    fn unknown_missing_and_mistyped_keys_are_named() {
        for (text, line, key, words) in [
            (
                example().replace("serial = 42", "serial = \"42\""),
                2,
                "serial",
                "invalid type: string \"42\", expected an integer",
            ),
            (
                example().replace("serial = 42", "serial = 42\nsereal = 43"),
                3,
                "sereal",
                "unknown field `sereal`",
            ),
            (
                example().replace("action = \"boot\"", "action = \"boot\"\nactoin = \"x\""),
                0,
                "actoin",
                "unknown field `actoin`",
            ),
            (
                example().replace("action = \"boot\"", "action = 1"),
                0,
                "action",
                "expected a quoted string",
            ),
            ("format = 1\n".to_string(), 1, "serial", "missing field `serial`"),
        ] {
            let err = Release::parse(text.as_bytes()).unwrap_err();
            let ReleaseError::Shape { line: at, reason, .. } = &err else {
                panic!("{err:?}")
            };
            assert!(reason.contains(&format!("`{key}`")), "{err}");
            if line > 0 {
                assert_eq!(*at, line, "{err}");
            }
            assert!(reason.contains(words), "{err}");
            let named = format!("`{key}`");
            let first = err.to_string();
            assert!(first.starts_with(&format!("release.toml line {at}: ")), "{err}");
            assert!(first.contains(&named), "{err}");
            assert!(!err.to_string().contains("not valid TOML"), "{err}");
        }
        let text = example().replace("serial = 42", "serial = \"10\"");
        let err = Release::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "release.toml line 2: `serial`: invalid type: string \"10\", expected an integer"
            ),
            "{err}"
        );
    }

    /// The reason comes before the snippet, and the snippet points at the place.
    #[test]
    fn an_error_says_why_before_where() {
        let text = example().replace("serial = 42", "serial = 42\nsereal = 43");
        let err = Release::parse(text.as_bytes()).unwrap_err();
        let ReleaseError::Shape {
            line,
            reason,
            snippet,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*line, 3, "{err}");
        assert!(reason.contains("unknown field `sereal`"), "{reason}");
        assert_eq!(snippet, "\n  | sereal = 43\n  | ^");
        let first = err.to_string().lines().next().unwrap().to_owned();
        assert!(
            first.starts_with("release.toml line 3: unknown field `sereal`"),
            "{first}"
        );
        let broken = example().replace("[hosts.web1]", "[hosts.web1");
        let err = Release::parse(broken.as_bytes()).unwrap_err().to_string();
        let first = err.lines().next().unwrap();
        assert!(!first.contains('|') && !first.contains('^'), "{err}");
    }

    #[test]
    fn size_and_encoding() {
        let big = vec![b'#'; MAX_RELEASE_BYTES + 1];
        assert!(matches!(Release::parse(&big), Err(ReleaseError::TooLarge { .. })));
        assert_eq!(Release::parse(b"format = 1\xff"), Err(ReleaseError::NotUtf8));
    }
}
