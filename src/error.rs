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
}
