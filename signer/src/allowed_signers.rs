//! The `allowed_signers` file of `ssh-keygen(1)` (section ALLOWED SIGNERS): who
//! may sign releases, for which namespaces, and during which time window. No
//! crate parses this format, so this module does, following OpenSSH's
//! `sshsig.c` and refusing (rather than skipping) any line it cannot honour.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, PublicKey};

use crate::pattern;
use crate::sshsig::SkDetails;

/// Files larger than this are refused rather than read.
pub const MAX_ALLOWED_SIGNERS_BYTES: u64 = 1 << 20;

/// A parsed `allowed_signers` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSigners {
    entries: Vec<AllowedSigner>,
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSigner {
    /// 1-based line number in the file, for messages.
    pub line: usize,
    /// The principals field as written: a pattern list such as `alice@example.com,ci@*`.
    pub principals: String,
    /// `namespaces="…"`, a pattern list; `None` allows every namespace.
    pub namespaces: Option<String>,
    /// `valid-after="…"`: signatures made before this instant are refused.
    pub valid_after: Option<DateTime<Utc>>,
    /// `valid-before="…"`: signatures made after this instant are refused.
    pub valid_before: Option<DateTime<Utc>>,
    /// For security keys: a signature must attest a touch (user presence).
    /// True unless the line says `no-touch-required`.
    pub touch_required: bool,
    /// For security keys, `verify-required`: a signature must attest user
    /// verification (PIN or biometrics).
    pub verify_required: bool,
    /// The signer's public key.
    pub key: PublicKey,
}

/// Why an `allowed_signers` file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowedSignersError {
    #[error("cannot read allowed_signers file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "allowed_signers file {path} is {size} bytes, more than the {MAX_ALLOWED_SIGNERS_BYTES}-byte limit"
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}line {line}: {problem}", .path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Line {
        path: Option<PathBuf>,
        line: usize,
        problem: LineProblem,
    },
}

/// What is wrong with one line of an `allowed_signers` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected `principals [options] keytype base64-key [comment]`, but the line ends after the principals")]
    MissingKey,
    #[error("unterminated double quote")]
    UnterminatedQuote,
    #[error(
        "cannot parse the public key `{0}`: expected an OpenSSH public key such as `ssh-ed25519 AAAAC3…`"
    )]
    BadKey(String),
    #[error("`cert-authority` lines are not supported: list each signing key on a line of its own")]
    CertAuthority,
    #[error("unknown option `{0}` (allowed: namespaces, valid-after, valid-before, no-touch-required, verify-required)")]
    UnknownOption(String),
    #[error("option `{0}` takes no value")]
    FlagWithValue(String),
    #[error("the options end with a comma: remove it (ssh-keygen refuses such a line too)")]
    TrailingComma,
    #[error("option `{0}` needs a value in double quotes, e.g. {0}=\"…\"")]
    UnquotedValue(String),
    #[error("option `{0}` is given twice")]
    DuplicateOption(String),
    #[error("`{option}` value `{value}` is not a time: use YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally ending in Z for UTC")]
    BadTime { option: String, value: String },
    #[error("valid-before is not after valid-after: this key can never sign")]
    EmptyWindow,
}

