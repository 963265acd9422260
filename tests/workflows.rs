//! The CI workflows the documentation gives teams to copy (every ```yaml
//! block of docs/ci.md and docs/guides/), held to the baseline docs/ci.md
//! states: each parses as YAML, every action is pinned by a full commit,
//! every job names its `permissions`, `ferry-signer` is run as a flake.lock
//! (or a commit) pins it, and every `ferry-signer` (or
//! `ferry-agent`) command line in a `run:` uses real subcommands and flags
//! (docs/cli.md's, which `reference.rs` checks against the binaries).
//!
//! The YAML is read with `yaml-rust2`, a maintained pure-Rust YAML 1.2
//! parser: the check runs inside this test binary, with no interpreter or
//! system package to install.

use yaml_rust2::{Yaml, YamlLoader};

use crate::reference::repo_file;
use crate::snippets::{blocks, command_line_problems, documents};

/// docs/ci.md and the guides: the pages whose workflows are meant to be
/// copied.
fn workflow_documents() -> Vec<String> {
    let docs: Vec<String> = documents()
        .into_iter()
        .filter(|d| d == "docs/ci.md" || d.starts_with("docs/guides/"))
        .collect();
    assert!(docs.contains(&"docs/ci.md".to_owned()), "{docs:?}");
    docs
}

/// Whether `uses` names its action by a full commit: `owner/repo@<40 hex>`
/// (or a URL to one, as Forgejo and Gitea take).
fn pinned(uses: &str) -> bool {
    uses.rsplit_once('@').is_some_and(|(_, rev)| {
        rev.len() == 40
            && rev
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The flake references in `run` that name `ferry-signer` without pinning
/// it: pinned are `ferry#ferry-signer` with `--inputs-from` (the locked
/// input of the flake there) and `github:ferry-deploy/ferry/<commit>#…`.
fn unpinned_signers(run: &str) -> Vec<String> {
    let joined = run.split("\\\n").collect::<Vec<_>>().join(" ");
    let mut found = Vec::new();
    for line in joined.lines() {
        for word in line.split_whitespace() {
            let Some(flake) = word.strip_suffix("#ferry-signer") else {
                continue;
            };
            let locked = flake == "ferry" && line.contains("--inputs-from");
            let by_commit = flake
                .strip_prefix("github:ferry-deploy/ferry/")
                .is_some_and(|rev| pinned(&format!("@{rev}")));
            if !locked && !by_commit {
                found.push(word.to_owned());
            }
        }
    }
    found
}

/// Every `uses:` and `run:` value anywhere under `node`.
fn walk<'y>(node: &'y Yaml, uses: &mut Vec<&'y str>, runs: &mut Vec<&'y str>) {
    match node {
        Yaml::Hash(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    (Some("uses"), Some(v)) => uses.push(v),
                    (Some("run"), Some(v)) => runs.push(v),
                    _ => walk(value, uses, runs),
                }
            }
        }
        Yaml::Array(items) => items.iter().for_each(|i| walk(i, uses, runs)),
        _ => {}
    }
}

/// What is wrong with one ```yaml block: a whole workflow (with `jobs:`) or a
/// fragment of one (steps).
fn workflow_problems(text: &str, cli_md: &str) -> Vec<String> {
    let docs = match YamlLoader::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("does not parse as YAML: {e}")],
    };
    let mut problems = Vec::new();
    for doc in &docs {
        if let Some(jobs) = doc["jobs"].as_hash() {
            for (name, job) in jobs {
                let name = name.as_str().unwrap_or("?");
                if job["permissions"].is_badvalue() {
                    problems.push(format!(
                        "job `{name}` has no `permissions`: name what it needs (e.g. contents: read)"
                    ));
                }
            }
        }
        let (mut uses, mut runs) = (Vec::new(), Vec::new());
        walk(doc, &mut uses, &mut runs);
        for u in uses.into_iter().filter(|u| !pinned(u)) {
            problems.push(format!(
                "`uses: {u}` is not pinned by a full commit: write `…@<40-hex commit> # <tag>`"
            ));
        }
        for run in runs {
            for flake in unpinned_signers(run) {
                problems.push(format!(
                    "`{flake}` runs whatever ferry-signer is current: use `nix run --inputs-from . \
                     ferry#ferry-signer` (your flake.lock's Ferry) or github:ferry-deploy/ferry/<commit>#ferry-signer"
                ));
            }
            problems.extend(command_line_problems(run, cli_md).0);
        }
    }
    problems
}

