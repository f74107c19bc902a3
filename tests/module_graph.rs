//! The proxy's modules depend on each other in one direction (docs/architecture.md):
//! the graph of `crate::…` references between top-level modules has no cycle, and the
//! layers that must not know of each other do not. Read from the sources (test code
//! left out), so that a new arrow fails `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that must not reference the ones listed (a lower layer knowing a higher
/// one, or transport knowing consistency).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "resp",
        &[
            "command", "config", "engine", "upstream", "session", "context", "metrics",
        ],
    ),
    (
        "command",
        &[
            "config", "engine", "upstream", "session", "context", "metrics",
        ],
    ),
    (
        "config",
        &[
            "engine", "upstream", "session", "context", "tls", "policy", "keyspace",
        ],
    ),
    ("metrics", &["engine", "upstream", "session", "context"]),
    (
        "engine",
        &[
            "upstream", "session", "context", "listener", "startup", "reload", "admin",
        ],
    ),
    (
        "upstream",
        &[
            "engine", "session", "context", "key_lock", "keyspace", "policy", "auth",
        ],
    ),
    ("policy", &["context", "session", "engine", "upstream"]),
    ("auth", &["context", "session", "engine", "upstream"]),
];

/// `module -> modules it references`, for every file under `src/`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_owned();
            if module == "main" || module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let deps = out.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.insert(name);
                }
            }
        }
    }
    out
}

/// The cycles of `g` (its strongly connected components of more than one module).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finishing time, then collect on the reversed graph.
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_owned()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, order);
        }
        order.push(v.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in g.keys() {
        visit(v, g, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in g {
        for w in ws {
            reversed.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        let mut component = Vec::new();
        visit(v, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            out.push(component);
        }
    }
    out
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    assert!(g.len() > 10, "{g:?}");
    let found = cycles(&g);
    assert!(found.is_empty(), "module cycles: {found:?}\n{g:#?}");
}

#[test]
fn layers_do_not_reach_up() {
    let g = graph();
    let mut wrong = Vec::new();
    for (module, forbidden) in FORBIDDEN {
        for dep in g.get(*module).into_iter().flatten() {
            if forbidden.contains(&dep.as_str()) {
                wrong.push(format!("{module} -> {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn the_check_finds_a_cycle() {
    let mut g = BTreeMap::new();
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    g.insert("a".to_owned(), set(&["b"]));
    g.insert("b".to_owned(), set(&["c"]));
    g.insert("c".to_owned(), set(&["a"]));
    g.insert("d".to_owned(), set(&["a"]));
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
}
