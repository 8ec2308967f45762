//! The main loop: submits the input's records to the pool as they come, a bounded
//! window of them at a time, and writes each result in input order as soon as it and
//! those before it are ready.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender, TryRecvError};
use subinterp::{Error, Pool, Task, TaskOptions};

use super::input::Event;
use super::output::Sink;
use super::report::{error_line, render_result};
use super::worker::ENTRY;

/// One output line in the making.
pub(super) enum Pending {
    /// A submitted record and its line number.
    Task(Task, usize),
    Invalid {
        line: usize,
        message: String,
    },
    /// A record whose output line is known, and whether it succeeded.
    Done((String, bool)),
}

/// How long the main loop waits for the first record at a time before it looks for
/// signals again.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

impl Pending {
    /// True when its output line can be written now.
    fn is_ready(&self) -> bool {
        match self {
            Pending::Task(task, _) => task.is_finished(),
            Pending::Invalid { .. } | Pending::Done(_) => true,
        }
    }

    /// Waits at most [`SIGNAL_CHECK`] for a submitted record to finish.
    fn wait_briefly(&mut self) {
        if !matches!(self, Pending::Task(..)) {
            return;
        }
        let placeholder = Pending::Done((String::new(), true));
        if let Pending::Task(task, line) = std::mem::replace(self, placeholder) {
            *self = match task.wait_timeout(SIGNAL_CHECK) {
                Ok(result) => Pending::Done(render_result(result, line)),
                Err(task) => Pending::Task(task, line),
            };
        }
    }
}

/// Wakes the main loop: the first record of the window finished, or a signal came.
pub(super) enum Wake {
    Ready,
    Signal(i32),
}

/// Sends [`Wake::Ready`] when the task it was polled for finishes.
pub(super) struct TaskWaker(pub(super) Sender<Wake>);

impl std::task::Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.send(Wake::Ready);
    }
}

/// How the stream of records ended.
pub(super) enum End {
    /// Every record was read and written.
    Done,
    /// Reading the input failed at this line; the records before it were written.
    ReadFailed(usize, io::Error),
    /// The pool could not take the record of this line (it has no workers left); the
    /// records before it were written.
    PoolFailed(usize, Error),
    /// Writing the output failed (or the reader of a pipe went away).
    WriteFailed(io::Error),
    /// SIGINT or SIGTERM.
    Signal(i32),
}

/// The main loop's inputs.
pub(super) struct Stream<'a> {
    pub(super) pool: &'a Pool,
    pub(super) options: TaskOptions,
    pub(super) in_flight: usize,
    pub(super) lines: &'a Receiver<Vec<Event>>,
    pub(super) wakes: &'a Receiver<Wake>,
    pub(super) waker: &'a Waker,
}