/// Why a key was not accepted for a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    #[error("key {fingerprint} is not listed in allowed_signers")]
    KeyNotListed { fingerprint: String },
    #[error("key {fingerprint} (principal {principals}, line {line}) is not allowed to sign for namespace `{namespace}`: its namespaces are \"{namespaces}\"")]
    Namespace {
        fingerprint: String,
        principals: String,
        line: usize,
        namespace: String,
        namespaces: String,
    },
    #[error("key {fingerprint} (principal {principals}, line {line}) is not valid until {valid_after}, but the signature is dated {at}")]
    NotYetValid {
        fingerprint: String,
        principals: String,
        line: usize,
        valid_after: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    #[error("security key {fingerprint} (principal {principals}, line {line}) signed without a touch: the signature does not attest user presence; touch the key when signing, or add `no-touch-required` to the line if this key is meant to sign unattended")]
    NoTouch {
        fingerprint: String,
        principals: String,
        line: usize,
    },
    #[error("security key {fingerprint} (principal {principals}, line {line}) signed without user verification, which its line requires (`verify-required`): sign with the key's PIN set and asked for")]
    NoUserVerification {
        fingerprint: String,
        principals: String,
        line: usize,
    },
    #[error("key {fingerprint} (principal {principals}, line {line}) expired at {valid_before}, but the signature is dated {at}")]
    Expired {
        fingerprint: String,
        principals: String,
        line: usize,
        valid_before: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

impl AllowedSigners {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, AllowedSignersError> {
        let read_err = |source| AllowedSignersError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_ALLOWED_SIGNERS_BYTES {
            return Err(AllowedSignersError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text).map_err(|e| match e {
            AllowedSignersError::Line { line, problem, .. } => AllowedSignersError::Line {
                path: Some(path.to_owned()),
                line,
                problem,
            },
            other => other,
        })
    }

    /// Parses the text of an `allowed_signers` file. Any line that cannot be
    /// honoured fails the whole file: a half-understood trust list is worse
    /// than none.
    pub fn parse(text: &str) -> Result<Self, AllowedSignersError> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            match parse_line(raw, line) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(problem) => {
                    return Err(AllowedSignersError::Line {
                        path: None,
                        line,
                        problem,
                    })
                }
            }
        }
        Ok(Self { entries })
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[AllowedSigner] {
        &self.entries
    }

    /// Decides whether `key` may sign for `namespace` at time `at` (for git,
    /// the committer time), exactly as `git verify-commit` does through
    /// `ssh-keygen`: first `find-principals` (the first line listing the key
    /// that is valid at `at`, whatever its namespaces), then `verify -I P` for
    /// each principal P of that line in turn, which accepts any line naming P
    /// with this key, the namespace and a window containing `at`.
    ///
    /// On top of git, a FIDO signature (`sk`) must attest a touch unless the
    /// accepting line says `no-touch-required`, and user verification when it
    /// says `verify-required` (`sshd`'s rules for `authorized_keys`; OpenSSH
    /// does not check these flags on SSHSIG signatures at all).
    ///
    /// When no line accepts, the error gives the most specific reason.
    pub fn authorize(
        &self,
        key: &KeyData,
        namespace: &str,
        at: DateTime<Utc>,
        sk: Option<SkDetails>,
    ) -> Result<Authorized<'_>, Unauthorized> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let listed: Vec<&AllowedSigner> = self.entries.iter().filter(|e| e.key.key_data() == key).collect();
        let refuse = |entry: &AllowedSigner, check: Check| {
            let (fingerprint, principals, line) = (fingerprint.clone(), entry.principals.clone(), entry.line);
            match check {
                Check::Namespace(namespaces) => Unauthorized::Namespace {
                    fingerprint,
                    principals,
                    line,
                    namespace: namespace.to_owned(),
                    namespaces,
                },
                Check::NotYetValid(valid_after) => Unauthorized::NotYetValid {
                    fingerprint,
                    principals,
                    line,
                    valid_after,
                    at,
                },
                Check::Expired(valid_before) => Unauthorized::Expired {
                    fingerprint,
                    principals,
                    line,
                    valid_before,
                    at,
                },
                Check::NoTouch => Unauthorized::NoTouch {
                    fingerprint,
                    principals,
                    line,
                },
                Check::NoUserVerification => Unauthorized::NoUserVerification {
                    fingerprint,
                    principals,
                    line,
                },
            }
        };
        let Some(&first) = listed.first() else {
            return Err(Unauthorized::KeyNotListed { fingerprint });
        };
        // find-principals: the first line for this key valid at `at`.
        let found = listed
            .iter()
            .find(|e| e.check_window(at).is_ok())
            .ok_or_else(|| refuse(first, first.check_window(at).expect_err("no line is valid")))?;
        let mut refusal = None;
        // As ssh-keygen prints them: split at commas, stopping at an empty one.
        for principal in found.principals.split(',').take_while(|p| !p.is_empty()) {
            for entry in listed.iter().filter(|e| e.names_principal(principal)) {
                match entry.check(namespace, at).and_then(|()| entry.check_sk(sk)) {
                    Ok(()) => {
                        return Ok(Authorized {
                            entry,
                            principal: principal.to_owned(),
                        })
                    }
                    Err(check) => {
                        refusal.get_or_insert_with(|| refuse(entry, check));
                    }
                }
            }
        }
        Err(refusal.unwrap_or(Unauthorized::KeyNotListed { fingerprint }))
    }
}

