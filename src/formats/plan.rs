//! `plan.json` (docs/plan-format.md): reading and writing the plan types of `crate::plan`.

use crate::error::{Error, Result};
use crate::plan::{Plan, PLAN_FORMAT_VERSION};
use std::path::Path;

impl Plan {
    /// Reads a plan.json, checking its format version and everything [`Plan::check`] checks.
    pub fn read(path: &Path) -> Result<Plan> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Plan::parse(path, &text)
    }

    /// [`Plan::read`] on the bytes of a file; `path` only names it in errors.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Plan> {
        let plan: Plan = serde_json::from_slice(text).map_err(|e| {
            Error::input(
                path,
                e.line(),
                format!("not a plan: {e}"),
                "pass the plan.json that `hsap-tune --out DIR` wrote (docs/plan-format.md)",
            )
        })?;
        if plan.format_version != PLAN_FORMAT_VERSION {
            return Err(Error::input(
                path,
                0,
                format!("plan format version {} is not {PLAN_FORMAT_VERSION}", plan.format_version),
                "re-run the planner with this version of hsap-tune",
            ));
        }
        plan.check(path)?;
        Ok(plan)
    }

    /// Writes the plan as compact JSON (a long trace's plan holds every rank's token ranges).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| Error::internal(format!("cannot encode the plan: {e}")))?;
        crate::output::write_atomic(path, &json)
    }
}
