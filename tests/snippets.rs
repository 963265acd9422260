//! Every configuration snippet in the documentation, checked against the code
//! so a guide cannot rot (as `reference.rs` checks docs/configuration.md):
//!
//! - every ```nix block of the README and `docs/` parses (`nix-instantiate
//!   --parse`, as an expression or as the bindings of one), and every
//!   `services.ferry-agent` option it sets is declared by `nixos-module/`
//!   (the names are read from the module itself, evaluated by Nix), with
//!   `settings.*` keys that the agent's parser accepts;
//! - the option column of docs/configuration.md's module table names real
//!   options, and every agent.toml key a user sets has a typed option there
//!   (or is one of the few left to `settings` on purpose, with the reason);
//! - every ```toml block of `docs/guides/` is an agent.toml that
//!   `ferry-agent check-config` accepts;
//! - every `ferry-agent …` and `ferry-signer …` command line in a ```sh block
//!   of `docs/guides/` uses a real subcommand and real flags (those of
//!   docs/cli.md, which `reference.rs` checks against the binaries).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::reference::{accepted_keys, repo_file};

/// The Markdown files whose snippets are checked: README.md and docs/**.md.
pub(crate) fn documents() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let root = repo_root();
    let mut docs = vec!["README.md".to_owned()];
    walk(&root, &root.join("docs"), &mut docs);
    docs.sort();
    docs
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The guides: docs/guides/*.md.
fn guides() -> Vec<String> {
    let guides: Vec<String> = documents()
        .into_iter()
        .filter(|d| d.starts_with("docs/guides/"))
        .collect();
    assert!(
        guides.len() >= 5,
        "expected the migration guides in docs/guides/, found {guides:?}"
    );
    guides
}

/// The fenced blocks of `text` whose info string is `lang`, with the line
/// each starts on.
pub(crate) fn blocks<'t>(text: &'t str, lang: &str) -> Vec<(usize, &'t str)> {
    let mut found = Vec::new();
    let mut lines = text.split_inclusive('\n').enumerate();
    let mut offset = 0;
    while let Some((n, line)) = lines.next() {
        offset += line.len();
        if line.trim_end() != format!("```{lang}") {
            continue;
        }
        let start = offset;
        for (_, inner) in lines.by_ref() {
            offset += inner.len();
            if inner.trim_end() == "```" {
                found.push((n + 1, &text[start..offset - inner.len()]));
                break;
            }
        }
    }
    found
}

/// Nix's own rendering of `snippet` (`nix-instantiate --parse`): comments
/// gone, dotted bindings nested, strings in double quotes. A snippet that is
/// not an expression is parsed as the bindings of an attribute set.
fn parse_nix(snippet: &str) -> Result<String, String> {
    let parse = |text: &str| {
        let out = Command::new("nix-instantiate")
            .args(["--parse", "-E", text])
            .output()
            .expect("nix-instantiate is installed (scripts/install-deps)");
        match out.status.success() {
            true => Ok(String::from_utf8(out.stdout).unwrap()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    };
    parse(snippet).or_else(|e| parse(&format!("{{\n{snippet}\n}}")).map_err(|_| e))
}

#[derive(Debug, PartialEq)]
enum Token {
    Str(String),
    Word(String),
}

fn tokens(rendered: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = rendered.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => s.extend(chars.next()),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                out.push(Token::Str(s));
            }
            '{' | '}' | '[' | ']' | '(' | ')' | ';' => out.push(Token::Word(c.into())),
            c if c.is_alphanumeric() || "_-'".contains(c) => {
                let mut w = String::from(c);
                while let Some(&n) = chars
                    .peek()
                    .filter(|n| n.is_alphanumeric() || "_-'".contains(**n))
                {
                    w.push(n);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
            c => {
                let mut w = String::from(c);
                while let Some(&n) = chars.peek().filter(|n| "=<>!&|+*/?:@,.".contains(**n)) {
                    w.push(n);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    out
}