/// A line that accepts a signature, and the principal it was accepted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized<'a> {
    /// The accepting line.
    pub entry: &'a AllowedSigner,
    /// The principal, as `git verify-commit` reports it ("Good "git" signature
    /// for P"): one of the patterns of the first line listing the key.
    pub principal: String,
}

enum Check {
    Namespace(String),
    NotYetValid(DateTime<Utc>),
    Expired(DateTime<Utc>),
    NoTouch,
    NoUserVerification,
}

impl AllowedSigner {
    fn check(&self, namespace: &str, at: DateTime<Utc>) -> Result<(), Check> {
        if let Some(namespaces) = &self.namespaces {
            if !pattern::list_matches(namespace, namespaces) {
                return Err(Check::Namespace(namespaces.clone()));
            }
        }
        self.check_window(at)
    }

    fn check_sk(&self, sk: Option<SkDetails>) -> Result<(), Check> {
        match sk {
            Some(sk) if self.touch_required && !sk.user_present() => Err(Check::NoTouch),
            Some(sk) if self.verify_required && !sk.user_verified() => Err(Check::NoUserVerification),
            _ => Ok(()),
        }
    }

    fn check_window(&self, at: DateTime<Utc>) -> Result<(), Check> {
        if let Some(after) = self.valid_after {
            if at < after {
                return Err(Check::NotYetValid(after));
            }
        }
        if let Some(before) = self.valid_before {
            if at > before {
                return Err(Check::Expired(before));
            }
        }
        Ok(())
    }

    /// Whether `principal` is named by this entry's principal patterns.
    pub fn names_principal(&self, principal: &str) -> bool {
        pattern::list_matches(principal, &self.principals)
    }
}

impl fmt::Display for AllowedSigner {
    /// Renders the entry as an `allowed_signers` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.principals;
        if p.is_empty() || p.starts_with('#') || p.contains([' ', '\t']) {
            write!(f, "\"{p}\"")?;
        } else {
            write!(f, "{p}")?;
        }
        let mut options = Vec::new();
        if let Some(n) = &self.namespaces {
            options.push(format!("namespaces=\"{n}\""));
        }
        if let Some(t) = self.valid_after {
            options.push(format!("valid-after=\"{}\"", t.format("%Y%m%d%H%M%SZ")));
        }
        if let Some(t) = self.valid_before {
            options.push(format!("valid-before=\"{}\"", t.format("%Y%m%d%H%M%SZ")));
        }
        if !self.touch_required {
            options.push("no-touch-required".to_owned());
        }
        if self.verify_required {
            options.push("verify-required".to_owned());
        }
        if !options.is_empty() {
            write!(f, " {}", options.join(","))?;
        }
        let key = self.key.to_openssh().map_err(|_| fmt::Error)?;
        write!(f, " {key}")
    }
}

/// Splits off the next whitespace-delimited token, honouring OpenSSH's double
/// quotes (which are removed). Returns `None` at end of line.
fn next_token(rest: &mut &str) -> Result<Option<String>, LineProblem> {
    let s = rest.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        *rest = s;
        return Ok(None);
    }
    if let Some(quoted) = s.strip_prefix('"') {
        let end = quoted.find('"').ok_or(LineProblem::UnterminatedQuote)?;
        *rest = &quoted[end + 1..];
        return Ok(Some(quoted[..end].to_owned()));
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    *rest = &s[end..];
    Ok(Some(s[..end].to_owned()))
}

/// Splits off the options field, which may contain quoted spaces.
fn options_token(rest: &mut &str) -> Result<String, LineProblem> {
    let s = rest.trim_start_matches([' ', '\t']);
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ' ' | '\t' if !in_quotes => {
                *rest = &s[i..];
                return Ok(s[..i].to_owned());
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(LineProblem::UnterminatedQuote);
    }
    *rest = "";
    Ok(s.to_owned())
}

/// A key type ssh-key knows by name (not any `name@domain`, which it would
/// also accept as an "other" algorithm, and which options can look like).
fn is_key_type(token: &str) -> bool {
    matches!(Algorithm::new(token), Ok(a) if !matches!(a, Algorithm::Other(_)))
}

