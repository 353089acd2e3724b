//! The command line: flags are defined once here (clap derive), and each command is a library
//! function that writes to a `Write`, so tests can call it without the binary.

mod args;
mod inspect;
mod predict;
mod tune;

pub use args::{Cli, Command, ClusterArgs, ModelArgs, TraceArgs};
pub use inspect::{inspect, InspectArgs};
pub use predict::{predict, PredictArgs, ReferenceTable};
pub use tune::{tune, Summary, TuneArgs, DEFAULT_FLEXSP_TIME_LIMIT_S, DEFAULT_MAX_SEQ};

use crate::error::Result;
use std::io::Write;

/// Runs a parsed command line, writing results to `out` and warnings to `err`.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match cli.command {
        Some(Command::Inspect(args)) => inspect(&args, out, err),
        Some(Command::Predict(args)) => predict(&args, out, err),
        Some(Command::Tune(args)) => tune(&args, out, err),
        // No subcommand: plan, which is what the tool is for.
        None => tune(&cli.tune, out, err),
    }
}

/// Formats an integer with thousands separators (1000000 -> "1,000,000").
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes to a Write, turning io errors on stdout into crate errors.
pub(crate) fn io_out(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::io("<stdout>", e)
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1_000_000), "1,000,000");
    }
}