/// The attribute paths bound in a parsed snippet, each with whether its
/// value is an attribute set literal. An attribute set that is not the value
/// of a binding (a module in a list, a function's body) starts again from
/// the root, as NixOS reads a module.
fn bindings(rendered: &str) -> Vec<(Vec<String>, bool)> {
    let toks = tokens(rendered);
    let word = |i: usize, w: &str| matches!(toks.get(i), Some(Token::Word(x)) if x == w);
    let name = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) | Some(Token::Str(w)) => Some(w.clone()),
        None => None,
    };
    let mut frames: Vec<Vec<String>> = vec![vec![]];
    let mut found = Vec::new();
    for i in 0..toks.len() {
        if word(i, "{") {
            let prefix = match i >= 2 && word(i - 1, "=") {
                true => [frames.last().unwrap().clone(), vec![name(i - 2).unwrap()]].concat(),
                false => vec![],
            };
            frames.push(prefix);
        } else if word(i, "}") {
            frames.pop();
        } else if word(i, "=") && i >= 2 && (word(i - 2, "{") || word(i - 2, ";") || word(i - 2, "let")) {
            let path = [frames.last().unwrap().clone(), vec![name(i - 1).unwrap()]].concat();
            found.push((path, word(i + 1, "{")));
        }
    }
    found
}