impl Stream<'_> {
    /// Submits input lines as they come, at most `in_flight` at a time, and writes each
    /// result, in input order, as soon as it and those before it are ready. The output is
    /// flushed whenever the loop has to wait (the input is idle or the next result is not
    /// ready), so results show as they are computed even when the input is slow.
    pub(super) fn run(&self, sink: &mut Sink, window: &mut VecDeque<Pending>) -> End {
        let mut input_open = true;
        let mut stopped = None;
        let mut polled = None;
        let mut batch = Vec::new().into_iter();
        loop {
            while let Ok(wake) = self.wakes.try_recv() {
                if let Wake::Signal(signal) = wake {
                    return End::Signal(signal);
                }
            }
            if let Err(err) = self.write_ready(sink, window) {
                return End::WriteFailed(err);
            }
            if !input_open && window.is_empty() {
                return stopped.unwrap_or(End::Done);
            }
            let room = input_open && window.len() < self.in_flight;
            if room {
                if let Some(event) = batch.next() {
                    self.take(event, window, &mut input_open, &mut stopped);
                    continue;
                }
                match self.lines.try_recv() {
                    Ok(events) => {
                        batch = events.into_iter();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => {
                        input_open = false;
                        continue;
                    }
                    Err(TryRecvError::Empty) => {}
                }
            }
            // Nothing to do until a line comes or the first record finishes.
            if let Err(err) = sink.flush() {
                return End::WriteFailed(err);
            }
            if !room {
                // Only the first record can let the loop go on: wait for it alone (the
                // cheapest wait), looking for signals now and then.
                if let Some(front) = window.front_mut() {
                    front.wait_briefly();
                }
                continue;
            }
            // Waiting for input as well: the first record wakes the loop when it finishes.
            if let Some(Pending::Task(task, line)) = window.front_mut() {
                if polled != Some(task.id()) {
                    polled = Some(task.id());
                    let line = *line;
                    let mut cx = Context::from_waker(self.waker);
                    if let Poll::Ready(result) = Pin::new(task).poll(&mut cx) {
                        window[0] = Pending::Done(render_result(result, line));
                        continue;
                    }
                }
            }
            select! {
                recv(self.lines) -> events => match events {
                    Ok(events) => batch = events.into_iter(),
                    Err(_) => input_open = false,
                },
                recv(self.wakes) -> wake => {
                    if let Ok(Wake::Signal(signal)) = wake {
                        return End::Signal(signal);
                    }
                }
            }
        }
    }

    /// Writes the finished records at the front of the window.
    fn write_ready(&self, sink: &mut Sink, window: &mut VecDeque<Pending>) -> io::Result<()> {
        while window.front().is_some_and(Pending::is_ready) {
            if let Some(done) = window.pop_front() {
                let (text, ok) = render(done);
                sink.write(&text, ok)?;
            }
        }
        Ok(())
    }

    /// Takes one event of the input reader: submits a line, or notes the input's end.
    fn take(
        &self,
        event: Event,
        window: &mut VecDeque<Pending>,
        input_open: &mut bool,
        stopped: &mut Option<End>,
    ) {
        let (line_no, bytes) = match event {
            Event::Line(line_no, bytes) => (line_no, bytes),
            Event::Eof => {
                *input_open = false;
                return;
            }
            Event::ReadFailed(line_no, err) => {
                *input_open = false;
                *stopped = Some(End::ReadFailed(line_no, err));
                return;
            }
        };
        if bytes.trim_ascii().is_empty() {
            return;
        }
        let invalid = |message: String| Pending::Invalid {
            line: line_no,
            message,
        };
        let pending = match String::from_utf8(bytes) {
            Err(err) => invalid(format!(
                "line {line_no} is not valid UTF-8: {}",
                err.utf8_error()
            )),
            Ok(line) => match serde_json::from_str::<serde::de::IgnoredAny>(&line) {
                Err(err) => invalid(format!("line {line_no} is not valid JSON: {err}")),
                Ok(_) => match self.pool.submit_with(ENTRY, (line,), self.options) {
                    Ok(task) => Pending::Task(task, line_no),
                    Err(err) => {
                        // No interpreter can take it (none could be set up again): stop
                        // reading; what was submitted is written.
                        *input_open = false;
                        *stopped = Some(End::PoolFailed(line_no, err));
                        return;
                    }
                },
            },
        };
        window.push_back(pending);
    }
}

/// The output line for a finished record, and whether it succeeded.
pub(super) fn render(pending: Pending) -> (String, bool) {
    match pending {
        Pending::Invalid { line, message } => (
            error_line("InvalidInput", &message, None, Some(line)),
            false,
        ),
        Pending::Task(task, line) => render_result(task.wait(), line),
        Pending::Done(done) => done,
    }
}

/// After a signal: writes the finished records at the front of `window`, up to the
/// first that did not finish (the output stays a prefix of the input). Returns how many
/// were left unwritten, and whether writing succeeded.
pub(super) fn write_finished_prefix(
    window: VecDeque<Pending>,
    sink: &mut Sink,
) -> (usize, io::Result<()>) {
    let mut unfinished = 0usize;
    let mut written = Ok(());
    for pending in window {
        let done = match pending {
            Pending::Task(task, line) => match task.wait_timeout(Duration::ZERO) {
                Err(_unfinished) => None,
                Ok(Err(Error::Cancelled)) => None,
                Ok(Err(Error::Python(exc))) if exc.is("KeyboardInterrupt") => None,
                Ok(result) => Some(render_result(result, line)),
            },
            invalid => Some(render(invalid)),
        };
        match done {
            Some((text, ok)) if unfinished == 0 && written.is_ok() => {
                written = sink.write(&text, ok);
            }
            _ => unfinished += 1,
        }
    }
    (unfinished, written)
}
