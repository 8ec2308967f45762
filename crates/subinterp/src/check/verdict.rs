//! From what the probe observed to a [`ModuleReport`]: the rules of the verdicts, and
//! the plain-words reasons.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{GilUse, InitKind, ModuleKind, ModuleReport, MultipleInterpreters, Placement, Verdict};
use crate::hazards::{self, Hazard, Workaround};
use crate::pool::process::is_refusal;

/// CPython's message when an interpreter refuses an extension module.
const REFUSAL: &str = "does not support loading in subinterpreters";

/// At most this many shared attribute names are listed in a detail.
const SHARED_NAMES_SHOWN: usize = 5;

/// One line of the probe's output.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Line {
    Observation(Box<Observation>),
    Warning {
        message: String,
    },
    Fatal {
        message: String,
    },
    Done {
        python: String,
        /// Whether the probe imported modules in the main interpreter first, as the
        /// runtime does on this Python.
        #[serde(default)]
        prepared: bool,
    },
}

/// Everything the probe saw about one module.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Observation {
    pub(super) module: String,
    #[serde(default)]
    static_kind: Option<String>,
    #[serde(default)]
    phases: Vec<Phase>,
    /// The checking process itself failed for this module.
    #[serde(default)]
    probe_error: Option<String>,
    /// Set when the module did not finish within this many seconds.
    #[serde(default)]
    timeout: Option<f64>,
    /// What was going on when the timeout struck.
    #[serde(default)]
    stage: Option<String>,
}

/// One forked process asking one question.
#[derive(Debug, Default, Deserialize)]
struct Phase {
    phase: String,
    #[serde(default)]
    attempts: Vec<Attempt>,
    #[serde(default)]
    facts: Option<Facts>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    probe_error: Option<String>,
    #[serde(default)]
    crash: Option<Crash>,
    #[serde(default)]
    exit_status: Option<i32>,
    /// The main interpreter imported the module first (`pool-prepared`, `mixed`).
    #[serde(default)]
    prepared: bool,
    /// How that import failed, if it did.
    #[serde(default)]
    prepare_error: Option<String>,
}

