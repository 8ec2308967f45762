//! What every interpreter of the pool runs: its set-up (the exit guard, `prelude.py`,
//! the user's `--init` codes, `record.py`) and, per record, `_subinterp_map_record`,
//! which parses the line, calls the function and encodes its result.

use subinterp::guards::{exit_guard, ExitGuard};
use subinterp::PoolConfig;

/// Runs first in every worker, before the user's `--init`: the markers below and
/// private references to `json` from the standard library.
const PRELUDE: &str = include_str!("prelude.py");

/// Imports the target and defines the per-record entry point in every worker, after the
/// user's `--init`.
const RECORD: &str = include_str!("record.py");

/// The per-record entry point `record.py` defines, as the pool's target.
pub(super) const ENTRY: &str = "__main__:_subinterp_map_record";

/// The name of the entry point's function, as tracebacks show it.
pub(super) const ENTRY_FUNCTION: &str = "_subinterp_map_record";

/// Marks, in the name of an exception the tool's own set-up code raises, a target that
/// does not exist or cannot be called.
pub(super) const BAD_TARGET: &str = "_SubinterpBadTarget";
/// Marks a target module whose own import raised (the cause is the module's error).
pub(super) const IMPORT_FAILED: &str = "_SubinterpImportFailed";
/// Marks a record the tool's wrapper found to be a bad input.
pub(super) const BAD_INPUT: &str = "_SubinterpBadInput";

/// Sets up every worker of `config` to call `module:path` on records: first the exit
/// guard (`os._exit` raises, so that no Python code can end the whole process as if the
/// run succeeded), then the prelude, the user's `init` codes, and the record wrapper.
pub(super) fn configure(config: &mut PoolConfig, init: &[String], module: &str, path: &str) {
    config.init(exit_guard(ExitGuard::Refuse("a map function or --init")));
    config.init(PRELUDE);
    for code in init {
        config.init(code.clone());
    }
    config.init(record_wrapper(module, path));
}

/// `record.py` for the target `module:path`, both dotted Python identifiers (checked by
/// `subinterp::parse_target`), which a string literal holds as they are.
fn record_wrapper(module: &str, path: &str) -> String {
    let target = format!("{module}:{path}");
    format!("_si_module, _si_path, _si_target = {module:?}, {path:?}, {target:?}\n{RECORD}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markers_and_the_entry_point_are_the_names_the_python_code_uses() {
        for marker in [BAD_TARGET, IMPORT_FAILED, BAD_INPUT] {
            assert!(PRELUDE.contains(&format!("\nclass {marker}(")), "{marker}");
        }
        assert!(RECORD.contains(&format!("\ndef {ENTRY_FUNCTION}(")));
        assert_eq!(ENTRY, format!("__main__:{ENTRY_FUNCTION}"));
    }

    #[test]
    fn the_wrapper_names_its_target_first() {
        let code = record_wrapper("pkg.mod", "Class.method");
        assert!(code.starts_with(
            "_si_module, _si_path, _si_target = \"pkg.mod\", \"Class.method\", \
             \"pkg.mod:Class.method\"\n"
        ));
    }
}
