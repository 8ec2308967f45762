//! Where the results go, and writing them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::progress::Progress;
use crate::stdio;

/// Where the results go.
pub(super) enum Destination {
    /// The command's own copy of stdout, taken at start.
    Stdout(File),
    /// A file, created (or truncated) once set-up succeeded.
    Path(PathBuf),
}

impl Destination {
    /// Takes the command's own copy of stdout when there is no output `file`. Either
    /// way, what Python writes to stdout goes to stderr from then on. Errs with what to
    /// tell the user.
    pub(super) fn take(file: Option<&Path>) -> Result<Destination, String> {
        match file {
            None => stdio::take_stdout()
                .map(Destination::Stdout)
                .map_err(|err| format!("cannot use standard output: {err}")),
            Some(file) => stdio::stdout_to_stderr()
                .map(|()| Destination::Path(file.to_owned()))
                .map_err(|err| format!("cannot redirect standard output: {err}")),
        }
    }

    /// The output, a file created (or truncated) now. Errs with what to tell the user.
    pub(super) fn open(self) -> Result<File, String> {
        match self {
            Destination::Stdout(file) => Ok(file),
            Destination::Path(path) => {
                File::create(&path).map_err(|err| format!("cannot write {}: {err}", path.display()))
            }
        }
    }

    /// Refuses an output that is the `input` file itself (compared by device and inode,
    /// so through symbolic and hard links too): writing would destroy the input.
    pub(super) fn same_file(&self, input: &File) -> Option<String> {
        let input = input.metadata().ok()?;
        if !input.is_file() {
            return None;
        }
        let (output, name) = match self {
            Destination::Stdout(file) => (file.metadata().ok()?, "standard output".to_owned()),
            Destination::Path(path) => (std::fs::metadata(path).ok()?, path.display().to_string()),
        };
        (input.dev() == output.dev() && input.ino() == output.ino()).then(|| {
            format!("the output ({name}) is the input file: writing it would destroy the input")
        })
    }
}

/// The output and what was written to it.
pub(super) struct Sink {
    out: BufWriter<File>,
    pub(super) progress: Progress,
}

impl Sink {
    pub(super) fn new(output: File, progress: Progress) -> Self {
        Sink {
            out: BufWriter::new(output),
            progress,
        }
    }

    /// Writes one output line, and counts it.
    pub(super) fn write(&mut self, text: &str, ok: bool) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.progress.record(ok);
        Ok(())
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
