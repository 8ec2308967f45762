//! Where the results go, and writing them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;

use super::progress::Progress;
use crate::stdio;
use crate::usage::UsageError;

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
    pub(super) fn check_not(&self, input: &File) -> Result<(), UsageError> {
        let same = || -> Option<String> {
            let input = input.metadata().ok()?;
            if !input.is_file() {
                return None;
            }
            let (output, name) = match self {
                Destination::Stdout(file) => (file.metadata().ok()?, "standard output".to_owned()),
                Destination::Path(path) => {
                    (std::fs::metadata(path).ok()?, path.display().to_string())
                }
            };
            (input.dev() == output.dev() && input.ino() == output.ino()).then_some(name)
        };
        match same() {
            None => Ok(()),
            Some(name) => Err(UsageError::new(
                ErrorKind::ArgumentConflict,
                format!(
                    "the output ({name}) is the input file: writing it would destroy the input"
                ),
            )),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that is the input (itself, through a hard link, through a symbolic
    /// link) is refused as an argument conflict; another file is not.
    #[test]
    fn an_output_that_is_the_input_is_an_argument_conflict() {
        let dir = std::env::temp_dir().join(format!("subinterp-cli-same-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let input_path = dir.join("in.jsonl");
        std::fs::write(&input_path, "1\n").unwrap();
        std::fs::hard_link(&input_path, dir.join("hard.jsonl")).unwrap();
        std::os::unix::fs::symlink(&input_path, dir.join("soft.jsonl")).unwrap();
        std::fs::write(dir.join("other.jsonl"), "").unwrap();
        let input = File::open(&input_path).unwrap();
        for name in ["in.jsonl", "hard.jsonl", "soft.jsonl"] {
            let err = Destination::Path(dir.join(name))
                .check_not(&input)
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::ArgumentConflict, "{name}");
            assert!(
                err.message.contains("is the input file"),
                "{name}: {}",
                err.message
            );
        }
        let stdout = Destination::Stdout(File::options().append(true).open(&input_path).unwrap());
        assert_eq!(
            stdout.check_not(&input).unwrap_err().kind,
            ErrorKind::ArgumentConflict
        );
        assert!(Destination::Path(dir.join("other.jsonl"))
            .check_not(&input)
            .is_ok());
        assert!(Destination::Path(dir.join("new.jsonl"))
            .check_not(&input)
            .is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