#[test]
fn the_workflow_check_finds_each_kind_of_problem() {
    let cli_md = repo_file("docs/cli.md");
    let good = r#"
name: release
on: { push: { branches: [main] } }
permissions: {}
jobs:
  release:
    runs-on: ubuntu-latest
    permissions: { contents: write }
    steps:
      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1
      - run: |
          nix run --inputs-from . ferry#ferry-signer -- release --repo . \
            --hosts-file hosts.json --push origin
"#;
    assert_eq!(workflow_problems(good, &cli_md), Vec::<String>::new());
    let bad = r#"
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: https://code.forgejo.org/actions/checkout@11bd719
      - run: nix run --inputs-from . ferry#ferry-signer -- release --repo . --hosts hosts.json
      - run: nix run github:ferry-deploy/ferry#ferry-signer -- mirror --repo . --to site
"#;
    assert_eq!(
        workflow_problems(bad, &cli_md),
        [
            "job `build` has no `permissions`: name what it needs (e.g. contents: read)",
            "`uses: actions/checkout@v4` is not pinned by a full commit: write `…@<40-hex commit> # <tag>`",
            "`uses: https://code.forgejo.org/actions/checkout@11bd719` is not pinned by a full commit: write `…@<40-hex commit> # <tag>`",
            "`ferry-signer release` has no flag --hosts",
            "`github:ferry-deploy/ferry#ferry-signer` runs whatever ferry-signer is current: use `nix run --inputs-from . ferry#ferry-signer` (your flake.lock's Ferry) or github:ferry-deploy/ferry/<commit>#ferry-signer",
        ]
    );
    let steps = "      - uses: actions/deploy-pages@cd2ce8fcbc39b97be8ca5fce6e763baed58fa128 # v5.0.0\n";
    assert_eq!(workflow_problems(steps, &cli_md), Vec::<String>::new());
    let broken = "jobs:\n  a: [\n";
    assert!(workflow_problems(broken, &cli_md)[0].starts_with("does not parse as YAML"));
    // Upper-case hex is not what GitHub prints, nor a short commit.
    assert!(!pinned(
        "actions/checkout@3D3C42E5AAC5BA805825DA76410C181273BA90B1"
    ));
    assert!(pinned(
        "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1"
    ));
    assert_eq!(
        unpinned_signers(
            "nix run github:ferry-deploy/ferry/3d3c42e5aac5ba805825da76410c181273ba90b1#ferry-signer -- show\n\
             nix run --inputs-from . ferry#ferry-signer -- \\\n  show\n\
             nix run ferry#ferry-signer -- show"
        ),
        ["ferry#ferry-signer"]
    );
}

#[test]
fn every_documented_workflow_is_pinned_least_privileged_and_uses_real_flags() {
    let cli_md = repo_file("docs/cli.md");
    let mut problems = Vec::new();
    let (mut checked, mut workflows) = (0, 0);
    for doc in workflow_documents() {
        for (line, block) in blocks(&repo_file(&doc), "yaml") {
            checked += 1;
            workflows += usize::from(block.contains("\njobs:") || block.starts_with("jobs:"));
            for p in workflow_problems(block, &cli_md) {
                problems.push(format!("{doc}:{line}: {p}"));
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} yaml blocks found in docs/ci.md and docs/guides/"
    );
    assert!(workflows >= 6, "only {workflows} whole workflows found");
    assert!(
        problems.is_empty(),
        "CI workflows in the docs below the baseline of docs/ci.md:\n{}",
        problems.join("\n")
    );
}
