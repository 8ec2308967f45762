//! Reading the input: the input file or the command's own copy of stdin, split into
//! numbered lines by a thread of its own.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use crossbeam_channel::{bounded, Receiver};

use crate::stdio;

/// Opens the input: `file`, or the command's own copy of stdin. Python code then reads
/// an empty stdin (`/dev/null`) either way. Errs with what to tell the user.
pub(super) fn open(file: Option<&Path>) -> Result<File, String> {
    match file {
        None => stdio::take_stdin().map_err(|err| format!("cannot read standard input: {err}")),
        Some(file) => File::open(file)
            .map_err(|err| format!("cannot read {}: {err}", file.display()))
            .and_then(|f| {
                stdio::stdin_from_null()
                    .map(|()| f)
                    .map_err(|err| format!("cannot redirect standard input: {err}"))
            }),
    }
}

/// What the input reader sends.
pub(super) enum Event {
    /// The next input line: its number and its bytes, without the line end.
    Line(usize, Vec<u8>),
    /// The input ended.
    Eof,
    /// Reading line `usize` of the input failed.
    ReadFailed(usize, io::Error),
}

/// The most lines the reader sends at once.
const BATCH: usize = 256;

/// Reads the input on a thread of its own, line by line as bytes, and sends the lines
/// in batches: a line as soon as it is read, with the lines after it that are already
/// buffered (no waiting for more input). At most `capacity` batches are ahead of the
/// main loop.
pub(super) fn read_lines(input: File, capacity: usize) -> Receiver<Vec<Event>> {
    let (tx, rx) = bounded(capacity);
    let reader = move || {
        let mut reader = BufReader::with_capacity(64 << 10, input);
        let mut number = 0;
        loop {
            let mut batch = Vec::new();
            let mut last = false;
            while !last
                && (batch.is_empty() || (batch.len() < BATCH && reader.buffer().contains(&b'\n')))
            {
                let mut line = Vec::new();
                let event = match reader.read_until(b'\n', &mut line) {
                    Ok(0) => Event::Eof,
                    Ok(_) => {
                        number += 1;
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        Event::Line(number, line)
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => Event::ReadFailed(number + 1, err),
                };
                last = !matches!(event, Event::Line(..));
                batch.push(event);
            }
            if tx.send(batch).is_err() || last {
                break;
            }
        }
    };
    if let Err(err) = std::thread::Builder::new()
        .name("subinterp-map-input".into())
        .spawn(reader)
    {
        let (tx, rx) = bounded(1);
        let _ = tx.send(vec![Event::ReadFailed(1, err)]);
        return rx;
    }
    rx
}
