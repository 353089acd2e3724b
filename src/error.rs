//! The library's error type. Every variant says what was wrong, where, and what to do about it,
//! so the binary can print it as is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The exit code of an internal fault (EX_SOFTWARE).
pub const EXIT_INTERNAL: i32 = 70;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{}: {source}\n  hint: {hint}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },

    /// A value in an input file is malformed. `line` is 1-based; 0 means "the file as a whole".
    #[error("{}{}: {what}\n  hint: {hint}", path.display(), line_suffix(*line))]
    Input {
        path: PathBuf,
        line: usize,
        what: String,
        hint: String,
    },

    /// A name (model, cluster, scheme...) that is not among the known ones.
    #[error("unknown {kind} '{name}'; known: {}\n  hint: {hint}", known.join(", "))]
    Unknown {
        kind: &'static str,
        name: String,
        known: Vec<String>,
        hint: String,
    },

    /// A request that is well-formed but cannot be honoured (inconsistent options, impossible shapes).
    #[error("{what}\n  hint: {hint}")]
    Invalid { what: String, hint: String },

    /// The MILP solver reported something other than a usable solution.
    #[error("solver: {what}\n  hint: {hint}")]
    Solver { what: String, hint: String },

    /// A GPU-side failure: missing driver, CUDA or NCCL error.
    #[error("gpu: {what}\n  hint: {hint}")]
    Gpu { what: String, hint: String },

    /// Something hsap itself got wrong (a value it made that it cannot encode, an invariant of
    /// its own broken): never the user's input.
    #[error("internal error: {what}\n  hint: this is a bug in hsap; please report it with the command line and its input files")]
    Internal { what: String },
}

fn line_suffix(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let hint = match source.kind() {
            std::io::ErrorKind::NotFound => "check the path; relative paths are taken from the current directory",
            std::io::ErrorKind::PermissionDenied => "check the file's permissions",
            _ => "check that the file is readable and the disk is healthy",
        };
        Error::Io {
            path: path.into(),
            source,
            hint,
        }
    }

    pub fn input(
        path: impl Into<PathBuf>,
        line: usize,
        what: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Input {
            path: path.into(),
            line,
            what: what.into(),
            hint: hint.into(),
        }
    }

    pub fn invalid(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// A fault of hsap's own: see [`Error::Internal`].
    pub fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }

    /// The process exit code the binary uses for this error: 2 for bad input or usage,
    /// 3 for solver failures, 4 for GPU/driver problems, 70 for hsap's own bugs (EX_SOFTWARE
    /// of sysexits.h).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } | Error::Input { .. } | Error::Unknown { .. } | Error::Invalid { .. } => 2,
            Error::Solver { .. } => 3,
            Error::Gpu { .. } => 4,
            Error::Internal { .. } => EXIT_INTERNAL,
        }
    }
}

/// 1-based line numbers of CSV records, counted from their byte offsets: the csv crate's own
/// `Position::line` counts one line short per CRLF line ending and skips blank lines. Line
/// endings are the reader's (`\n`, `\r\n` or a lone `\r`). A record's offset can point at the
/// line ending before it, so the count stops at its first byte that is not a line ending.
/// Records come in order, so each count resumes where the last stopped (an earlier offset
/// restarts it).
pub struct CsvLines<'a> {
    bytes: &'a [u8],
    byte: usize,
    line: usize,
}

impl<'a> CsvLines<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, byte: 0, line: 1 }
    }

    /// The line of the record at `position` (0 when the reader gave none).
    pub fn of(&mut self, position: Option<&csv::Position>) -> usize {
        let Some(position) = position else { return 0 };
        let mut start = usize::try_from(position.byte()).map_or(self.bytes.len(), |b| b.min(self.bytes.len()));
        while start < self.bytes.len() && matches!(self.bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.byte {
            (self.byte, self.line) = (0, 1);
        }
        let between = &self.bytes[self.byte..start];
        let lone_returns = between.windows(2).filter(|w| w[0] == b'\r' && w[1] != b'\n').count()
            + usize::from(between.last() == Some(&b'\r'));
        self.line += between.iter().filter(|&&b| b == b'\n').count() + lone_returns;
        self.byte = start;
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_faults_say_they_are_bugs_and_exit_apart_from_bad_input() {
        let e = Error::internal("cannot encode the plan");
        assert_eq!(e.exit_code(), EXIT_INTERNAL);
        assert_ne!(e.exit_code(), Error::invalid("x", "y").exit_code());
        assert!(e.to_string().contains("this is a bug"), "{e}");
    }

    #[test]
    fn csv_records_are_located_on_their_lines_whatever_the_line_endings() {
        for text in ["a,b\n1,2\n\n3,4\nx,y\n", "a,b\r\n1,2\r\n\r\n3,4\r\nx,y\r\n", "a,b\r1,2\r\r3,4\rx,y"] {
            let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
            let mut lines = CsvLines::new(text.as_bytes());
            let found: Vec<(String, usize)> =
                reader.records().map(|r| r.unwrap()).map(|r| (r[0].to_string(), lines.of(r.position()))).collect();
            let expected: Vec<(String, usize)> = [("1", 2), ("3", 4), ("x", 5)].map(|(f, l)| (f.to_string(), l)).to_vec();
            assert_eq!(found, expected, "{text:?}");
        }
    }
}