/// The options `nixos-module/` declares under `services.ferry-agent`, dotted
/// (`forge.kind`), read from the module evaluated with stand-ins for `lib`'s
/// option constructors (nothing else of the module is evaluated).
pub(crate) fn module_options() -> BTreeSet<String> {
    let expr = format!(
        r#"let
  option = _: {{ _type = "option"; }};
  module = import {root}/nixos-module/default.nix {{
    config = {{ }}; pkgs = {{ }};
    lib = {{ mkOption = option; mkEnableOption = option; }};
  }};
  walk = prefix: set: builtins.concatLists (map
    (n: if set.${{n}} ? _type then [ (prefix + n) ] else walk (prefix + n + ".") set.${{n}})
    (builtins.attrNames set));
in walk "" module.options.services.ferry-agent"#,
        root = repo_root().canonicalize().unwrap().display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .output()
        .expect("nix-instantiate is installed (scripts/install-deps)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let options: BTreeSet<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        options.contains("repository") && options.contains("forge.tokenFile"),
        "{options:?}"
    );
    options
}

/// What is wrong with setting `path` (with an attribute set value or not),
/// if anything.
fn check_option(
    path: &[String],
    is_set: bool,
    options: &BTreeSet<String>,
    keys: &BTreeSet<String>,
) -> Option<String> {
    let rest = match path {
        [s, f, rest @ ..] if s == "services" && f == "ferry-agent" => rest,
        _ => return None,
    };
    let (known, dotted, what) = match rest {
        [] => return None,
        [s, key @ ..] if s == "settings" => (keys, key.join("."), "agent.toml key under settings"),
        _ => (options, rest.join("."), "option"),
    };
    // An option (or key) whose value is itself an attribute set, such as
    // `cacheBearerTokenFiles = { HOST = …; }`, takes any names inside it.
    let parts: Vec<&str> = dotted.split('.').collect();
    let inside_a_set_option = (1..parts.len()).any(|n| known.contains(&parts[..n].join(".")));
    let fine = inside_a_set_option
        || match is_set {
            true => {
                dotted.is_empty()
                    || known.contains(&dotted)
                    || known.iter().any(|k| k.starts_with(&format!("{dotted}.")))
            }
            false => known.contains(&dotted),
        };
    (!fine).then(|| format!("`services.ferry-agent.{}` is not an {what}", rest.join(".")))
}

/// The problems of one ```nix snippet.
fn nix_snippet_problems(snippet: &str, options: &BTreeSet<String>, keys: &BTreeSet<String>) -> Vec<String> {
    let rendered = match parse_nix(snippet) {
        Ok(r) => r,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    bindings(&rendered)
        .iter()
        .filter_map(|(path, is_set)| check_option(path, *is_set, options, keys))
        .collect()
}

#[test]
fn the_option_check_finds_a_misspelled_option_and_a_bad_settings_key() {
    let options = module_options();
    let keys = accepted_keys();
    let good = r#"{ config, ... }: {
      services.ferry-agent = {
        enable = true;
        forge.tokenFile = config.sops.secrets."ferry-forge-token".path;
        healthCommands = [ { command = "true"; timeout = "5s"; } ];
        settings = { switch.timeout = "5m"; host = "web1"; };
      };
      sops.secrets.ferry-forge-token = { };
    }"#;
    assert_eq!(nix_snippet_problems(good, &options, &keys), Vec::<String>::new());
    let bad =
        r#"{ services.ferry-agent.forge.token = "x"; services.ferry-agent.settings.switch.timout = "5m"; }"#;
    assert_eq!(
        nix_snippet_problems(bad, &options, &keys),
        [
            "`services.ferry-agent.forge.token` is not an option",
            "`services.ferry-agent.settings.switch.timout` is not an agent.toml key under settings",
        ]
    );
    let fragment = "services.ferry-agent.pollInterval = \"30s\";";
    assert_eq!(
        nix_snippet_problems(fragment, &options, &keys),
        Vec::<String>::new()
    );
    assert!(nix_snippet_problems("{ a = ; }", &options, &keys)[0].starts_with("does not parse"));
}

#[test]
fn every_nix_snippet_parses_and_sets_only_real_options() {
    let options = module_options();
    let keys = accepted_keys();
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        for (line, snippet) in blocks(&repo_file(&doc), "nix") {
            checked += 1;
            for p in nix_snippet_problems(snippet, &options, &keys) {
                problems.push(format!("{doc}:{line}: {p}"));
            }
        }
    }
    for guide in guides() {
        assert!(
            !blocks(&repo_file(&guide), "nix").is_empty(),
            "{guide} shows no NixOS configuration"
        );
    }
    assert!(checked >= 10, "only {checked} nix snippets found");
    assert!(
        problems.is_empty(),
        "Nix snippets out of step with nixos-module/:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_configuration_reference_names_real_module_options() {
    let options = module_options();
    let doc = repo_file("docs/configuration.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("The NixOS module\n"))
        .expect("docs/configuration.md has a `## The NixOS module` section");
    let named: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|o| !o.starts_with("networking."))
        .map(str::to_owned)
        .collect();
    assert!(named.len() >= 10, "{named:?}");
    let unknown: Vec<_> = named.iter().filter(|o| !options.contains(*o)).collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md names options the module lacks: {unknown:?}"
    );
    let undocumented: Vec<_> = options
        .iter()
        .filter(|o| !named.contains(o) && !["enable", "package", "settings"].contains(&o.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "options missing from docs/configuration.md's module table: {undocumented:?}"
    );
}

/// agent.toml keys with no typed option on purpose: on NixOS they are left
/// as the module has them (`settings` still takes them).
const KEYS_WITHOUT_AN_OPTION: [(&str, &str); 2] = [
    (
        "switch.profile",
        "NixOS's system profile is /nix/var/nix/profiles/system, and the unit may write only under /nix/var/nix/profiles",
    ),
    (
        "switch.unit",
        "the switch units' name prefix matters only to two agents on one machine, which the module never runs",
    ),
];

/// The agent.toml key each row of docs/configuration.md's module table
/// writes: the first backquoted name of its key column that is a key.
fn module_table_keys(documented: &BTreeSet<String>) -> BTreeSet<String> {
    let doc = repo_file("docs/configuration.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("The NixOS module\n"))
        .expect("docs/configuration.md has a `## The NixOS module` section");
    section
        .lines()
        .filter(|l| l.starts_with("| "))
        .filter_map(|l| ferry_test_support::table_cells(l).get(1).map(|c| c.to_string()))
        .filter_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .find(|name| documented.contains(*name))
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn every_documented_key_has_a_typed_option_or_a_reason() {
    let documented = crate::reference::documented_keys();
    let mapped = module_table_keys(&documented);
    assert!(mapped.len() >= 20, "{mapped:?}");
    let excepted: BTreeSet<String> = KEYS_WITHOUT_AN_OPTION
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    let uncovered: Vec<_> = documented
        .iter()
        .filter(|k| !mapped.contains(*k) && !excepted.contains(*k))
        .collect();
    assert!(
        uncovered.is_empty(),
        "agent.toml keys with no typed option in nixos-module/ (none in docs/configuration.md's \
         module table): {uncovered:?}. Add an option (and its row in the table), or, if a NixOS \
         user never sets the key, add it with the reason to KEYS_WITHOUT_AN_OPTION"
    );
    for (key, reason) in KEYS_WITHOUT_AN_OPTION {
        assert!(!reason.is_empty());
        assert!(
            documented.contains(key),
            "KEYS_WITHOUT_AN_OPTION names `{key}`, which docs/configuration.md does not document: remove it"
        );
        assert!(
            !mapped.contains(key),
            "`{key}` has a typed option now (the module table maps one to it): remove it from KEYS_WITHOUT_AN_OPTION"
        );
    }
}

#[test]
fn every_agent_toml_snippet_in_the_guides_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    // check-config also reads the allowed_signers file: every snippet gets
    // one that holds a real key.
    let signers = dir.path().join("allowed_signers");
    let key = ferry_signer::keys::SigningKey::generate("snippets").unwrap();
    std::fs::write(&signers, key.allowed_signers_line("ci@example.com") + "\n").unwrap();
    let agent = crate::common::agent_binary();
    let mut checked = 0;
    for guide in guides() {
        for (line, snippet) in blocks(&repo_file(&guide), "toml") {
            let mut table: toml::Table = snippet
                .parse()
                .unwrap_or_else(|e| panic!("{guide}:{line}: not TOML: {e}"));
            table
                .entry("source")
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{guide}:{line}: `source` is not a table"))
                .insert("allowed_signers".into(), signers.display().to_string().into());
            let file = dir.path().join(format!("snippet-{checked}.toml"));
            std::fs::write(&file, table.to_string()).unwrap();
            let out = Command::new(&agent)
                .arg("--config")
                .arg(&file)
                .arg("check-config")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{guide}:{line}: ferry-agent check-config refuses the snippet: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "no agent.toml snippet in the guides");
}

/// The flags docs/cli.md lists for `binary subcommand`.
fn documented_flags(cli_md: &str, binary: &str, subcommand: &str) -> Option<BTreeSet<String>> {
    let heading = format!("### `{binary} {subcommand}`\n");
    let section = &cli_md[cli_md.find(&heading)? + heading.len()..];
    let section = &section[..section.find("\n### ").unwrap_or(section.len())];
    Some(
        section
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
            .filter(|w| w.starts_with("--"))
            .map(str::to_owned)
            .collect(),
    )
}

/// The `binary …` invocations in a shell snippet: the arguments after the
/// binary (called by name, by a path ending in it, or as `nix run …#binary
/// --`), continuation lines joined, comments and `journalctl`/`systemctl`
/// lines (which name the unit, not the binary) left out.
fn invocations(snippet: &str, binary: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in snippet.split("\\\n").collect::<Vec<_>>().join(" ").lines() {
        let words: Vec<&str> = line.split(" #").next().unwrap().split_whitespace().collect();
        if matches!(words.first(), Some(&"journalctl") | Some(&"systemctl")) {
            continue;
        }
        for (i, w) in words.iter().enumerate() {
            let by_name =
                *w == binary || w.ends_with(&format!("/{binary}")) || w.ends_with(&format!("$({binary}"));
            let by_nix_run = w.ends_with(&format!("#{binary}")) && words.get(i + 1) == Some(&"--");
            if by_name || by_nix_run {
                let skip = if by_nix_run { 2 } else { 1 };
                found.push(words[i + skip..].iter().map(|w| w.to_string()).collect());
            }
        }
    }
    found
}

/// What is wrong with the `ferry-agent` and `ferry-signer` command lines of a
/// shell script (a ```sh block, a workflow's `run:`), and how many there are.
pub(crate) fn command_line_problems(script: &str, cli_md: &str) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut checked = 0;
    for binary in ["ferry-agent", "ferry-signer"] {
        for args in invocations(script, binary) {
            // The global --config comes before the subcommand.
            let sub = args
                .iter()
                .enumerate()
                .find(|(i, a)| !a.starts_with('-') && (*i == 0 || args[i - 1] != "--config"))
                .map(|(_, a)| a.as_str())
                .unwrap_or("");
            let Some(flags) = documented_flags(cli_md, binary, sub) else {
                problems.push(format!("`{binary} {sub}` is not a subcommand"));
                continue;
            };
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                if flag != "--config" && !flags.contains(flag) {
                    problems.push(format!("`{binary} {sub}` has no flag {flag}"));
                }
            }
            checked += 1;
        }
    }
    (problems, checked)
}

#[test]
fn every_command_line_in_the_guides_uses_real_subcommands_and_flags() {
    let cli_md = repo_file("docs/cli.md");
    let mut problems = Vec::new();
    let mut checked = 0;
    for guide in guides() {
        for (line, snippet) in blocks(&repo_file(&guide), "sh") {
            let (found, n) = command_line_problems(snippet, &cli_md);
            problems.extend(found.into_iter().map(|p| format!("{guide}:{line}: {p}")));
            checked += n;
        }
    }
    assert!(checked >= 10, "only {checked} command lines found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
