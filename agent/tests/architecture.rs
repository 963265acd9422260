//! `docs/architecture.md` held to the code. Its layer list ("## Layers of
//! `agent/src`", bottom first) is the input of the layering checks: every
//! `crate::` path in `agent/src` must point to its own layer or one below it,
//! and no file may reach itself through the files it imports (no cycle). Its
//! phase table is rendered from `ferry_agent::state::TRANSITIONS`, the
//! transitions the reconcile asserts.
//!
//! Paths are read as text: each `crate::a::b::…` (in `use` lines and inline,
//! `{…}` groups expanded) names the deepest module file that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";
const SECTION: &str = "## Layers of `agent/src`";

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layers, bottom first: each a list of module paths (`config::value`).
fn layers_from(doc: &str) -> Vec<Vec<String>> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(&SECTION[3..]))
        .unwrap_or_else(|| panic!("{DOC} has no `{SECTION}` section"));
    let layers: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| {
            // "3. `state`, `x`: what it holds" — the module names before the colon.
            let head = l.split_once(": ").map_or(l, |(h, _)| h);
            head.split('`').skip(1).step_by(2).map(str::to_owned).collect()
        })
        .collect();
    assert!(
        layers.len() >= 3 && layers.iter().all(|l| !l.is_empty()),
        "cannot read the layer list of {DOC}: {layers:?}"
    );
    layers
}

/// Every `.rs` file under `dir`, as its module path (`io::git::source`).
fn modules(dir: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "main" => "main".to_owned(),
                    "mod" | "lib" => prefix.join("::"),
                    _ => [prefix, &[name]].concat().join("::"),
                };
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &[], &mut out);
    out
}

/// The `crate::` paths `text` names, groups expanded, comments left out.
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `ferry_signer::…crate::` or `$crate::`
        }
        expand("", rest, &mut out);
    }
    out
}

/// Expands the path at the start of `text` (after `prefix`) into `out`.
fn expand(prefix: &str, text: &str, out: &mut Vec<String>) {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let path = format!("{prefix}{}", &text[..end]);
    if text[end..].starts_with('{') && path.ends_with("::") {
        // A group: split its top level on commas.
        let body = &text[end + 1..];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&path, body[start..i].trim_start(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&path, body[start..i].trim_start(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
    } else {
        out.push(path.trim_end_matches(':').to_owned());
    }
}

/// The module file a path names: its longest prefix that is a module.
fn resolve<'a>(path: &str, modules: &'a BTreeMap<String, PathBuf>) -> Option<&'a str> {
    let segs: Vec<&str> = path.split("::").filter(|s| *s != "self").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find_map(|m| modules.get_key_value(&m).map(|(k, _)| k.as_str()))
}

/// The layer of a module: the one whose entry is its longest prefix.
fn layer_of(module: &str, layers: &[Vec<String>]) -> Option<usize> {
    if module == "main" || module.is_empty() {
        return Some(usize::MAX); // the binary and lib.rs sit above everything
    }
    layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (i, m)))
        .filter(|(_, m)| module == m.as_str() || module.starts_with(&format!("{m}::")))
        .max_by_key(|(_, m)| m.len())
        .map(|(i, _)| i)
}

/// `from → to` imports between module files, self-imports left out.
fn imports(modules: &BTreeMap<String, PathBuf>) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    for (module, file) in modules {
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&text) {
            if let Some(to) = resolve(&path, modules) {
                // A module's parent (`mod.rs`) declaring it is not an import.
                if to != module && !to.is_empty() {
                    edges.insert((module.clone(), to.to_owned()));
                }
            }
        }
    }
    edges
}

/// Imports that point to a higher layer.
fn upward(edges: &BTreeSet<(String, String)>, layers: &[Vec<String>]) -> Vec<String> {
    edges
        .iter()
        .filter_map(|(from, to)| {
            let (lf, lt) = (layer_of(from, layers)?, layer_of(to, layers)?);
            (lt > lf && lf != usize::MAX).then(|| format!("{from} → {to}"))
        })
        .collect()
}

