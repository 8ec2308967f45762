//! `subinterp check`: which modules can live in isolated interpreters, and why.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Args;
use subinterp::check::{self, CheckError, CheckOptions, ModuleReport, Verdict};

use crate::usage::UsageError;
use crate::{EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_OK};

/// Shown after the options in `subinterp check --help`.
const AFTER_HELP: &str = "\
Verdicts:
  ok           imports in an isolated (own-GIL) interpreter, and again in a second one
  legacy-only  isolated interpreters refuse it (or it fails there); it imports in a
               legacy (shared-GIL) interpreter
  broken       fails even in a legacy interpreter, crashes the process while importing
               it or ending an interpreter that imported it (the signal is named), or
               does not finish within --timeout; a module that does not exist is broken
               with the detail \"No module named '...'\"

Pool: where a subinterp pool (the library's Pool, `subinterp map`, the Python package's
Pool) would run a task of the module:
  interpreter  in an isolated interpreter of the calling process (verdict ok)
  process      in a worker process: isolated interpreters refuse an extension module
               it imports (the culprit), and it imports in a process of its own
  nowhere      it does not import even in a process of its own (or does not exist), or
               it fails or crashes in isolated interpreters for another reason than a
               refusal, which a pool does not move to a process
  -            the check could not tell (timeout)

A package that imports in an isolated interpreter only because it caught the refusal of
one of its compiled modules and fell back is ok, with that module as its culprit.

Facts shown for extension modules: init (single-phase or multi-phase), the declared
Py_mod_multiple_interpreters (not_supported, supported, per_interpreter_gil) and, on
Python 3.13+, Py_mod_gil (used, not_used); shared_state tells whether objects of the
module's dict are the very same objects in two interpreters.

Nothing is imported into this process: every question about a module is asked in a
child process of its own, with the Python subinterp embeds and the sys.path its
interpreters get (--path directories first, then the site-packages of VIRTUAL_ENV).

With --json, one JSON array is printed on stdout, one object per module with the keys
module, verdict, kind (extension, builtin, python), init, multiple_interpreters, gil,
shared_state, culprit, pool (interpreter, process, nowhere), detail (null where not
applicable).

Exit status:
  0    every module is ok
  1    some module is legacy-only or broken, the check could not run, or the output
       could not be written
  2    usage error: no MODULE and no --all, a name that is not a module name, a --path
       that is not a directory, a bad option
  141  the reader of the output went away (broken pipe)";

/// Options of `subinterp check`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct CheckArgs {
    /// Dotted name of a module or package to check (repeatable)
    #[arg(value_name = "MODULE")]
    modules: Vec<String>,

    /// Check every extension module on sys.path: the standard library's lib-dynload and
    /// every site-packages, packages' submodules included
    #[arg(long)]
    all: bool,

    /// Print one JSON array instead of a table
    #[arg(long)]
    json: bool,

    /// Prepend DIR to sys.path (repeatable; the first given ends up first; DIR must exist)
    #[arg(long = "path", value_name = "DIR")]
    paths: Vec<PathBuf>,

    /// Check at most N modules at the same time [default: the number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,

    /// Give up on a module after SECONDS (positive, at most 1e9); it is then broken
    #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = crate::parse_seconds)]
    timeout: Duration,
}

/// Checks what clap cannot check alone: something to check.
pub(crate) fn check_args(args: &CheckArgs) -> Result<(), UsageError> {
    if args.modules.is_empty() && !args.all {
        return Err(UsageError::new(
            ErrorKind::MissingRequiredArgument,
            "name at least one MODULE, or use --all",
        ));
    }
    Ok(())
}

/// The usage error a refusal of the library's checker is: a name that is not a module
/// name, a `--path` that is not a directory. Other errors are failures of the run.
pub(crate) fn usage_of(err: &CheckError) -> Option<UsageError> {
    match err {
        CheckError::InvalidModuleName(_) | CheckError::NoSuchDirectory(_) => {
            Some(UsageError::new(ErrorKind::ValueValidation, err))
        }
        _ => None,
    }
}

/// Runs `subinterp check`; returns the exit status.
pub fn main(args: CheckArgs) -> u8 {
    if let Err(err) = check_args(&args) {
        return err.report("check");
    }
    let mut options = CheckOptions::new();
    for dir in &args.paths {
        options.add_path(dir);
    }
    if let Some(jobs) = args.jobs {
        options.jobs(usize::from(jobs));
    }
    options.timeout(args.timeout).all_extensions(args.all);
    let run = match check::run(&args.modules, &options) {
        Ok(run) => run,
        Err(err) => {
            if let Some(usage) = usage_of(&err) {
                return usage.report("check");
            }
            eprintln!("error: {err}");
            return EXIT_FAILED;
        }
    };
    // `run.warnings` were logged by the library as they came, and shown on stderr by the
    // command's logging: printing them again would say each twice.
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut stdout, &run.reports)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout))
    } else {
        write_table(&mut stdout, &run.reports).and_then(|()| {
            writeln!(
                stdout,
                "\n{}",
                summary(&run.reports, run.elapsed, &run.python_version)
            )
        })
    };
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => {}
        // The reader went away (`| head`): end quietly, as Unix tools do.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return EXIT_BROKEN_PIPE,
        Err(err) => {
            eprintln!("error: cannot write the output: {err}");
            return EXIT_FAILED;
        }
    }
    if run.reports.iter().all(|r| r.verdict == Verdict::Ok) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// One row per module: name, verdict, where a pool would run it, reason.
fn write_table(out: &mut impl Write, reports: &[ModuleReport]) -> std::io::Result<()> {
    let width = reports
        .iter()
        .map(|r| r.module.chars().count())
        .max()
        .unwrap_or(0)
        .clamp("MODULE".len(), 48);
    writeln!(
        out,
        "{:<width$}  {:<11}  {:<11}  REASON",
        "MODULE", "VERDICT", "POOL"
    )?;
    for report in reports {
        let pool = report
            .pool
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        writeln!(
            out,
            "{:<width$}  {:<11}  {:<11}  {}",
            report.module,
            report.verdict.to_string(),
            pool,
            report.reason()
        )?;
    }
    Ok(())
}

/// "3 modules checked in 1.2 s (Python 3.13.0, 2.5 modules/s): 1 ok, 1 legacy-only, 1 broken"
fn summary(reports: &[ModuleReport], elapsed: Duration, python: &str) -> String {
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        reports.len() as f64 / seconds
    } else {
        0.0
    };
    format!(
        "{} module{} checked in {seconds:.1} s (Python {python}, {rate:.1} modules/s): \
         {} ok, {} legacy-only, {} broken",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        count(Verdict::Ok),
        count(Verdict::LegacyOnly),
        count(Verdict::Broken)
    )
}