/// One import in one interpreter.
#[derive(Debug, Default, Deserialize)]
struct Attempt {
    ok: bool,
    #[serde(default)]
    error: Option<PyError>,
    /// Extension modules whose creation raised ImportError: (name, message).
    #[serde(default)]
    failed_extensions: Vec<(String, String)>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    ids: Option<BTreeMap<String, u64>>,
    /// The names in the interpreter's `sys.modules` after the import.
    #[serde(default)]
    loaded: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct PyError {
    #[serde(rename = "type")]
    type_name: String,
    message: String,
}

/// What `PyInit_<name>` revealed.
#[derive(Debug, Default, Deserialize)]
struct Facts {
    init: Option<String>,
    multiple_interpreters: Option<u64>,
    gil: Option<u64>,
    #[serde(default)]
    gil_slot_exists: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Crash {
    name: Option<String>,
    #[serde(default)]
    output: String,
}

/// How the imports of one phase went.
enum Outcome<'a> {
    /// Both imports worked and the interpreters ended cleanly.
    Imported,
    /// The `n`th import (0-based) raised.
    Failed(usize, &'a PyError),
    /// The process died (signal or exit) while at `stage`.
    Crashed(&'a Phase),
    /// Not asked.
    NotRun,
}

impl Phase {
    fn outcome(&self) -> Outcome<'_> {
        // A crash anywhere in the phase (an import, a later import, ending the
        // interpreters) outweighs any exception: the host process would be gone.
        if self.crash.is_some() || self.probe_error.is_some() {
            return Outcome::Crashed(self);
        }
        if let Some((n, error)) = self
            .attempts
            .iter()
            .enumerate()
            .find_map(|(n, a)| a.error.as_ref().filter(|_| !a.ok).map(|e| (n, e)))
        {
            return Outcome::Failed(n, error);
        }
        if self.attempts.len() >= 2 && self.attempts.iter().all(|a| a.ok) {
            Outcome::Imported
        } else {
            Outcome::Crashed(self)
        }
    }

    /// How the process ended, in words: "crashed with SIGSEGV while importing it ...".
    fn crash_words(&self) -> String {
        let stage = self
            .stage
            .as_deref()
            .map(|s| format!(" while {s}"))
            .unwrap_or_default();
        if let Some(err) = &self.probe_error {
            return format!("the check itself failed{stage}: {}", last_line(err));
        }
        let crash = self.crash.as_ref();
        let how = match (crash.and_then(|c| c.name.as_deref()), self.exit_status) {
            (Some(signal), _) => format!("the process crashed with {signal}"),
            (None, Some(status)) => format!("the process exited with status {status}"),
            (None, None) => "the process ended".to_owned(),
        };
        let said = crash
            .map(|c| last_output(&c.output))
            .filter(|s| !s.is_empty())
            .map(|s| format!(" (its last output: {s})"))
            .unwrap_or_default();
        format!("{how}{stage}{said}")
    }
}

/// Turns an observation into a report, for CPython `version`, on which the probe did
/// (`prepared`) or did not import modules in the main interpreter first.
pub(super) fn derive(obs: &Observation, version: &str, prepared: bool) -> ModuleReport {
    let mut report = ModuleReport {
        module: obs.module.clone(),
        verdict: Verdict::Broken,
        kind: None,
        init: None,
        multiple_interpreters: None,
        gil: None,
        shared_state: None,
        culprit: None,
        pool: None,
        detail: None,
    };
    if let Some(seconds) = obs.timeout {
        report.kind = parse_kind(obs.static_kind.as_deref());
        let stage = obs
            .stage
            .as_deref()
            .map(|s| format!(" while {s}"))
            .unwrap_or_default();
        report.detail = Some(format!(
            "did not finish within {} s{stage}",
            trim_float(seconds)
        ));
        return report;
    }
    if let Some(err) = &obs.probe_error {
        report.kind = parse_kind(obs.static_kind.as_deref());
        report.detail = Some(format!("could not be checked: {}", last_line(err)));
        return report;
    }
    let phase = |name: &str| obs.phases.iter().find(|p| p.phase == name);
    let crashed = |p: &&Phase| matches!(p.outcome(), Outcome::Crashed(_));
    // What the host's isolated interpreters would see: the pool of interpreters prepared
    // in the main one when the runtime prepares them and that helped, else the first
    // phase that crashed (importing in two interpreters one after the other, or in a
    // pool), else the plain isolated imports.
    let bare_crash = phase("isolated")
        .filter(crashed)
        .or(phase("pool").filter(crashed));
    let prepared_phase = phase("pool-prepared");
    let isolated = prepared_phase
        .filter(|p| !crashed(p))
        .or(bare_crash)
        .or(phase("isolated"));
    let legacy = phase("legacy");
    let mixed = phase("mixed");

    // Kind: what the import system actually used, else what lookup found.
    let imported_kind = obs
        .phases
        .iter()
        .flat_map(|p| &p.attempts)
        .find_map(|a| a.kind.as_deref());
    report.kind = parse_kind(imported_kind.or(obs.static_kind.as_deref()));

    if let Some(facts) = phase("facts").and_then(|p| p.facts.as_ref()) {
        apply_facts(&mut report, facts);
    }

    // Extension modules whose creation isolated interpreters refused (CPython's message),
    // each once, in the order refused.
    let mut refused: Vec<&(String, String)> = Vec::new();
    for entry in isolated
        .map(|p| p.attempts.as_slice())
        .unwrap_or_default()
        .iter()
        .flat_map(|a| &a.failed_extensions)
        .filter(|(_, message)| message.contains(REFUSAL))
    {
        if !refused.iter().any(|(name, _)| *name == entry.0) {
            refused.push(entry);
        }
    }
    report.culprit = culprit(obs, isolated, &refused).map(|(name, _)| name.clone());
    // A crash that no refusal explains: blame the first module a hazard of this Python
    // names among those the crashed interpreters had loaded (`_datetime` for pytest).
    let hazardous = bare_crash
        .map(|p| hazard_modules(p, version, &obs.module, report.culprit.as_deref()))
        .unwrap_or_default();
    if report.culprit.is_none() {
        report.culprit = hazardous
            .first()
            .and_then(|(_, modules)| modules.first())
            .map(|name| (*name).to_owned());
    }

    let iso = isolated.map_or(Outcome::NotRun, Phase::outcome);
    let leg = legacy.map_or(Outcome::NotRun, Phase::outcome);
    let mut notes: Vec<String> = Vec::new();
    let deciding_prepared = isolated.is_some_and(|p| p.prepared);
    if let Some(error) = isolated.and_then(|p| p.prepare_error.as_deref()) {
        notes.push(format!(
            "the main interpreter could not import it first ({}), as subinterp tries on \
             CPython {version}",
            last_line(error)
        ));
    }
    if let Some(bare) = bare_crash {
        if prepared && deciding_prepared && !matches!(iso, Outcome::Crashed(_)) {
            notes.push(prepared_words(bare, &hazardous, version));
        }
    }
    let unhelped = prepared_phase.filter(crashed).map(|p| {
        format!(
            "importing it in the main interpreter first, as subinterp does on CPython \
             {version}, does not help: {}",
            p.crash_words()
        )
    });

    match iso {
        Outcome::Imported => {
            report.verdict = Verdict::Ok;
            if let Some((name, message)) = culprit(obs, isolated, &refused) {
                let mut note = format!(
                    "imports only because the import caught the refusal of {name} by the \
                     isolated interpreter ({message}) and went on without it, e.g. with a \
                     slower pure-Python fallback"
                );
                let others: Vec<&str> = refused
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| n != name)
                    .collect();
                if !others.is_empty() {
                    note.push_str(&format!("; it also went on without {}", others.join(", ")));
                }
                notes.push(note);
            }
            if let Some(p) = isolated {
                report.shared_state = shared_state(&report, p, "isolated", &mut notes);
            }
        }
        Outcome::Crashed(p) => {
            report.verdict = Verdict::Broken;
            match p.attempts.first() {
                Some(first) if first.ok => {
                    if let Some((name, _)) = culprit(obs, isolated, &refused) {
                        notes.push(format!(
                            "the first isolated interpreter imported it only by going on \
                             without {name}, which it refused"
                        ));
                    }
                }
                Some(first) => {
                    if let Some(error) = &first.error {
                        notes.push(isolated_failure_words(0, error, &report));
                    }
                }
                None => {}
            }
            notes.push(p.crash_words());
            match leg {
                Outcome::Imported => notes.push("imports in legacy interpreters".into()),
                Outcome::Failed(_, e) => {
                    notes.push(format!("fails in a legacy interpreter: {}", error_words(e)))
                }
                Outcome::Crashed(l) => {
                    notes.push(format!("in legacy interpreters, {}", l.crash_words()))
                }
                Outcome::NotRun => {}
            }
        }
        Outcome::Failed(n, iso_error) => {
            let not_found = iso_error.type_name == "ModuleNotFoundError";
            match leg {
                Outcome::Imported | Outcome::Failed(1, _) => {
                    report.verdict = Verdict::LegacyOnly;
                    notes.push(isolated_failure_words(n, iso_error, &report));
                    if let Outcome::Failed(_, e) = leg {
                        notes.push(format!(
                            "only one legacy interpreter per process can import it: a \
                             second one fails with {}",
                            error_words(e)
                        ));
                    } else if let Some(p) = legacy {
                        report.shared_state = shared_state(&report, p, "legacy", &mut notes);
                    }
                    if let Some(m) = mixed {
                        mixed_notes(m, &mut notes);
                    }
                }
                Outcome::Failed(_, leg_error) => {
                    report.verdict = Verdict::Broken;
                    if not_found && leg_error.type_name == "ModuleNotFoundError" {
                        notes.push(leg_error.message.clone());
                        report.kind = report.kind.filter(|_| imported_kind.is_some());
                    } else if leg_error.type_name == iso_error.type_name
                        && leg_error.message == iso_error.message
                    {
                        notes.push(format!(
                            "fails in isolated and legacy interpreters: {}",
                            error_words(leg_error)
                        ));
                    } else {
                        notes.push(isolated_failure_words(n, iso_error, &report));
                        notes.push(format!(
                            "fails in a legacy interpreter too: {}",
                            error_words(leg_error)
                        ));
                    }
                }
                Outcome::Crashed(l) => {
                    report.verdict = Verdict::Broken;
                    notes.push(isolated_failure_words(n, iso_error, &report));
                    notes.push(format!("in legacy interpreters, {}", l.crash_words()));
                }
                Outcome::NotRun => {
                    report.verdict = Verdict::Broken;
                    notes.push(isolated_failure_words(n, iso_error, &report));
                }
            }
        }
        Outcome::NotRun => {
            report.detail = Some("could not be checked: no isolated import was tried".into());
            return report;
        }
    }
    notes.extend(unhelped);
    report.pool = Some(placement(
        &report,
        iso,
        isolated,
        legacy,
        phase("process"),
        &mut notes,
    ));
    if !notes.is_empty() {
        report.detail = Some(notes.join("; "));
    }
    report
}

/// Where a pool would run a task of the module (see [`Placement`]), with a note saying
/// why when not in an interpreter.
fn placement(
    report: &ModuleReport,
    iso: Outcome<'_>,
    isolated: Option<&Phase>,
    legacy: Option<&Phase>,
    process: Option<&Phase>,
    notes: &mut Vec<String>,
) -> Placement {
    if report.verdict == Verdict::Ok {
        return Placement::Interpreter;
    }
    let refused = match iso {
        Outcome::Failed(_, error) => {
            is_refusal(&error.message)
                || isolated.is_some_and(|p| {
                    p.attempts
                        .iter()
                        .flat_map(|a| &a.failed_extensions)
                        .any(|(_, message)| is_refusal(message))
                })
        }
        _ => false,
    };
    // A module a legacy interpreter imported imports in a process's main interpreter
    // too (the probe asks a process only when no legacy interpreter imported it).
    let legacy_imported = legacy.is_some_and(|p| {
        p.crash.is_none() && p.probe_error.is_none() && p.attempts.first().is_some_and(|a| a.ok)
    });
    let in_process = process.map(|p| match (&p.crash, &p.probe_error, p.attempts.first()) {
        (None, None, Some(attempt)) if attempt.ok => Ok(()),
        (None, None, Some(attempt)) => Err(attempt
            .error
            .as_ref()
            .map_or_else(|| "it failed".to_owned(), error_words)),
        _ => Err(p.crash_words()),
    });
    let in_process = in_process.or(legacy_imported.then_some(Ok(())));
    match (refused, in_process) {
        (true, Some(Ok(()))) => {
            notes.push("a pool runs it in a worker process, where it imports".into());
            Placement::Process
        }
        (true, Some(Err(words))) => {
            notes.push(format!(
                "a pool cannot run it: it fails in a process of its own too: {words}"
            ));
            Placement::Nowhere
        }
        (_, Some(Ok(()))) => {
            let why = if matches!(iso, Outcome::Crashed(_)) {
                "isolated interpreters crash with it"
            } else {
                "its failure in isolated interpreters is not a refusal"
            };
            notes.push(format!(
                "a pool does not move it to a worker process ({why}), though it imports \
                 in a process: name it in PoolConfig::in_processes to run it there"
            ));
            Placement::Nowhere
        }
        _ => Placement::Nowhere,
    }
}

/// The modules loaded (or refused) by the interpreters of `phase` that a hazard of
/// CPython `version` names, grouped by hazard: the hazard of `first` (the refused
/// module, if any) ahead, then that of the module's own package, then the others.
fn hazard_modules<'a>(
    phase: &'a Phase,
    version: &str,
    module: &str,
    first: Option<&str>,
) -> Vec<(&'static Hazard, Vec<&'a str>)> {
    let names = phase.attempts.iter().flat_map(|a| {
        a.failed_extensions
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(a.loaded.iter().flatten().map(String::as_str))
    });
    let top = module.split('.').next().unwrap_or_default();
    let rank = |name: &str| {
        if Some(name) == first {
            0
        } else if name == top || name.strip_prefix(top).is_some_and(|r| r.starts_with('.')) {
            1
        } else {
            2
        }
    };
    let mut found: Vec<(&'static Hazard, Vec<&'a str>, u8)> = Vec::new();
    for name in names {
        for hazard in hazards::naming(name, version)
            .into_iter()
            .filter(|h| h.workaround == Workaround::PrepareInMain)
        {
            match found.iter_mut().find(|(h, _, _)| h.id == hazard.id) {
                Some((_, modules, best)) => {
                    if !modules.contains(&name) {
                        modules.push(name);
                        *best = (*best).min(rank(name));
                    }
                }
                None => found.push((hazard, vec![name], rank(name))),
            }
        }
    }
    found.sort_by_key(|(_, _, best)| *best);
    found
        .into_iter()
        .map(|(hazard, mut modules, _)| {
            modules.sort_by_key(|name| rank(name));
            (hazard, modules)
        })
        .collect()
}

