//! `subinterp map MODULE:FUNC`: call a Python function on every record of a JSON Lines
//! file, in parallel interpreters, writing results in input order.
//!
//! One file per job; this one sets the run up and settles how it ended.
//!
//! - `options`: the command line, its `--help`, the checks of what it asks for;
//! - `input`: opening the input, and the reader thread that splits it into lines;
//! - `worker`: what every interpreter of the pool runs (`prelude.py`, `record.py`);
//! - `order`: the main loop, which submits records and writes results in input order;
//! - `output`: where the results go, and writing them;
//! - `progress`: the progress line and the summary;
//! - `report`: the output lines of failed records, and the command's own error messages;
//! - `shutdown`: signals, and ending the pool.

mod input;
mod options;
mod order;
mod output;
mod progress;
mod report;
mod shutdown;
mod worker;

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use signal_hook::consts::SIGTERM;
use subinterp::{InterpreterConfig, Pool, PoolConfig, TaskOptions};

pub use options::MapArgs;
use order::{End, Stream, TaskWaker, Wake};
use output::{Destination, Sink};
use progress::Progress;
use report::{describe_setup_error, setup_error, write_failed};
use shutdown::{end_pool, watch_signals};

use crate::{EXIT_FAILED, EXIT_OK};

/// Runs the command; returns the exit status.
pub fn main(args: MapArgs) -> u8 {
    let (module, path) = match args.check() {
        Ok(target) => target,
        Err(err) => return err.report("map"),
    };
    args.warn_if_many_workers();
    let timeout = args.timeout;

    // The command's own streams, before any Python code runs: what Python writes to
    // stdout goes to stderr, and it reads an empty stdin.
    let destination = match Destination::take(args.output.as_deref()) {
        Ok(destination) => destination,
        Err(message) => return setup_error(message),
    };
    let input = match input::open(args.input.as_deref()) {
        Ok(input) => input,
        Err(message) => return setup_error(message),
    };
    if let Err(err) = destination.check_not(&input) {
        return err.report("map");
    }

    let mut paths = args.paths.clone();
    if let Ok(cwd) = std::env::current_dir() {
        paths.push(cwd);
    }
    let runtime = match crate::start_runtime(&paths) {
        Ok(rt) => rt,
        Err(err) => return setup_error(format!("cannot start Python: {err}")),
    };
    let mut config = PoolConfig::new();
    if let Some(n) = args.workers {
        config.workers(n);
    }
    if let Some(timeout) = timeout {
        config.timeout(timeout);
    }
    if let Some(budget) = args.cpu_budget {
        config.cpu_budget(budget);
    }
    if let Some(setup) = args.setup_timeout {
        config.setup_timeout(setup);
    }
    let mut interpreter = InterpreterConfig::isolated();
    interpreter.guards(args.guards.guards());
    if let Some(limit) = args.memory_limit {
        interpreter.memory_limit(limit);
    }
    config.interpreter(interpreter);
    worker::configure(&mut config, &args.init, &module, &path);
    config.process_fallback(!args.no_process_fallback);
    if args.in_processes {
        config.in_processes(worker::ENTRY);
    }
    let started = Instant::now();
    let pool = match Pool::new(&runtime, &config) {
        Ok(pool) => pool,
        Err(err) => return setup_error(describe_setup_error(&module, &err)),
    };
    let workers = pool.workers();
    let stats = pool.stats_handle();
    let output = match destination.open() {
        Ok(file) => file,
        Err(message) => {
            pool.shutdown_now();
            return setup_error(message);
        }
    };

    let (wake_tx, wake_rx) = unbounded::<Wake>();
    if let Err(err) = watch_signals(wake_tx.clone()) {
        pool.shutdown_now();
        return setup_error(format!("cannot handle signals: {err}"));
    }
    let progress = Progress::start();
    let in_flight = 4 * workers;
    let lines = input::read_lines(input, 2);
    let mut sink = Sink::new(output, progress);
    let mut window = VecDeque::with_capacity(in_flight);
    let waker = Waker::from(Arc::new(TaskWaker(wake_tx)));
    let stream = Stream {
        pool: &pool,
        options: TaskOptions {
            timeout,
            ..TaskOptions::default()
        },
        in_flight,
        lines: &lines,
        wakes: &wake_rx,
        waker: &waker,
    };
    let end = stream.run(&mut sink, &mut window);
    let ended;
    let status = match end {
        End::Done | End::ReadFailed(..) | End::PoolFailed(..) => {
            // Every record has its result: write them and the summary, and settle the
            // exit status, before what is left, the interpreters' own ending (threads
            // the user's code started, atexit handlers, and CPython's bugs there).
            let outcome = match sink.flush() {
                Err(err) => Err(err),
                Ok(()) => {
                    sink.progress.clear();
                    sink.progress
                        .summary("", started, workers, pool.tasks_in_processes());
                    Ok(match end {
                        End::ReadFailed(line, err) => {
                            setup_error(format!("cannot read line {line} of the input: {err}"))
                        }
                        End::PoolFailed(line, err) => {
                            setup_error(format!("stopped before line {line} of the input: {err}"))
                        }
                        _ if sink.progress.errors() == 0 => EXIT_OK,
                        _ => EXIT_FAILED,
                    })
                }
            };
            let code = outcome.unwrap_or_else(|err| write_failed(&err));
            crate::settle("map", code);
            ended = end_pool(pool, Duration::from_secs(5));
            Ok(code)
        }
        End::WriteFailed(err) => {
            ended = end_pool(pool, Duration::ZERO);
            Err(err)
        }
        End::Signal(signal) => {
            // Records already queued or running get a moment to finish, then what is
            // left is cancelled. The output stays a prefix of the input: results are
            // written up to the first record that did not finish.
            let in_processes = pool.tasks_in_processes();
            ended = end_pool(pool, Duration::from_secs(1));
            let (unfinished, written) = order::write_finished_prefix(window, &mut sink);
            match written.and_then(|()| sink.flush()) {
                Err(err) => Err(err),
                Ok(()) => {
                    sink.progress.clear();
                    let name = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    let dropped = match unfinished {
                        0 => String::new(),
                        n => format!(" ({n} records in flight not written)"),
                    };
                    sink.progress.summary(
                        &format!("stopped by {name}{dropped}: "),
                        started,
                        workers,
                        in_processes,
                    );
                    crate::settle("map", 128 + signal as u8);
                    Ok(128 + signal as u8)
                }
            }
        }
    };
    sink.progress.clear();
    let status = status.unwrap_or_else(|err| write_failed(&err));
    if args.stats {
        eprintln!("{}", stats.stats().to_json());
    }
    if !ended {
        // Past the grace period: leave the interpreter behind rather than hang.
        eprintln!(
            "subinterp map: warning: an interpreter did not end in time (a thread of the \
             user's code still running, or code stuck in C); exiting without waiting for it"
        );
        std::process::exit(i32::from(status));
    }
    status
}