fn parse_line(raw: &str, line: usize) -> Result<Option<AllowedSigner>, LineProblem> {
    let mut rest = raw;
    let trimmed = rest.trim_start_matches([' ', '\t']);
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let principals = next_token(&mut rest)?.ok_or(LineProblem::MissingKey)?;
    let peek = {
        let mut probe = rest;
        next_token(&mut probe)?.ok_or(LineProblem::MissingKey)?
    };
    let options = if is_key_type(&peek) {
        Options::default()
    } else {
        let text = options_token(&mut rest)?;
        parse_options(&text)?
    };
    let key_type = next_token(&mut rest)?.ok_or(LineProblem::MissingKey)?;
    let key_body = next_token(&mut rest)?.ok_or(LineProblem::MissingKey)?;
    let key_text = format!("{key_type} {key_body}");
    let key = PublicKey::from_openssh(&key_text).map_err(|_| LineProblem::BadKey(shorten(&key_text)))?;
    if let (Some(after), Some(before)) = (options.valid_after, options.valid_before) {
        if before <= after {
            return Err(LineProblem::EmptyWindow);
        }
    }
    Ok(Some(AllowedSigner {
        line,
        principals,
        namespaces: options.namespaces,
        valid_after: options.valid_after,
        valid_before: options.valid_before,
        touch_required: !options.no_touch_required,
        verify_required: options.verify_required,
        key,
    }))
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_owned()
    }
}

#[derive(Default)]
struct Options {
    namespaces: Option<String>,
    valid_after: Option<DateTime<Utc>>,
    valid_before: Option<DateTime<Utc>>,
    no_touch_required: bool,
    verify_required: bool,
}

/// Parses `opt[,opt…]` where an option is `name` or `name="value"`.
fn parse_options(text: &str) -> Result<Options, LineProblem> {
    let mut options = Options::default();
    let mut rest = text;
    while !rest.is_empty() {
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = &rest[name_end..];
        let value = if let Some(after_eq) = rest.strip_prefix('=') {
            let quoted = after_eq
                .strip_prefix('"')
                .ok_or_else(|| LineProblem::UnquotedValue(name.clone()))?;
            let end = quoted.find('"').ok_or(LineProblem::UnterminatedQuote)?;
            rest = &quoted[end + 1..];
            Some(quoted[..end].to_owned())
        } else {
            None
        };
        rest = match rest.strip_prefix(',') {
            // As OpenSSH: "unexpected end-of-options".
            Some("") => return Err(LineProblem::TrailingComma),
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => return Err(LineProblem::UnknownOption(shorten(rest))),
        };
        let need_value = |v: Option<String>| v.ok_or_else(|| LineProblem::UnquotedValue(name.clone()));
        match name.as_str() {
            "cert-authority" => return Err(LineProblem::CertAuthority),
            "no-touch-required" | "verify-required" => {
                if value.is_some() {
                    return Err(LineProblem::FlagWithValue(name));
                }
                let flag = if name == "no-touch-required" {
                    &mut options.no_touch_required
                } else {
                    &mut options.verify_required
                };
                if std::mem::replace(flag, true) {
                    return Err(LineProblem::DuplicateOption(name));
                }
            }
            "namespaces" => {
                let v = need_value(value)?;
                set_once(&mut options.namespaces, v, &name)?;
            }
            "valid-after" | "valid-before" => {
                let v = need_value(value)?;
                let t = parse_ssh_time(&v).ok_or_else(|| LineProblem::BadTime {
                    option: name.clone(),
                    value: v.clone(),
                })?;
                let slot = if name == "valid-after" {
                    &mut options.valid_after
                } else {
                    &mut options.valid_before
                };
                set_once(slot, t, &name)?;
            }
            _ => return Err(LineProblem::UnknownOption(name)),
        }
    }
    Ok(options)
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), LineProblem> {
    if slot.is_some() {
        return Err(LineProblem::DuplicateOption(name.to_owned()));
    }
    *slot = Some(value);
    Ok(())
}