/// Why a module that crashed bare is fine for the host: the runtime prepares it.
fn prepared_words(bare: &Phase, hazardous: &[(&Hazard, Vec<&str>)], version: &str) -> String {
    let how = if bare.phase == "pool" {
        "four isolated interpreters alive at once"
    } else {
        "two isolated interpreters"
    };
    let bug = if !hazardous.is_empty() {
        hazardous
            .iter()
            .map(|(hazard, modules)| {
                format!(
                    "{} of {}, {}, {}",
                    hazard.id,
                    modules.join(", "),
                    hazard.issues_text(),
                    hazard.fixed_text()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        hazards::for_version(version)
            .iter()
            .filter(|h| h.workaround == Workaround::PrepareInMain)
            .map(|h| format!("{}, {}", h.id, h.issues_text()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!(
        "works because subinterp imports extension modules in the main interpreter first on \
         CPython {version}; without that, with {how}, {} (CPython bugs: {bug})",
        bare.crash_words()
    )
}

/// What CPython's refusal of a module in an isolated interpreter says.
const REFUSAL_WORDS: &str = "does not support loading in subinterpreters";

/// The refusal to blame. When the isolated import failed: the refusal whose message the
/// error carries (the one that propagated), else the last one. When it worked (the
/// refusals were caught): one of the package's own modules, else the first.
fn culprit<'a>(
    obs: &Observation,
    isolated: Option<&Phase>,
    refused: &[&'a (String, String)],
) -> Option<&'a (String, String)> {
    let error = isolated
        .and_then(|p| p.attempts.iter().find(|a| !a.ok))
        .and_then(|a| a.error.as_ref());
    match error {
        Some(error) => refused
            .iter()
            .rev()
            .find(|(_, message)| error.message.contains(message.as_str()))
            // A refusal of a module not among those recorded (one imported where the
            // probe does not see it) blames none of them: the error says which.
            .or_else(|| {
                (!error.message.contains(REFUSAL_WORDS))
                    .then(|| refused.last())
                    .flatten()
            })
            .copied(),
        None => {
            let top = obs.module.split('.').next().unwrap_or_default();
            refused
                .iter()
                .find(|(name, _)| {
                    *name == obs.module
                        || name.strip_prefix(top).is_some_and(|r| r.starts_with('.'))
                })
                .or(refused.first())
                .copied()
        }
    }
}

/// What the mixed phase (an isolated attempt, then a legacy import in the same process)
/// adds: a warning when the legacy import then fails or the process crashes.
fn mixed_notes(mixed: &Phase, notes: &mut Vec<String>) {
    const PREFIX: &str = "warning: in a process where an isolated interpreter has already \
                          tried to import it,";
    if mixed.crash.is_some() || mixed.probe_error.is_some() {
        notes.push(format!("{PREFIX} {}", mixed.crash_words()));
    } else if let Some(error) = mixed.attempts.get(1).and_then(|a| a.error.as_ref()) {
        notes.push(format!(
            "{PREFIX} a legacy interpreter then fails with {}",
            error_words(error)
        ));
    }
}

fn apply_facts(report: &mut ModuleReport, facts: &Facts) {
    match facts.init.as_deref() {
        Some("multi-phase") => {
            report.init = Some(InitKind::MultiPhase);
            report.multiple_interpreters = Some(match facts.multiple_interpreters {
                Some(0) => MultipleInterpreters::NotSupported,
                Some(2) => MultipleInterpreters::PerInterpreterGil,
                // Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED, also CPython's default.
                _ => MultipleInterpreters::Supported,
            });
            if facts.gil_slot_exists {
                report.gil = Some(match facts.gil {
                    Some(1) => GilUse::NotUsed,
                    // Py_MOD_GIL_USED, also CPython's default.
                    _ => GilUse::Used,
                });
            }
        }
        Some("single-phase") => report.init = Some(InitKind::SinglePhase),
        _ => {}
    }
}

/// Compares the attribute ids seen by the two imports of `phase`; notes the names of
/// shared objects.
fn shared_state(
    report: &ModuleReport,
    phase: &Phase,
    which: &str,
    notes: &mut Vec<String>,
) -> Option<bool> {
    if !matches!(
        report.kind,
        Some(ModuleKind::Extension | ModuleKind::Builtin)
    ) {
        return None;
    }
    let first = phase.attempts.first()?.ids.as_ref()?;
    let second = phase.attempts.get(1)?.ids.as_ref()?;
    let shared: Vec<&str> = first
        .iter()
        .filter(|(name, id)| second.get(*name) == Some(id))
        .map(|(name, _)| name.as_str())
        .collect();
    if shared.is_empty() {
        return Some(false);
    }
    let mut names = shared
        .iter()
        .take(SHARED_NAMES_SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if shared.len() > SHARED_NAMES_SHOWN {
        names.push_str(&format!(", ... ({} in all)", shared.len()));
    }
    notes.push(format!(
        "{} of its {} attributes are the very same objects in two {which} interpreters: {names}",
        shared.len(),
        first.len()
    ));
    Some(true)
}

/// Why the isolated import failed, in words.
fn isolated_failure_words(n: usize, error: &PyError, report: &ModuleReport) -> String {
    let which = if n == 0 {
        "isolated interpreters refuse it".to_owned()
    } else {
        "it imports in one isolated interpreter, but a second one fails".to_owned()
    };
    match &report.culprit {
        Some(culprit) if *culprit != report.module => format!(
            "{which}: it imports {culprit}, which isolated interpreters refuse ({})",
            error_words(error)
        ),
        _ => format!("{which}: {}", error_words(error)),
    }
}

/// "ImportError: message" with the message's last line (long messages such as numpy's
/// put the cause last).
fn error_words(error: &PyError) -> String {
    let message = last_line(&error.message);
    if message.is_empty() {
        error.type_name.clone()
    } else {
        format!("{}: {message}", error.type_name)
    }
}

fn last_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    truncate(line, 300)
}

/// What a crashed process said about it: a fatal error's message if CPython reported
/// one (beyond the signal's name), else the last line printed before the fault handler's
/// report, else nothing.
fn last_output(output: &str) -> String {
    const SIGNAL_NAMES: [&str; 5] = [
        "Segmentation fault",
        "Aborted",
        "Bus error",
        "Floating-point exception",
        "Illegal instruction",
    ];
    let fatal = output.lines().find_map(|l| {
        let message = l.trim().strip_prefix("Fatal Python error:")?.trim();
        (!SIGNAL_NAMES.contains(&message)).then(|| truncate(message, 300))
    });
    if let Some(message) = fatal {
        return message;
    }
    let before = output
        .find("Fatal Python error:")
        .map_or(output, |at| &output[..at]);
    last_line(before)
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push_str("...");
        cut
    }
}

fn trim_float(seconds: f64) -> String {
    let text = format!("{seconds:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn parse_kind(kind: Option<&str>) -> Option<ModuleKind> {
    match kind? {
        "extension" => Some(ModuleKind::Extension),
        "builtin" => Some(ModuleKind::Builtin),
        "python" => Some(ModuleKind::Python),
        _ => None,
    }
}

/// The one-line reason shown by `subinterp check`.
pub(super) fn reason(report: &ModuleReport) -> String {
    let mut parts: Vec<String> = Vec::new();
    let what = match (report.kind, report.init) {
        (Some(ModuleKind::Python), _) => "pure Python".to_owned(),
        (Some(kind), Some(init)) => format!("{kind}, {init} init"),
        (Some(kind), None) => kind.to_string(),
        (None, _) => String::new(),
    };
    let mut declares = Vec::new();
    if let Some(m) = report.multiple_interpreters {
        declares.push(format!("multiple_interpreters={m}"));
    }
    if let Some(g) = report.gil {
        declares.push(format!("gil={g}"));
    }
    let mut head = what;
    if !declares.is_empty() {
        head.push_str(&format!(" ({})", declares.join(", ")));
    }
    if !head.is_empty() {
        parts.push(head);
    }
    match (report.verdict, &report.detail) {
        (Verdict::Ok, None) => parts.push("imports in isolated interpreters".into()),
        (Verdict::LegacyOnly, Some(detail)) => {
            parts.push(detail.clone());
            if !detail.contains("legacy interpreter") {
                parts.push("imports in a legacy interpreter".into());
            }
        }
        (_, Some(detail)) => parts.push(detail.clone()),
        (_, None) => {}
    }
    if report.verdict == Verdict::LegacyOnly && report.shared_state == Some(false) {
        parts.push("no objects shared between legacy interpreters".into());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(ok: bool, error: Option<(&str, &str)>, failed: &[(&str, &str)]) -> Attempt {
        Attempt {
            ok,
            error: error.map(|(t, m)| PyError {
                type_name: t.into(),
                message: m.into(),
            }),
            failed_extensions: failed
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            kind: ok.then(|| "python".to_owned()),
            ids: None,
            loaded: None,
        }
    }

    fn phase(name: &str, attempts: Vec<Attempt>) -> Phase {
        Phase {
            phase: name.into(),
            attempts,
            stage: Some("done".into()),
            ..Phase::default()
        }
    }

    fn obs(phases: Vec<Phase>) -> Observation {
        Observation {
            module: "pkg".into(),
            static_kind: Some("python".into()),
            phases,
            ..Observation::default()
        }
    }

    fn derive_(o: &Observation) -> ModuleReport {
        derive(o, "3.13.0", true)
    }

    const REFUSED: &str = "module pkg._speedups does not support loading in subinterpreters";

    #[test]
    fn a_refusal_of_an_unrecorded_module_blames_no_recorded_one() {
        let psutil = "module psutil._psutil_linux does not support loading in subinterpreters";
        let curses = "module _curses does not support loading in subinterpreters";
        let refused = || attempt(false, Some(("ImportError", psutil)), &[("_curses", curses)]);
        let r = derive_(&obs(vec![phase("isolated", vec![refused(), refused()])]));
        assert_eq!(r.culprit, None);
        let reason = r.reason();
        assert!(!reason.contains("_curses"), "{reason}");
        assert!(reason.contains("psutil._psutil_linux"), "{reason}");
    }

    #[test]
    fn caught_refusal_is_ok_with_a_culprit() {
        let a = || attempt(true, None, &[("pkg._speedups", REFUSED)]);
        let r = derive_(&obs(vec![phase("isolated", vec![a(), a()])]));
        assert_eq!(r.verdict, Verdict::Ok);
        assert_eq!(r.culprit.as_deref(), Some("pkg._speedups"));
        assert!(r.detail.unwrap().contains("caught the refusal"));
    }

    #[test]
    fn where_a_pool_runs_it_follows_the_refusal_and_the_import_in_a_process() {
        let refused = || {
            attempt(
                false,
                Some(("ImportError", REFUSED)),
                &[("pkg._speedups", REFUSED)],
            )
        };
        let fine = || attempt(true, None, &[]);
        let broken = || {
            attempt(
                false,
                Some(("RuntimeError", "no subinterpreters here")),
                &[],
            )
        };
        let failing = || attempt(false, Some(("OSError", "libfoo.so: cannot open")), &[]);
        // The probe asks a process only when no legacy interpreter imported it.
        let with = |iso: Vec<Attempt>, legacy: Vec<Attempt>, process: Option<Attempt>| {
            let mut phases = vec![phase("isolated", iso), phase("legacy", legacy)];
            phases.extend(process.map(|a| phase("process", vec![a])));
            derive_(&obs(phases))
        };
        // Refused, imports in a legacy interpreter, so in a process: there.
        let r = with(vec![refused(), refused()], vec![fine(), fine()], None);
        assert_eq!(r.pool, Some(Placement::Process));
        assert!(
            r.reason().contains("a pool runs it in a worker process"),
            "{r:?}"
        );
        // Refused in every subinterpreter (the pandas case), imports in a process: there.
        let r = with(vec![refused(), refused()], vec![refused()], Some(fine()));
        assert_eq!(r.pool, Some(Placement::Process), "{r:?}");
        // Refused, fails in a process too: nowhere, and why.
        let r = with(vec![refused(), refused()], vec![failing()], Some(failing()));
        assert_eq!(r.pool, Some(Placement::Nowhere));
        assert!(
            r.reason()
                .contains("fails in a process of its own too: OSError"),
            "{r:?}"
        );
        // Fails in isolated interpreters for another reason: a pool does not move it.
        let r = with(vec![broken(), broken()], vec![broken()], Some(fine()));
        assert_eq!(r.pool, Some(Placement::Nowhere));
        assert!(r.reason().contains("not a refusal"), "{r:?}");
        // Imports in isolated interpreters: there, with no note.
        let r = derive_(&obs(vec![phase("isolated", vec![fine(), fine()])]));
        assert_eq!(r.pool, Some(Placement::Interpreter));
        assert!(r.detail.is_none(), "{r:?}");
        // Timed out: not known.
        let r = derive_(&Observation {
            timeout: Some(5.0),
            ..obs(Vec::new())
        });
        assert_eq!(r.pool, None);
    }

    #[test]
    fn refusal_then_legacy_is_legacy_only() {
        let refused = || {
            attempt(
                false,
                Some(("ImportError", REFUSED)),
                &[("pkg._speedups", REFUSED)],
            )
        };
        let fine = || attempt(true, None, &[]);
        let r = derive_(&obs(vec![
            phase("isolated", vec![refused(), refused()]),
            phase("legacy", vec![fine(), fine()]),
            phase("mixed", vec![refused(), fine()]),
        ]));
        assert_eq!(r.verdict, Verdict::LegacyOnly);
        assert_eq!(r.culprit.as_deref(), Some("pkg._speedups"));
        assert!(
            r.detail
                .as_deref()
                .unwrap()
                .contains("it imports pkg._speedups"),
            "{r:?}"
        );
        assert!(r.reason().contains("legacy"), "{}", r.reason());
    }

    #[test]
    fn the_culprit_is_the_refusal_that_propagated() {
        const OTHER: &str = "module _datetime does not support loading in subinterpreters";
        let failed = || {
            attempt(
                false,
                Some(("ImportError", REFUSED)),
                &[("_datetime", OTHER), ("pkg._speedups", REFUSED)],
            )
        };
        let fine = || attempt(true, None, &[]);
        let r = derive_(&obs(vec![
            phase("isolated", vec![failed()]),
            phase("legacy", vec![fine(), fine()]),
        ]));
        assert_eq!(r.culprit.as_deref(), Some("pkg._speedups"));
        // When both were caught, the package's own module is named, the other mentioned.
        let caught = || {
            attempt(
                true,
                None,
                &[("_datetime", OTHER), ("pkg._speedups", REFUSED)],
            )
        };
        let r = derive_(&obs(vec![phase("isolated", vec![caught(), caught()])]));
        assert_eq!(r.verdict, Verdict::Ok);
        assert_eq!(r.culprit.as_deref(), Some("pkg._speedups"));
        assert!(r
            .detail
            .unwrap()
            .contains("it also went on without _datetime"));
    }

    #[test]
    fn crash_is_broken_with_the_signal() {
        let mut crashed = phase("isolated", vec![]);
        crashed.stage = Some("importing it in the first isolated interpreter".into());
        crashed.crash = Some(Crash {
            name: Some("SIGSEGV".into()),
            output: "boom\nFatal Python error: Segmentation fault\n\nCurrent thread".into(),
        });
        let r = derive_(&obs(vec![crashed]));
        assert_eq!(r.verdict, Verdict::Broken);
        let detail = r.detail.unwrap();
        assert!(
            detail.contains("the process crashed with SIGSEGV while importing it in the first isolated interpreter"),
            "{detail}"
        );
        assert!(detail.contains("its last output: boom"), "{detail}");
    }

    fn loading(ok: bool, loaded: &[&str]) -> Attempt {
        let mut a = attempt(ok, None, &[]);
        a.loaded = Some(loaded.iter().map(|n| n.to_string()).collect());
        a
    }

    fn crashed_while_ending(name: &str, attempts: Vec<Attempt>) -> Phase {
        let mut p = phase(name, attempts);
        p.stage = Some("ending the four isolated interpreters alive at once".into());
        p.crash = Some(Crash {
            name: Some("SIGABRT".into()),
            output: "free(): invalid pointer\n".into(),
        });
        p
    }

    #[test]
    fn a_pool_crash_the_runtime_prevents_is_ok_and_explained() {
        let four = || {
            (0..4)
                .map(|_| loading(true, &["_datetime", "pkg"]))
                .collect()
        };
        let mut prepared = phase("pool-prepared", four());
        prepared.prepared = true;
        let r = derive_(&obs(vec![
            phase(
                "isolated",
                vec![loading(true, &["pkg"]), loading(true, &["pkg"])],
            ),
            crashed_while_ending("pool", four()),
            prepared,
        ]));
        assert_eq!(r.verdict, Verdict::Ok, "{r:?}");
        assert_eq!(r.culprit.as_deref(), Some("_datetime"));
        let detail = r.detail.unwrap();
        assert!(
            detail.contains("works because subinterp imports extension modules in the main interpreter first on CPython 3.13.0"),
            "{detail}"
        );
        assert!(detail.contains("with four isolated interpreters alive at once, the process crashed with SIGABRT while ending"), "{detail}");
        assert!(detail.contains("datetime-static-types of _datetime, python/cpython#136421, #136423, fixed in 3.14.0"), "{detail}");
        // Without the runtime's preparation (3.14, or turned off) the same crash is broken.
        let r = derive(
            &obs(vec![
                phase(
                    "isolated",
                    vec![loading(true, &["pkg"]), loading(true, &["pkg"])],
                ),
                crashed_while_ending("pool", four()),
            ]),
            "3.13.0",
            false,
        );
        assert_eq!(r.verdict, Verdict::Broken, "{r:?}");
        assert!(r
            .detail
            .unwrap()
            .contains("while ending the four isolated interpreters"));
    }

    #[test]
    fn a_crash_preparation_does_not_prevent_is_broken() {
        let four = || (0..4).map(|_| loading(true, &["_datetime"])).collect();
        let mut prepared = crashed_while_ending("pool-prepared", four());
        prepared.prepared = true;
        let r = derive_(&obs(vec![
            crashed_while_ending("isolated", vec![loading(true, &["_datetime"])]),
            crashed_while_ending("pool", four()),
            prepared,
        ]));
        assert_eq!(r.verdict, Verdict::Broken);
        let detail = r.detail.unwrap();
        assert!(detail.contains("does not help"), "{detail}");
    }

    #[test]
    fn missing_module_is_broken_without_kind() {
        let missing = || {
            attempt(
                false,
                Some(("ModuleNotFoundError", "No module named 'nope'")),
                &[],
            )
        };
        let mut o = obs(vec![
            phase("isolated", vec![missing(), missing()]),
            phase("legacy", vec![missing(), missing()]),
        ]);
        o.static_kind = None;
        let r = derive_(&o);
        assert_eq!(r.verdict, Verdict::Broken);
        assert_eq!(r.kind, None);
        assert_eq!(r.detail.as_deref(), Some("No module named 'nope'"));
    }

    #[test]
    fn timeout_is_broken() {
        let o = Observation {
            module: "slow".into(),
            timeout: Some(2.0),
            stage: Some("importing it in isolated interpreters".into()),
            ..Observation::default()
        };
        let r = derive_(&o);
        assert_eq!(r.verdict, Verdict::Broken);
        assert_eq!(
            r.detail.as_deref(),
            Some("did not finish within 2 s while importing it in isolated interpreters")
        );
    }

    #[test]
    fn facts_map_to_slot_values() {
        let mut r = derive_(&obs(vec![]));
        apply_facts(
            &mut r,
            &Facts {
                init: Some("multi-phase".into()),
                multiple_interpreters: Some(2),
                gil: Some(1),
                gil_slot_exists: true,
            },
        );
        assert_eq!(r.init, Some(InitKind::MultiPhase));
        assert_eq!(
            r.multiple_interpreters,
            Some(MultipleInterpreters::PerInterpreterGil)
        );
        assert_eq!(r.gil, Some(GilUse::NotUsed));
        let mut r = derive_(&obs(vec![]));
        apply_facts(
            &mut r,
            &Facts {
                init: Some("multi-phase".into()),
                multiple_interpreters: None,
                gil: None,
                gil_slot_exists: false,
            },
        );
        assert_eq!(
            r.multiple_interpreters,
            Some(MultipleInterpreters::Supported)
        );
        assert_eq!(r.gil, None);
    }

    #[test]
    fn json_shape() {
        let r = derive_(&obs(vec![]));
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "module",
                "verdict",
                "kind",
                "init",
                "multiple_interpreters",
                "gil",
                "shared_state",
                "culprit",
                "pool",
                "detail"
            ]
        );
        assert_eq!(serde_json::to_value(Placement::Process).unwrap(), "process");
        assert_eq!(
            serde_json::to_value(Verdict::LegacyOnly).unwrap(),
            "legacy-only"
        );
        assert_eq!(
            serde_json::to_value(InitKind::SinglePhase).unwrap(),
            "single-phase"
        );
        assert_eq!(
            serde_json::to_value(MultipleInterpreters::PerInterpreterGil).unwrap(),
            "per_interpreter_gil"
        );
        assert_eq!(serde_json::to_value(GilUse::NotUsed).unwrap(), "not_used");
    }
}
