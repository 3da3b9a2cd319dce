//! The engine's files import top-down and never in a loop: a file never imports from a file
//! that imports it (directly or through others), and the layers read
//! server → cluster → shard → resume → {proto, io, tls} → shared leaf files (config, stats, …).
//! Reads `engine/src`, resolves every `crate::`, `super::`, `self::` and child-module path to
//! the file that defines it, and checks the graph. See engine/ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files below every layer: plain types the layers share.
const LEAVES: &[&str] = &[
    "config.rs",
    "counters.rs",
    "history.rs",
    "id.rs",
    "origin.rs",
    "pubsub.rs",
    "response.rs",
    "send_queue.rs",
    "stats.rs",
    "upgrade.rs",
];

/// The layer of a file (relative to `src`): a file may import only from its own layer or a
/// lower one, and proto, io and tls (all layer 1) not from each other.
fn layer(file: &str) -> (u8, &'static str) {
    match file {
        f if LEAVES.contains(&f) => (0, "leaf"),
        f if f.starts_with("proto/") => (1, "proto"),
        f if f.starts_with("io/") => (1, "io"),
        f if f.starts_with("tls/") => (1, "tls"),
        f if f.starts_with("resume/") => (2, "resume"),
        f if f.starts_with("shard/") => (3, "shard"),
        f if f.starts_with("cluster/") => (4, "cluster"),
        "server.rs" | "client.rs" | "reconnect.rs" => (5, "server"),
        f if f.starts_with("server/") => (5, "server"),
        "lib.rs" => (6, "lib"),
        other => panic!("{other}: new file: give it a layer in source_layers.rs"),
    }
}

struct Tree {
    src: PathBuf,
    /// Module path (`["proto", "connection"]`) -> file (relative to src).
    modules: BTreeMap<Vec<String>, String>,
}

impl Tree {
    fn load(src: &Path) -> Self {
        let mut modules = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let rel = p.strip_prefix(src).unwrap().to_string_lossy().into_owned();
                let mut segs: Vec<String> = rel
                    .trim_end_matches(".rs")
                    .split('/')
                    .map(str::to_owned)
                    .collect();
                if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
                    segs.pop();
                }
                modules.insert(segs, rel);
            }
        }
        Self {
            src: src.to_path_buf(),
            modules,
        }
    }

    /// The file defining the longest module prefix of `path` (absolute module segments).
    fn resolve(&self, path: &[String]) -> Option<&String> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.modules.get(&path[..n]))
    }
}

/// `use a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.replace(char::is_whitespace, "");
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let (prefix, rest) = tree.split_at(open);
    let inner = &rest[1..rest.rfind('}').unwrap_or(rest.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// Paths a file refers to: `use` trees and inline `crate::`/`super::` paths, comments and
/// inline test modules left out.
fn paths(text: &str) -> Vec<String> {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|l| l.trim_end().ends_with('{'))
        {
            break; // an inline test module: everything after it is test code
        }
        let line = line.split("//").next().unwrap_or("");
        code.push_str(line);
        code.push('\n');
    }
    let mut out = Vec::new();
    // `use` statements, possibly over several lines.
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let tail = &rest[i + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        if before.is_none_or(|c| c.is_whitespace() || c == ')') {
            out.extend(expand(&tail[..end]));
        }
        rest = &tail[end..];
    }
    // Inline paths.
    for start in ["crate::", "super::"] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(start) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            out.push(tail[..end].trim_end_matches(':').to_owned());
            rest = &tail[end..];
        }
    }
    out
}

/// The module path of `file` (its own module).
fn module_of(file: &str) -> Vec<String> {
    let mut segs: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    segs
}

/// Absolute module segments of `path` used in `file`, or `None` for another crate.
fn absolute(tree: &Tree, file: &str, path: &str) -> Option<Vec<String>> {
    let here = module_of(file);
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first().copied()? {
        "crate" => {
            segs.remove(0);
            Vec::new()
        }
        "self" => {
            segs.remove(0);
            here.clone()
        }
        "super" => {
            let mut b = here.clone();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        first => {
            // A child module of this one, else another crate (std, io_uring, …).
            let mut child = here.clone();
            child.push(first.to_owned());
            if !tree.modules.contains_key(&child) {
                return None;
            }
            here.clone()
        }
    };
    base.extend(segs.iter().map(|s| (*s).to_owned()));
    Some(base)
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::load(&src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in tree.modules.values() {
        let text = std::fs::read_to_string(tree.src.join(file)).unwrap();
        let to = edges.entry(file.clone()).or_default();
        for p in paths(&text) {
            if let Some(abs) = absolute(&tree, file, &p) {
                if let Some(target) = tree.resolve(&abs) {
                    if target != file {
                        to.insert(target.clone());
                    }
                }
            }
        }
    }
    edges
}

/// Test-only files (harnesses, test modules in files of their own) may reach anywhere.
fn is_test_file(f: &str) -> bool {
    f.ends_with("tests.rs") || f.ends_with("harness.rs")
}

#[test]
fn no_file_imports_from_a_file_that_imports_it() {
    let g = graph();
    // Each file's reach; a loop is a file that reaches itself.
    let mut loops = Vec::new();
    for start in g.keys().filter(|f| !is_test_file(f)) {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = g[start].iter().collect();
        let mut back = BTreeMap::new();
        while let Some(f) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            for next in g.get(f).into_iter().flatten() {
                back.entry(next.clone()).or_insert_with(|| f.clone());
                todo.push(next);
            }
        }
        if seen.contains(start) {
            loops.push(format!(
                "{start} (via {})",
                back.get(start).map_or("?", String::as_str)
            ));
        }
    }
    assert!(loops.is_empty(), "import loops through: {loops:#?}");
}

#[test]
fn layers_import_only_downwards() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        if is_test_file(from) {
            continue;
        }
        let (lf, nf) = layer(from);
        for to in tos {
            let (lt, nt) = layer(to);
            let sideways = lt == lf && nt != nf;
            if lt > lf || sideways {
                wrong.push(format!("{from} ({nf}) -> {to} ({nt})"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

#[test]
fn the_checker_sees_imports() {
    // Guard against a parser that finds nothing (and so passes everything).
    let g = graph();
    let conn = &g["proto/connection.rs"];
    assert!(
        conn.contains("proto/codec.rs") && conn.contains("proto/endpoint.rs"),
        "{conn:?}"
    );
    let shard = &g["shard/mod.rs"];
    assert!(
        shard.contains("shard/conn.rs") && shard.contains("io/mod.rs"),
        "{shard:?}"
    );
    assert!(g["io/uring/driver.rs"].contains("io/sys.rs"));
    assert!(
        g["shard/tls.rs"].contains("tls/mod.rs") && g["tls/session.rs"].contains("tls/record.rs")
    );
    assert_eq!(
        expand("crate::io::{sys, Completion, uring::{a, b}}"),
        [
            "crate::io::sys",
            "crate::io::Completion",
            "crate::io::uring::a",
            "crate::io::uring::b"
        ]
    );
}

/// Every non-test file under 800 lines (a file that grows past it has two jobs).
#[test]
fn source_files_stay_under_800_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::load(&src);
    let long: Vec<String> = tree
        .modules
        .values()
        .filter(|f| !is_test_file(f))
        .filter_map(|f| {
            let n = std::fs::read_to_string(src.join(f))
                .unwrap()
                .lines()
                .count();
            (n >= 800).then(|| format!("{f}: {n} lines"))
        })
        .collect();
    assert!(long.is_empty(), "{long:#?}");
}