/// OpenSSH `parse_absolute_time`: `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`,
/// in UTC when suffixed with `Z` (or `UTC`), otherwise in local time.
pub fn parse_ssh_time(s: &str) -> Option<DateTime<Utc>> {
    let (digits, utc) = if let Some(d) = s.strip_suffix(['Z', 'z']) {
        (d, true)
    } else if let Some(d) = s
        .len()
        .checked_sub(3)
        .filter(|&cut| cut > 0 && s.get(cut..).is_some_and(|tail| tail.eq_ignore_ascii_case("utc")))
        .map(|cut| &s[..cut])
    {
        (d, true)
    } else {
        (s, false)
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let naive = match digits.len() {
        8 => NaiveDate::parse_from_str(digits, "%Y%m%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?,
        12 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M").ok()?,
        14 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok()?,
        _ => return None,
    };
    if utc {
        Some(Utc.from_utc_datetime(&naive))
    } else {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbJ2z2K2kMA6a+umVyITxuefXhgqiTFPHMg5jzyflzf";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILEJSRKQVza0LcfwNnv/+g8li9TlEUPi3ugODP0pP1Vj";

    fn key(s: &str) -> KeyData {
        PublicKey::from_openssh(s).unwrap().key_data().clone()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn problem(text: &str) -> LineProblem {
        match AllowedSigners::parse(text).unwrap_err() {
            AllowedSignersError::Line { problem, .. } => problem,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn plain_lines_comments_blank_and_crlf() {
        let text = format!(
            "# release managers\r\n\r\n  alice@example.com {KEY_A} alice laptop\r\n\"ci@example.com,bot@*\" {KEY_B}\n"
        );
        let signers = AllowedSigners::parse(&text).unwrap();
        assert_eq!(signers.entries().len(), 2);
        assert_eq!(signers.entries()[0].principals, "alice@example.com");
        assert_eq!(signers.entries()[0].line, 3);
        assert_eq!(signers.entries()[1].principals, "ci@example.com,bot@*");
        assert!(signers.entries()[1].names_principal("bot@anything"));
        let now = Utc::now();
        assert_eq!(
            signers
                .authorize(&key(KEY_B), "git", now, None)
                .unwrap()
                .entry
                .line,
            4
        );
    }

    #[test]
    fn options_are_parsed() {
        let text = format!(
            "alice namespaces=\"git,file\",valid-after=\"20260101\",valid-before=\"202612312359Z\" {KEY_A}\n"
        );
        let signers = AllowedSigners::parse(&text).unwrap();
        let e = &signers.entries()[0];
        assert_eq!(e.namespaces.as_deref(), Some("git,file"));
        assert_eq!(e.valid_before, Some(at("2026-12-31T23:59:00Z")));
        assert!(e.valid_after.is_some());
    }

    #[test]
    fn namespace_refusal_names_the_principal() {
        let signers = AllowedSigners::parse(&format!("alice namespaces=\"file\" {KEY_A}\n")).unwrap();
        let err = signers
            .authorize(&key(KEY_A), "git", Utc::now(), None)
            .unwrap_err();
        assert!(matches!(err, Unauthorized::Namespace { ref principals, .. } if principals == "alice"));
        assert!(err.to_string().contains("namespace `git`"), "{err}");
    }

    #[test]
    fn validity_window_is_checked_at_the_given_time() {
        let signers = AllowedSigners::parse(&format!(
            "alice valid-after=\"20260101Z\",valid-before=\"20260201Z\" {KEY_A}\n"
        ))
        .unwrap();
        let k = key(KEY_A);
        assert!(signers
            .authorize(&k, "git", at("2026-01-15T00:00:00Z"), None)
            .is_ok());
        assert!(matches!(
            signers.authorize(&k, "git", at("2025-12-31T23:59:59Z"), None),
            Err(Unauthorized::NotYetValid { .. })
        ));
        assert!(matches!(
            signers.authorize(&k, "git", at("2026-02-01T00:00:01Z"), None),
            Err(Unauthorized::Expired { .. })
        ));
    }

    #[test]
    fn later_line_can_authorize_when_an_earlier_one_refuses() {
        let signers =
            AllowedSigners::parse(&format!("old valid-before=\"20200101Z\" {KEY_A}\nnew {KEY_A}\n")).unwrap();
        assert_eq!(
            signers
                .authorize(&key(KEY_A), "git", Utc::now(), None)
                .unwrap()
                .principal,
            "new"
        );
    }

    #[test]
    fn principals_are_found_as_git_finds_them() {
        // git asks ssh-keygen for the first line listing the key (ignoring
        // namespaces), then verifies for each of that line's principals: a
        // later line for another principal does not help.
        let signers = AllowedSigners::parse(&format!(
            "files-only namespaces=\"file\" {KEY_A}\nreleases namespaces=\"git\" {KEY_A}\n"
        ))
        .unwrap();
        let err = signers
            .authorize(&key(KEY_A), "git", Utc::now(), None)
            .unwrap_err();
        assert!(matches!(err, Unauthorized::Namespace { line: 1, .. }), "{err}");

        // A later line naming the same principal does help.
        let signers = AllowedSigners::parse(&format!(
            "alice namespaces=\"file\" {KEY_A}\nalice,bob namespaces=\"git\" {KEY_A}\n"
        ))
        .unwrap();
        let ok = signers.authorize(&key(KEY_A), "git", Utc::now(), None).unwrap();
        assert_eq!((ok.principal.as_str(), ok.entry.line), ("alice", 2));

        // Each principal of the first line is tried in turn; wildcards match
        // themselves, as `ssh-keygen -Y verify -I 'ci@*'` does.
        let signers = AllowedSigners::parse(&format!(
            "\"ci@*,bob\" {KEY_A}\nbob namespaces=\"file\" {KEY_B}\n"
        ))
        .unwrap();
        let ok = signers.authorize(&key(KEY_A), "git", Utc::now(), None).unwrap();
        assert_eq!(ok.principal, "ci@*");
    }

    #[test]
    fn security_keys_must_attest_a_touch_unless_the_line_waives_it() {
        let touched = SkDetails {
            flags: 0x01,
            counter: 7,
        };
        let untouched = SkDetails {
            flags: 0x00,
            counter: 8,
        };
        let verified = SkDetails {
            flags: 0x05,
            counter: 9,
        };
        let now = Utc::now();
        let k = key(KEY_A);

        let strict = AllowedSigners::parse(&format!("alice {KEY_A}\n")).unwrap();
        assert!(strict.authorize(&k, "git", now, Some(touched)).is_ok());
        let err = strict.authorize(&k, "git", now, Some(untouched)).unwrap_err();
        assert!(matches!(err, Unauthorized::NoTouch { line: 1, .. }));
        assert!(err.to_string().contains("no-touch-required"), "{err}");
        // Keys that are not security keys carry no flags and are unaffected.
        assert!(strict.authorize(&k, "git", now, None).is_ok());

        let waived = AllowedSigners::parse(&format!("alice no-touch-required {KEY_A}\n")).unwrap();
        assert!(waived.authorize(&k, "git", now, Some(untouched)).is_ok());

        let pin = AllowedSigners::parse(&format!("alice verify-required {KEY_A}\n")).unwrap();
        assert!(matches!(
            pin.authorize(&k, "git", now, Some(touched)),
            Err(Unauthorized::NoUserVerification { .. })
        ));
        assert!(pin.authorize(&k, "git", now, Some(verified)).is_ok());

        // A second line for the same principal may waive what the first requires.
        let both = AllowedSigners::parse(&format!(
            "alice {KEY_A}\nalice no-touch-required,namespaces=\"git\" {KEY_A}\n"
        ))
        .unwrap();
        assert_eq!(
            both.authorize(&k, "git", now, Some(untouched))
                .unwrap()
                .entry
                .line,
            2
        );
    }

    #[test]
    fn options_that_look_like_key_types_and_trailing_commas() {
        // `name@domain` is not taken for a key type.
        let signers =
            AllowedSigners::parse(&format!("alice namespaces=\"git@example.com\" {KEY_A}\n")).unwrap();
        assert_eq!(
            signers.entries()[0].namespaces.as_deref(),
            Some("git@example.com")
        );
        assert_eq!(
            problem(&format!("alice namespaces=\"git\", {KEY_A}\n")),
            LineProblem::TrailingComma
        );
    }

    #[test]
    fn flag_options_parse_render_and_refuse_values() {
        let signers =
            AllowedSigners::parse(&format!("alice no-touch-required,verify-required {KEY_A}\n")).unwrap();
        let e = &signers.entries()[0];
        assert!(!e.touch_required && e.verify_required);
        let again = AllowedSigners::parse(&e.to_string()).unwrap();
        assert_eq!(again.entries()[0].touch_required, e.touch_required);
        assert_eq!(again.entries()[0].verify_required, e.verify_required);
        assert_eq!(
            problem(&format!("alice no-touch-required=\"yes\" {KEY_A}\n")),
            LineProblem::FlagWithValue("no-touch-required".into())
        );
        assert_eq!(
            problem(&format!("alice verify-required,verify-required {KEY_A}\n")),
            LineProblem::DuplicateOption("verify-required".into())
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_fingerprint() {
        let signers = AllowedSigners::parse(&format!("alice {KEY_A}\n")).unwrap();
        let err = signers
            .authorize(&key(KEY_B), "git", Utc::now(), None)
            .unwrap_err();
        assert!(err.to_string().starts_with("key SHA256:"), "{err}");
        assert!(matches!(err, Unauthorized::KeyNotListed { .. }));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            problem(&format!("alice cert-authority {KEY_A}")),
            LineProblem::CertAuthority
        );
        assert_eq!(problem("alice"), LineProblem::MissingKey);
        assert_eq!(problem("alice ssh-ed25519"), LineProblem::MissingKey);
        assert!(matches!(
            problem("alice ssh-ed25519 AAAAnotbase64!"),
            LineProblem::BadKey(_)
        ));
        assert!(
            matches!(problem(&format!("alice bogus=\"x\" {KEY_A}")), LineProblem::UnknownOption(o) if o == "bogus")
        );
        assert_eq!(
            problem(&format!("alice namespaces=git {KEY_A}")),
            LineProblem::UnquotedValue("namespaces".into())
        );
        assert_eq!(
            problem(&format!("\"alice {KEY_A}")),
            LineProblem::UnterminatedQuote
        );
        assert!(matches!(
            problem(&format!("alice valid-after=\"2026\" {KEY_A}")),
            LineProblem::BadTime { .. }
        ));
        assert_eq!(
            problem(&format!(
                "alice valid-after=\"20260201Z\",valid-before=\"20260101Z\" {KEY_A}"
            )),
            LineProblem::EmptyWindow
        );
        assert_eq!(
            problem(&format!("alice namespaces=\"git\",namespaces=\"file\" {KEY_A}")),
            LineProblem::DuplicateOption("namespaces".into())
        );
    }

    #[test]
    fn error_names_file_and_line() {
        let err = AllowedSigners::parse(&format!("# c\nalice cert-authority {KEY_A}\n")).unwrap_err();
        assert!(err.to_string().starts_with("line 2: `cert-authority`"), "{err}");
    }

    #[test]
    fn ssh_times() {
        assert_eq!(parse_ssh_time("20260102Z"), Some(at("2026-01-02T00:00:00Z")));
        assert_eq!(parse_ssh_time("202601020304Z"), Some(at("2026-01-02T03:04:00Z")));
        assert_eq!(
            parse_ssh_time("20260102030405Z"),
            Some(at("2026-01-02T03:04:05Z"))
        );
        assert_eq!(
            parse_ssh_time("20260102030405UTC"),
            Some(at("2026-01-02T03:04:05Z"))
        );
        assert!(parse_ssh_time("20260102").is_some());
        assert_eq!(parse_ssh_time("20261302Z"), None);
        assert_eq!(parse_ssh_time("2026010Z"), None);
        assert_eq!(parse_ssh_time("+0260102Z"), None);
        // Found by the fuzzer: a multibyte character where "UTC" would be.
        assert_eq!(parse_ssh_time("2026010aliceeiiiii\u{fb6}\u{3e5}"), None);
        assert_eq!(parse_ssh_time("é"), None);
    }

    #[test]
    fn display_round_trips() {
        let text = format!("alice namespaces=\"git\",valid-after=\"20260101000000Z\" {KEY_A}");
        let signers = AllowedSigners::parse(&text).unwrap();
        let rendered = signers.entries()[0].to_string();
        assert_eq!(
            AllowedSigners::parse(&rendered).unwrap().entries()[0].namespaces,
            signers.entries()[0].namespaces
        );
        assert_eq!(rendered, text);
        for principals in ["\"two words\"", "\"#not-a-comment\"", "\"\""] {
            let line = format!("{principals} {KEY_A}");
            let parsed = AllowedSigners::parse(&line).unwrap();
            let entry = &parsed.entries()[0];
            let again = AllowedSigners::parse(&entry.to_string()).unwrap();
            assert_eq!(again.entries()[0].principals, entry.principals, "{line}");
        }
    }
}
