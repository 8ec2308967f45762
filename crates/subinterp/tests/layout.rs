//! The crate's layout rules, checked on its sources: C entry points are made only by the
//! generic trampolines of the audited core, and `unsafe` code stays in that core.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of code (comments and string contents aside is not needed: the patterns below
/// never appear in prose of this crate) containing `pattern`, outside the allowed files.
fn offenders(pattern: &str, allowed: impl Fn(&Path) -> bool) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 10, "found the crate's sources under {src:?}");
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src").to_owned();
        if allowed(&relative) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(pattern) {
                found.push(format!(
                    "{}:{}: {}",
                    relative.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

#[test]
fn extern_c_functions_are_made_only_by_the_trampolines() {
    // Every function CPython calls is a trampoline of raw/callback.rs. The one other C
    // entry point is the fatal-signal handler of raw/fatal.rs, which CPython never calls:
    // it runs in a signal context where only async-signal-safe calls are allowed (so no
    // panic guard), and calls only `write` and `_exit`. The allocator hooks of
    // raw/alloc.rs are the other: called inside CPython's allocator, they do arithmetic
    // and atomics only, nothing that can panic, and call the wrapped allocator.
    let found = offenders(concat!("extern ", "\"C\""), |path| {
        path == Path::new("raw/callback.rs")
            || path == Path::new("raw/fatal.rs")
            || path == Path::new("raw/alloc.rs")
    });
    assert!(
        found.is_empty(),
        "extern \"C\" functions outside raw/callback.rs (make them with its trampolines):\n{}",
        found.join("\n")
    );
}

#[test]
fn unsafe_code_is_only_in_the_core() {
    let found: Vec<String> = [
        "unsafe {",
        "unsafe fn",
        "unsafe impl",
        "unsafe extern",
        "unsafe trait",
    ]
    .iter()
    .flat_map(|pattern| offenders(pattern, |path| path.starts_with("raw")))
    .collect();
    assert!(
        found.is_empty(),
        "unsafe outside raw/ (add a safe mechanism to the core instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_core_imports_no_feature_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raw");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed = ["crate::raw", "crate::error", "crate::value"];
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let path = &code[at..];
                let before = &code[..at];
                // `super::` and `crate::raw` paths stay inside the core.
                if before.ends_with("pub(") || before.ends_with("in ") {
                    continue;
                }
                if !allowed.iter().any(|a| path.starts_with(a)) {
                    found.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "raw/ may import only error and value:\n{}",
        found.join("\n")
    );
}

/// The crate's top-level modules, as `lib.rs` declares them.
fn top_level_modules() -> Vec<String> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let text = std::fs::read_to_string(lib).expect("read lib.rs");
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_owned())
        })
        .collect()
}

/// Every `crate::name` path in the crate's code (comments aside), with the top-level
/// module of the file it is in: `(from, name, where)`. A path inside `pub(in crate::…)`
/// and a macro call (`crate::name!`) are not imports and are left out.
fn crate_paths() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src").to_owned();
        let from = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a file name")
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                if code[..at].ends_with("in ") {
                    continue;
                }
                let rest = &code[at + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if rest[end..].starts_with('!') {
                    continue;
                }
                let place = format!("{}:{}: {}", relative.display(), number + 1, line.trim());
                found.push((from.clone(), rest[..end].to_owned(), place));
            }
        }
    }
    found
}

#[test]
fn code_imports_from_the_defining_module_not_through_the_crate_root() {
    let modules = top_level_modules();
    assert!(
        modules.len() > 10,
        "read the modules of lib.rs: {modules:?}"
    );
    let found: Vec<String> = crate_paths()
        .into_iter()
        .filter(|(from, name, _)| from != "lib" && !modules.contains(name))
        .map(|(_, _, place)| place)
        .collect();
    assert!(
        found.is_empty(),
        "paths through the crate root's re-exports (name the defining module):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let modules = top_level_modules();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut places: BTreeMap<(String, String), String> = BTreeMap::new();
    for (from, to, place) in crate_paths() {
        if from == "lib" || from == to || !modules.contains(&to) {
            continue;
        }
        places.entry((from.clone(), to.clone())).or_insert(place);
        edges.entry(from).or_default().insert(to);
    }
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(
        module: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in edges.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(cycle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            let evidence: Vec<String> = cycle
                .windows(2)
                .map(|pair| places[&(pair[0].clone(), pair[1].clone())].clone())
                .collect();
            panic!(
                "the modules {} import each other in a circle:\n{}",
                cycle.join(" -> "),
                evidence.join("\n")
            );
        }
    }
}

/// The layers of ARCHITECTURE.md, bottom up. A module imports only from its own layer
/// (without a cycle, checked above) or the layers below.
const LAYERS: &[&[&str]] = &[
    &["error", "value", "names", "seconds"],
    &["raw"],
    &["wait", "call", "hazards", "guards", "audit", "stats"],
    &["channel", "host", "builtin_module"],
    &["runtime"],
    &["interpreter"],
    &["pool"],
    &["check", "package"],
];

#[test]
fn modules_import_only_from_their_layer_or_below() {
    let layer_of = |module: &str| LAYERS.iter().position(|layer| layer.contains(&module));
    let modules = top_level_modules();
    let unplaced: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS and ARCHITECTURE.md): {unplaced:?}"
    );
    let upward: Vec<String> = crate_paths()
        .into_iter()
        .filter(|(from, to, _)| {
            from != "lib" && modules.contains(to) && layer_of(to) > layer_of(from)
        })
        .map(|(from, to, place)| format!("{from} -> {to}: {place}"))
        .collect();
    assert!(
        upward.is_empty(),
        "imports that run back up the layers:\n{}",
        upward.join("\n")
    );
}
