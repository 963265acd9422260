//! `docs/cli.md` is rendered from the binaries' own `--help` (clap), one
//! region per binary, so the reference cannot drift from the code. One test
//! checks each binary's region (the signer's in its own crate, the agent's
//! in `tests/`); with `FERRY_UPDATE_REFERENCE=1` it rewrites the region
//! instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable that turns the check into a rewrite.
pub const UPDATE_ENV: &str = "FERRY_UPDATE_REFERENCE";

/// The CLI reference, from a crate's manifest directory.
pub fn cli_md(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../docs/cli.md")
}

/// `bin args… --help`, with trailing spaces removed from every line.
fn help(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .env_remove("COLUMNS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?} --help failed: {out:?}",
        bin.display()
    );
    let text = String::from_utf8(out.stdout).expect("help is UTF-8");
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    while lines.last() == Some(&"") {
        lines.pop();
    }
    lines.join("\n") + "\n"
}

/// The visible subcommands listed under `Commands:` (without `help`).
fn subcommands(top_help: &str) -> Vec<String> {
    top_help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The Markdown for one binary: its `--help`, then each subcommand's.
pub fn render(bin: impl AsRef<Path>, name: &str) -> String {
    let bin = bin.as_ref();
    let top = help(bin, &[]);
    let mut out = format!("## `{name}`\n\n```text\n{top}```\n");
    for sub in subcommands(&top) {
        let text = help(bin, &[&sub]);
        out.push_str(&format!("\n### `{name} {sub}`\n\n```text\n{text}```\n"));
    }
    out
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- BEGIN GENERATED: {name} --help -->\n"),
        format!("<!-- END GENERATED: {name} --help -->\n"),
    )
}

/// Compares `name`'s region of docs/cli.md with `rendered`, or rewrites it
/// when `FERRY_UPDATE_REFERENCE=1`. `regenerate` is the command to tell the
/// reader when they differ.
pub fn check_region(doc: &Path, name: &str, rendered: &str, regenerate: &str) {
    let text = std::fs::read_to_string(doc).unwrap_or_else(|e| panic!("cannot read {}: {e}", doc.display()));
    let (begin, end) = markers(name);
    let start = text
        .find(&begin)
        .unwrap_or_else(|| panic!("{} has no `{}` marker", doc.display(), begin.trim_end()))
        + begin.len();
    let stop = start
        + text[start..]
            .find(&end)
            .unwrap_or_else(|| panic!("{} has no `{}` marker", doc.display(), end.trim_end()));
    let current = &text[start..stop];
    if current == rendered {
        return;
    }
    if std::env::var(UPDATE_ENV).as_deref() == Ok("1") {
        let updated = format!("{}{}{}", &text[..start], rendered, &text[stop..]);
        std::fs::write(doc, updated).expect("rewrite the CLI reference");
        return;
    }
    let first_difference = current
        .lines()
        .zip(rendered.lines())
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("documented: {a}\n  actual:     {b}"))
        .unwrap_or_else(|| "one is a prefix of the other".into());
    panic!(
        "{} does not match `{name} --help` (first difference:\n  {first_difference})\n\
         Regenerate it with:\n  {regenerate}",
        doc.display()
    );
}
