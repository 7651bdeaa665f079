//! `cargo xtask cycles`: finds module-level import cycles in every crate.
//!
//! Each `.rs` file under a crate's `src/` is a node. An edge `a -> b` is a
//! path in `a` that names an item through `crate::…` or `super::…` and
//! resolves to the file `b` (the longest module path that exists as
//! `x.rs` or `x/mod.rs`). Declaring a child module (`mod x;`) is not an
//! edge; `#[cfg(test)]` modules in their own files (`tests.rs`,
//! `*_tests.rs`) are left out, since test code may reach anywhere. Then, per folder, the graph is
//! collapsed to the folder's child modules (a sub-folder counts as one), and
//! a strongly connected component of more than one child is a cycle. A
//! folder's `mod.rs` is the folder itself, so `mod.rs` re-exporting a child
//! that uses `super::Error` is not reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["log", "segment"]`) of a file relative to `src/`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The paths a line names: every `crate::a::b` / `super::a` run, with
/// `use` groups (`crate::a::{b, c::d}`) expanded one level.
fn named_paths(text: &str) -> Vec<(bool, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    for (prefix, is_crate) in [("crate::", true), ("super::", false)] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let at = from + i;
            from = at + prefix.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            // `super::super::x`: count the hops.
            let mut hops = 1;
            let mut rest = &text[from..];
            while !is_crate && rest.starts_with("super::") {
                hops += 1;
                rest = &rest["super::".len()..];
            }
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            let path: Vec<String> = rest[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            let mut lead = Vec::new();
            if !is_crate {
                lead.push(format!("super{hops}"));
            }
            if rest[end..].starts_with('{') {
                let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
                for item in rest[end + 1..close].split(',') {
                    let item: Vec<String> =
                        item.trim().split("::").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
                    let mut p = lead.clone();
                    p.extend(path.iter().cloned());
                    p.extend(item);
                    found.push((is_crate, p));
                }
            } else {
                let mut p = lead;
                p.extend(path);
                found.push((is_crate, p));
            }
        }
    }
    found
}

/// Tarjan's strongly connected components.
fn components(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let l = self.low[w.as_str()].min(self.low[v]);
                    self.low.insert(v, l);
                } else if self.on.contains(w.as_str()) {
                    let l = self.index[w.as_str()].min(self.low[v]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut c = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    c.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if c.len() > 1 {
                    c.sort();
                    self.out.push(c);
                }
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

/// The import graph of one crate's `src/`, keyed by file path relative to `root`.
fn graph_of(root: &Path, src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(src).unwrap_or(f);
            (module_of(rel), f.strip_prefix(root).unwrap_or(f).display().to_string())
        })
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap_or(f);
        if rel.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "tests.rs" || n.ends_with("_tests.rs")) {
            continue;
        }
        let me = f.strip_prefix(root).unwrap_or(f).display().to_string();
        let here = module_of(rel);
        let text = std::fs::read_to_string(f).unwrap_or_default();
        // Test code inside the file may reach anywhere: stop at `mod tests {`.
        let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or_default();
        let text = text.split("#[cfg(test)]\npub(crate) mod tests {").next().unwrap_or_default();
        let code: String = text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join(" ");
        let mut named = named_paths(&code);
        // `use child::Item;` and `use self::child::Item;` name a child module.
        for stmt in code.split(';') {
            let stmt = stmt.trim();
            let Some(i) = stmt.find("use ") else { continue };
            if i > 0 && !stmt[..i].trim_end().ends_with("pub") && !stmt[..i].trim_end().ends_with(')') {
                continue;
            }
            let path = stmt[i + 4..].trim().trim_start_matches("self::");
            let first: String = path.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let mut child = here.clone();
            child.push(first.clone());
            if !first.is_empty() && modules.contains_key(&child) {
                named.push((true, child));
            }
        }
        let edges = graph.entry(me.clone()).or_default();
        for (is_crate, path) in named {
            let absolute: Vec<String> = if is_crate {
                path
            } else {
                let hops: usize = path[0].trim_start_matches("super").parse().unwrap_or(1);
                let mut base = here.clone();
                for _ in 0..hops {
                    base.pop();
                }
                base.extend(path[1..].iter().cloned());
                base
            };
            // The longest prefix that is a module file.
            let target = (0..=absolute.len()).rev().find_map(|n| modules.get(&absolute[..n]));
            if let Some(t) = target
                && *t != me
            {
                edges.insert(t.clone());
            }
        }
    }
    graph
}

/// Collapses a file-level graph to the children of one folder: a node is a
/// direct child module of `folder` (a file or a sub-folder with all it
/// holds); the folder's own `mod.rs`/`lib.rs`/`main.rs` is the folder itself,
/// not a sibling, so a parent that re-exports its children is no cycle.
fn folder_graph(files: &BTreeMap<String, BTreeSet<String>>, folder: &str) -> BTreeMap<String, BTreeSet<String>> {
    let child = |file: &str| -> Option<String> {
        let rest = file.strip_prefix(folder)?.strip_prefix('/')?;
        let first = rest.split('/').next()?;
        if !rest.contains('/') && matches!(first, "mod.rs" | "lib.rs" | "main.rs") {
            return None;
        }
        Some(first.trim_end_matches(".rs").to_owned())
    };
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in files {
        let Some(a) = child(from) else { continue };
        let entry = g.entry(a.clone()).or_default();
        for to in tos {
            if let Some(b) = child(to)
                && b != a
            {
                entry.insert(b);
            }
        }
    }
    g
}

/// Prints every cycle; an error when there is one.
pub fn check(root: &Path) -> Result<(), String> {
    let mut cycles = 0;
    for krate in ["proto", "telemetry", "broker", "client", "operator", "e2e", "xtask"] {
        let src = root.join(krate).join("src");
        if !src.is_dir() {
            continue;
        }
        let files = graph_of(root, &src);
        let folders: BTreeSet<String> =
            files.keys().filter_map(|f| Path::new(f).parent().map(|p| p.display().to_string())).collect();
        for folder in folders {
            for c in components(&folder_graph(&files, &folder)) {
                cycles += 1;
                println!("import cycle in {folder}: {}", c.join(" <-> "));
            }
        }
    }
    if cycles == 0 {
        println!("no module-level import cycles");
        Ok(())
    } else {
        Err(format!("{cycles} module-level import cycle(s)"))
    }
}
