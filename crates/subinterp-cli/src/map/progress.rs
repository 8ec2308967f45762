//! What the user sees of the run while and after it goes: a progress line on stderr
//! when it is a terminal, and the summary line at the end.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The records written so far, shown as they are written.
pub(super) struct Progress {
    bar: ProgressBar,
    records: usize,
    errors: usize,
}

impl Progress {
    /// Starts the progress line (hidden when stderr is not a terminal).
    pub(super) fn start() -> Self {
        Progress {
            bar: progress_bar(),
            records: 0,
            errors: 0,
        }
    }

    /// Counts one record written, and whether it succeeded.
    pub(super) fn record(&mut self, ok: bool) {
        self.records += 1;
        if !ok {
            self.errors += 1;
            self.bar.set_message(format!("{} errors", self.errors));
        }
        self.bar.inc(1);
    }

    /// The records written that failed (or were invalid inputs).
    pub(super) fn errors(&self) -> usize {
        self.errors
    }

    /// Removes the progress line, before the summary or an error message.
    pub(super) fn clear(&self) {
        self.bar.finish_and_clear();
    }

    /// Prints the summary line: `what` (how the run ended, if not by finishing), the
    /// records, errors and rate since `started`, with `workers` interpreters, and how
    /// many records ran in worker processes (`in_processes`: modules isolated
    /// interpreters refuse, such as numpy).
    pub(super) fn summary(&self, what: &str, started: Instant, workers: usize, in_processes: u64) {
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "subinterp map: {what}{} records, {} errors, {elapsed:.2} s, {:.0} records/s ({workers} interpreters, {in_processes} records in worker processes)",
            self.records,
            self.errors,
            self.records as f64 / elapsed.max(1e-9)
        );
    }
}

fn progress_bar() -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} records  {rate}  {elapsed}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} records/s", state.per_sec());
                },
            ),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
