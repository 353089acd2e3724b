//! What HiGHS reported, kept exact: "infeasible" and "stopped at the time limit" are different
//! answers and are never merged.

use crate::error::Error;
use good_lp::{ResolutionError, Solution, SolutionStatus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MilpStatus {
    /// Solved to optimality.
    Optimal,
    /// Stopped at the relative gap tolerance with a feasible solution.
    GapLimit,
    /// Stopped at the time limit with a feasible solution (not proven optimal).
    TimeLimit,
    /// Stopped at the time limit before finding any feasible solution.
    TimeLimitNoSolution,
    /// Proven infeasible.
    Infeasible,
    /// Anything else HiGHS reported (unbounded, model or solve errors).
    Error(String),
}

impl MilpStatus {
    /// Classifies a good_lp/HiGHS result.
    pub fn of<S: Solution>(result: &Result<S, ResolutionError>) -> MilpStatus {
        match result {
            Ok(s) => match s.status() {
                SolutionStatus::Optimal => MilpStatus::Optimal,
                SolutionStatus::GapLimit => MilpStatus::GapLimit,
                SolutionStatus::TimeLimit => MilpStatus::TimeLimit,
            },
            Err(ResolutionError::Infeasible) => MilpStatus::Infeasible,
            // good_lp reports a limit reached without a primal solution this way.
            Err(ResolutionError::Other("NoSolutionFound")) => MilpStatus::TimeLimitNoSolution,
            Err(e) => MilpStatus::Error(e.to_string()),
        }
    }

    pub fn has_solution(&self) -> bool {
        matches!(self, MilpStatus::Optimal | MilpStatus::GapLimit | MilpStatus::TimeLimit)
    }

    pub fn name(&self) -> &str {
        match self {
            MilpStatus::Optimal => "optimal",
            MilpStatus::GapLimit => "gap_limit",
            MilpStatus::TimeLimit => "time_limit",
            MilpStatus::TimeLimitNoSolution => "time_limit_no_solution",
            MilpStatus::Infeasible => "infeasible",
            MilpStatus::Error(_) => "error",
        }
    }

    /// The error to return when a caller needed a solution and got none.
    pub fn to_error(&self, what: &str) -> Error {
        let (what, hint) = match self {
            MilpStatus::Infeasible => (
                format!("{what}: the MILP is infeasible"),
                "no plan satisfies the constraints: check memory (--max-seq, --nodes) and the model's heads",
            ),
            MilpStatus::TimeLimitNoSolution => (
                format!("{what}: the time limit was reached before any feasible solution"),
                "raise the time limit",
            ),
            MilpStatus::Error(e) => (format!("{what}: HiGHS failed: {e}"), "report this with the input that caused it"),
            _ => (format!("{what}: solved ({})", self.name()), "no action needed"),
        };
        Error::Solver { what, hint: hint.into() }
    }
}

/// One of a strategy's HiGHS solves for a batch, as the run records it: FlexSP's MILP, or hsap's
/// LP relaxation (its certificate) or integer type MILP. hsap asks both whether a plan with a
/// makespan `gap` below the best so far exists (a feasibility question), so their "infeasible"
/// is an answer about the plan, not a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Solve {
    /// The LP relaxation of hsap's type MILP rather than a MILP.
    pub relaxation: bool,
    pub status: MilpStatus,
}

impl Solve {
    pub fn milp(status: MilpStatus) -> Solve {
        Solve { relaxation: false, status }
    }

    pub fn lp(status: MilpStatus) -> Solve {
        Solve { relaxation: true, status }
    }

    /// What the solve found, for batches.csv and summary.json: for hsap's LP relaxation,
    /// `proved_within_gap` (infeasible: no plan is `gap` faster under the type model, the plan is
    /// proven within it) or `lp_room` (feasible: room the LP could not prove away); for a MILP,
    /// HiGHS's status.
    pub fn name(&self) -> String {
        match (self.relaxation, &self.status) {
            (true, MilpStatus::Infeasible) => "proved_within_gap".into(),
            (true, MilpStatus::Optimal) => "lp_room".into(),
            (true, other) => format!("lp_{}", other.name()),
            (false, other) => other.name().into(),
        }
    }
}

