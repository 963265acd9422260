//! The reference documentation, checked against the code so it cannot drift:
//! `docs/configuration.md` against the configuration parser (every key the
//! parser accepts is documented and every documented key is accepted, the
//! documented defaults are the parser's, the complete example parses), and
//! `docs/cli.md`'s ferry-agent section against `ferry-agent --help`.
//!
//! The accepted keys are read from the parser itself: asked to parse a table
//! holding an unknown key, it refuses and lists the keys it expected.

use std::collections::BTreeSet;
use std::path::Path;

use ferry_agent::config::Config;
use ferry_test_support::cli_reference;

const DOC: &str = "docs/configuration.md";
const KEY: &str = "cache.example.com-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
const PROBE: &str = "__ferry_probe";

pub(crate) fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("/etc/ferry/agent.toml"), || Some("web1".into()))
        .map_err(|e| format!("{e}"))
}

/// The keys the parser accepts in the root table (`None`) or in `[table]`;
/// `None` when `table` is not a table at all.
fn accepted_in(table: Option<&str>) -> Option<Vec<String>> {
    let text = match table {
        None => format!("{PROBE} = 1\n"),
        Some(t) => format!("[{t}]\n{PROBE} = 1\n"),
    };
    let err = parse(&text).expect_err("a probe key is never accepted");
    let (_, after) = err.split_once(&format!("unknown field `{PROBE}`"))?;
    let expected = after.lines().next().unwrap_or("");
    let names: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "cannot read the expected keys from: {err}");
    Some(names)
}

/// Every key the parser accepts, dotted (`source.url`).
pub(crate) fn accepted_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for root in accepted_in(None).expect("the root is a table") {
        match accepted_in(Some(&root)) {
            Some(inner) => keys.extend(inner.into_iter().map(|k| format!("{root}.{k}"))),
            None => {
                keys.insert(root);
            }
        }
    }
    keys
}

/// A documented key: name, default column.
struct Row {
    key: String,
    default: String,
}

/// The rows of the `## Keys` table.
fn documented_rows() -> Vec<Row> {
    let doc = repo_file(DOC);
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Keys\n"))
        .unwrap_or_else(|| panic!("{DOC} has no `## Keys` section"));
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells = ferry_test_support::table_cells(l);
            assert!(
                cells.len() >= 4,
                "{DOC}: a row needs key, type, default and meaning: {l}"
            );
            Row {
                key: cells[0].trim_matches('`').to_owned(),
                default: cells[2].to_owned(),
            }
        })
        .collect()
}

/// The keys of the `## Keys` table, dotted.
pub(crate) fn documented_keys() -> BTreeSet<String> {
    documented_rows().into_iter().map(|r| r.key).collect()
}

/// The smallest valid file, with `key = value` set (dotted key) and `drop`
/// left out.
fn minimal_with(set: Option<(&str, &str)>, drop: Option<&str>) -> String {
    let mut tables: Vec<(String, Vec<String>)> = vec![
        (String::new(), vec![]),
        (
            "source".into(),
            vec!["url = \"https://git.example.com/ops/deploy.git\"".into()],
        ),
        (
            "cache".into(),
            vec![
                "substituters = [\"https://cache.example.com\"]".into(),
                format!("trusted_public_keys = [\"{KEY}\"]"),
            ],
        ),
    ];
    if let Some(dropped) = drop {
        let (table, key) = dropped.split_once('.').unwrap_or(("", dropped));
        for (t, lines) in &mut tables {
            if t == table {
                lines.retain(|l| !l.starts_with(&format!("{key} =")));
            }
        }
    }
    if let Some((dotted, value)) = set {
        let (table, key) = dotted.split_once('.').unwrap_or(("", dotted));
        let line = format!("{key} = {value}");
        match tables.iter_mut().find(|(t, _)| t == table) {
            Some((_, lines)) => {
                lines.retain(|l| !l.starts_with(&format!("{key} =")));
                lines.push(line);
            }
            None => tables.push((table.to_owned(), vec![line])),
        }
    }
    let mut text = String::new();
    for (table, lines) in tables {
        if !table.is_empty() {
            text.push_str(&format!("[{table}]\n"));
        }
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
    }
    text
}

/// The dotted keys used in a TOML document (tables one level deep, as the
/// configuration has them).
fn keys_of(toml_text: &str) -> BTreeSet<String> {
    let table: toml::Table = toml_text.parse().expect("the example is TOML");
    let mut keys = BTreeSet::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(inner) => keys.extend(inner.keys().map(|i| format!("{k}.{i}"))),
            _ => {
                keys.insert(k);
            }
        }
    }
    keys
}

