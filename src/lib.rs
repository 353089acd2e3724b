//! hsap: a simulator and autotuner for hierarchical, sequence-aware parallelism in long-context
//! LLM training. See ARCHITECTURE.md for the code map.

pub mod calibrate;
pub mod cli;
pub mod cluster;
pub mod cost;
pub mod error;
pub mod formats;
pub mod gpu;
pub mod model;
pub mod output;
pub mod plan;
pub mod planner;
pub mod progress;
pub mod report;
pub mod recommend;
pub mod reference;
pub mod scheme;
pub mod sim;
pub mod stats;
pub mod solver;
pub mod stack;
pub mod trace;
pub mod tune;
pub mod units;
pub mod workload;

mod toml_input;

/// Presets embedded from `models/` by build.rs.
mod presets {
    include!(concat!(env!("OUT_DIR"), "/presets.rs"));
}

pub use error::{Error, Result};
