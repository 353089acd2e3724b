//! The command line: flags are defined once here (clap derive), and each command is a library
//! function that writes to a `Write`, so tests can call it without the binary.

mod args;
mod calibrate;
mod inspect;
mod report;
mod simulate;
mod predict;
mod tune;
mod validate;

pub use args::{Cli, Command, ClusterArgs, ModelArgs, TraceArgs};
pub use calibrate::{calibrate, CalibrateArgs};
pub use inspect::{inspect, InspectArgs};
pub use report::{report, ReportArgs};
pub use simulate::{simulate, SimulateArgs};
pub use predict::{predict, PredictArgs, ReferenceTable};
pub use tune::{tune, TuneArgs, DEFAULT_FLEXSP_TIME_LIMIT_S, DEFAULT_MAX_SEQ, DEFAULT_OUT};
pub use validate::{validate, ValidateArgs};

use crate::error::Result;
use std::io::Write;

/// Runs a parsed command line, writing results to `out` and warnings to `err`.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match cli.command {
        Some(Command::Inspect(args)) => inspect(&args, out, err),
        Some(Command::Calibrate(args)) => calibrate(&args, out, err),
        Some(Command::Report(args)) => report(&args, out, err),
        Some(Command::Simulate(args)) => simulate(&args, out, err),
        Some(Command::Predict(args)) => predict(&args, out, err),
        Some(Command::Validate(args)) => validate(&args, out, err),
        Some(Command::Tune(args)) => tune(&args, out, err),
        // No subcommand: plan, which is what the tool is for.
        None => tune(&cli.tune, out, err),
    }
}

pub(crate) use crate::output::io_out;
pub use crate::units::thousands;