/// The first ```toml block after `heading` in `text`.
fn toml_block_after<'t>(text: &'t str, heading: &str) -> &'t str {
    let rest = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` heading"))..];
    let start = rest.find("```toml\n").expect("a ```toml block") + "```toml\n".len();
    let len = rest[start..].find("```").expect("the block ends");
    &rest[start..start + len]
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_accepted() {
    let accepted = accepted_keys();
    assert!(
        accepted.contains("source.url") && accepted.contains("report.context"),
        "{accepted:?}"
    );
    let documented: BTreeSet<String> = documented_rows().into_iter().map(|r| r.key).collect();
    let missing: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{DOC} is out of step with agent/src/config/.\n  \
         accepted by the parser but not documented: {missing:?}\n  \
         documented but refused by the parser: {unknown:?}\n\
         Add or remove rows in its `## Keys` table (| `key` | type | default | meaning |) \
         and keys in its complete example, then run: cargo test -p ferry-tests reference"
    );
}

#[test]
fn documented_defaults_are_the_parsers() {
    let baseline = parse(&minimal_with(None, None)).expect("the minimal file parses");
    let mut checked = 0;
    for row in documented_rows() {
        let default = row.default.as_str();
        if default == "required" {
            let without = minimal_with(None, Some(&row.key));
            assert!(
                parse(&without).is_err(),
                "{DOC} says `{}` is required, but a file without it parses",
                row.key
            );
            continue;
        }
        // Only literal defaults (`"60s"`, `true`, `[]`) can be compared.
        let Some(literal) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) else {
            continue;
        };
        let text = minimal_with(Some((&row.key, literal)), None);
        let explicit = parse(&text).unwrap_or_else(|e| {
            panic!(
                "{DOC}: the documented default of `{}` ({literal}) is refused: {e}",
                row.key
            )
        });
        assert_eq!(
            explicit, baseline,
            "{DOC}: `{}` = {literal} is not what the parser uses when the key is absent; \
             fix the default column (or the default in agent/src/config/)",
            row.key
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} literal defaults were checked");
}

#[test]
fn the_complete_example_parses_and_uses_every_key() {
    let doc = repo_file(DOC);
    let mut used = BTreeSet::new();
    for (name, example) in complete_examples(&doc) {
        parse(&example).unwrap_or_else(|e| panic!("{DOC}: the complete example{name} is refused: {e}"));
        used.extend(keys_of(&example));
    }
    let accepted = accepted_keys();
    let unused: Vec<_> = accepted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "{DOC}: the complete example leaves out {unused:?}"
    );
}

/// The complete example, and the same with each later ```toml block of its
/// section put in place of the sections it names (keys that exclude each
/// other, such as an s3:// source's key pair and an https source's token).
fn complete_examples(doc: &str) -> Vec<(String, String)> {
    let heading = "## Complete example";
    let section = &doc[doc.find(heading).expect("a complete example")..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |end| end + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let len = body.find("```").expect("the block ends");
        blocks.push(&body[..len]);
        rest = &body[len + 3..];
    }
    let (full, variants) = blocks.split_first().expect("a ```toml block");
    let base: toml::Table = full.parse().expect("the example is TOML");
    let mut examples = vec![(String::new(), full.to_string())];
    for variant in variants {
        let variant: toml::Table = variant.parse().expect("the variant is TOML");
        let mut whole = base.clone();
        let names: Vec<String> = variant.keys().cloned().collect();
        whole.extend(variant);
        examples.push((
            format!(" with its [{}] variant", names.join("], [")),
            toml::to_string(&whole).unwrap(),
        ));
    }
    examples
}

#[test]
fn the_readme_example_uses_only_real_keys() {
    let readme = repo_file("README.md");
    let example = toml_block_after(&readme, "## `ferry-agent`");
    let accepted = accepted_keys();
    let unknown: Vec<_> = keys_of(example)
        .into_iter()
        .filter(|k| !accepted.contains(k))
        .collect();
    assert!(
        unknown.is_empty(),
        "README.md's agent.toml example uses unknown keys {unknown:?}"
    );
}

#[test]
fn cli_reference_matches_the_binary() {
    let rendered = cli_reference::render(crate::common::agent_binary(), "ferry-agent");
    cli_reference::check_region(
        &cli_reference::cli_md(env!("CARGO_MANIFEST_DIR")),
        "ferry-agent",
        &rendered,
        "FERRY_UPDATE_REFERENCE=1 cargo test -p ferry-tests reference",
    );
}
