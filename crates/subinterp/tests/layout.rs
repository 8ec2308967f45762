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
    // panic guard), and calls only `write` and `_exit`.
    let found = offenders(concat!("extern ", "\"C\""), |path| {
        path == Path::new("raw/callback.rs") || path == Path::new("raw/fatal.rs")
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