/// Every cycle's files (strongly connected components of two or more).
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach = |start: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.clone()];
        while let Some(n) = todo.pop() {
            for (a, b) in edges {
                if *a == n && seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for n in &nodes {
        let scc: BTreeSet<String> = nodes
            .iter()
            .filter(|m| reachable[*n].contains(**m) && reachable[**m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        if scc.len() > 1 && !out.contains(&scc) {
            out.push(scc);
        }
    }
    out
}

#[test]
fn every_module_sits_in_a_layer_of_the_map() {
    let layers = layers_from(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DOC)).unwrap(),
    );
    let modules = modules(&src_dir());
    let lost: Vec<&String> = modules
        .keys()
        .filter(|m| layer_of(m, &layers).is_none())
        .collect();
    assert!(lost.is_empty(), "modules in no layer of {DOC}: {lost:?}");
}

#[test]
fn imports_point_only_down_the_layers() {
    let layers = layers_from(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DOC)).unwrap(),
    );
    let up = upward(&imports(&modules(&src_dir())), &layers);
    assert!(
        up.is_empty(),
        "imports that point up the layers of {DOC} (move the shared part down, or pass it in):\n{}",
        up.join("\n")
    );
}

#[test]
fn no_file_imports_itself_through_others() {
    let found = cycles(&imports(&modules(&src_dir())));
    assert!(found.is_empty(), "import cycles in agent/src: {found:?}");
}

/// The checks themselves catch what they are for, on a made-up tree.
#[test]
fn the_checks_see_an_upward_import_and_a_cycle() {
    let layers = layers_from(
        "# x\n\n## Layers of `agent/src`\n\n1. `config::value`: leaf\n2. `io`: adapters\n3. `policy`: rules\n",
    );
    assert_eq!(layer_of("config::value", &layers), Some(0));
    assert_eq!(layer_of("io::git::source", &layers), Some(1));
    assert_eq!(layer_of("config", &layers), None, "only config::value is listed");
    let paths = crate_paths(
        "use crate::io::{git::{source::{self, Source}, limits}, nix};\n// crate::policy::x\nlet x = crate::policy::judge::judge();",
    );
    assert_eq!(
        paths,
        [
            "io::git::source::self",
            "io::git::source::Source",
            "io::git::limits",
            "io::nix",
            "policy::judge::judge"
        ]
    );
    let edge = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let edges: BTreeSet<_> = [edge("io::nix", "policy::judge"), edge("policy::judge", "io::nix")].into();
    assert_eq!(upward(&edges, &layers), ["io::nix → policy::judge"]);
    assert_eq!(cycles(&edges).len(), 1);
    let down: BTreeSet<_> = [edge("policy::judge", "io::nix")].into();
    assert!(upward(&down, &layers).is_empty() && cycles(&down).is_empty());
}

/// The phase table, as rendered from the code.
fn phase_table() -> Vec<String> {
    use ferry_agent::state::{END, TRANSITIONS};
    let mut rows = vec![
        "| phase (`Phase::name`) | carries | may be followed by |".to_owned(),
        "|---|---|---|".to_owned(),
    ];
    for (name, carries, next) in TRANSITIONS {
        let next: Vec<String> = next
            .iter()
            .map(|n| {
                if *n == END {
                    (*n).to_owned()
                } else {
                    format!("`{n}`")
                }
            })
            .collect();
        rows.push(format!("| `{name}` | {carries} | {} |", next.join(", ")));
    }
    rows
}

#[test]
fn the_phase_table_is_the_codes() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DOC)).unwrap();
    let documented: Vec<String> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| phase (`Phase::name`)"))
        .take_while(|l| l.starts_with('|'))
        .map(str::to_owned)
        .collect();
    let rendered = phase_table();
    assert_eq!(
        documented,
        rendered,
        "{DOC}'s phase table differs from state::TRANSITIONS; the table from the code:\n{}",
        rendered.join("\n")
    );
}
