//! A spare interpreter: created ahead of need on a thread of its own, which then waits
//! for the code that makes it an [`Interpreter`](crate::interpreter::Interpreter).
//!
//! CPython takes 5–10 ms to create an isolated interpreter, most of it importing `site`,
//! the codecs and the import machinery; a `fork` gives a process pool a worker in less.
//! A spare created while the program does other work (the Python package makes one when
//! it is imported) lets the first interpreter of that kind start at once. One spare at a
//! time; one never taken is ended with the runtime (or by its owner before a `fork`).

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use crate::error::{Error, Result};
use crate::raw::lifecycle::{MainInterpreter, RawConfig, SubInterpreter};

/// What the thread of an interpreter runs once the interpreter exists (or failed to);
/// told whether it was made ahead (a spare), when the program may have changed since.
pub(crate) type Body = Box<dyn FnOnce(std::result::Result<SubInterpreter, String>, bool) + Send>;

/// Stack of an interpreter's thread: as much as a Python main thread usually gets, so deep
/// Python recursion and deep value conversion do not overflow it (it is virtual memory,
/// committed only as used).
const STACK: usize = 16 << 20;

/// Starts a thread for an interpreter (named, with the interpreters' stack size).
pub(crate) fn spawn(run: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("subinterp".into())
        .stack_size(STACK)
        .spawn(run)
        .map_err(|e| Error::CreateFailed(format!("cannot start a thread: {e}")))
}

/// An interpreter being created, or created and waiting, on its own thread.
pub(crate) struct Spare {
    raw: RawConfig,
    give: Sender<Body>,
    thread: JoinHandle<()>,
}

impl Spare {
    /// Starts creating an interpreter of `raw`'s kind.
    pub(crate) fn start(main: MainInterpreter, raw: RawConfig) -> Result<Spare> {
        let (give, take) = bounded::<Body>(1);
        let thread = spawn(move || {
            let made = SubInterpreter::new(main, raw);
            match take.recv() {
                Ok(body) => body(made, true),
                // Never taken: ended as it was made, before anything ran in it.
                Err(_) => {
                    if let Ok(sub) = made {
                        sub.end();
                    }
                }
            }
        })?;
        Ok(Spare { raw, give, thread })
    }

    /// Whether this spare is of `raw`'s kind.
    pub(crate) fn is(&self, raw: RawConfig) -> bool {
        self.raw == raw
    }

    /// Hands `body` to the spare's thread, which runs it once the interpreter exists;
    /// `body` back if that thread is gone.
    pub(crate) fn give(self, body: Body) -> std::result::Result<JoinHandle<()>, Body> {
        match self.give.send(body) {
            Ok(()) => Ok(self.thread),
            Err(returned) => {
                let _ = self.thread.join();
                Err(returned.into_inner())
            }
        }
    }

    /// Ends the interpreter (once created) and waits for its thread.
    pub(crate) fn end(self) {
        drop(self.give);
        let _ = self.thread.join();
    }
}
