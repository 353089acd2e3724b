//! Plans on disk (docs/plan-format.md), the types being `crate::plan`'s:
//! - streamed: `<stem>-header.json` (the run's configuration, [`PlanHeader`]) and `<stem>.jsonl`
//!   (one batch per line, written as batches are planned: [`PlanWriter`]; read one batch at a
//!   time: [`PlanStream`]), so that neither the planner nor a reader holds a long trace's plan;
//! - whole: `plan.json`, the header's fields with every batch in `batches`, for small runs.
//!
//! Every reader checks what it reads: the header's model and cluster, and each batch as
//! [`Plan::check`] does.

use crate::error::{Error, Result};
use crate::plan::{BatchPlan, Plan, PlanHeader, PLAN_FORMAT_VERSION};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The header's name is the stem's with this ending: `plan` -> `plan-header.json`.
pub const HEADER_SUFFIX: &str = "-header.json";
/// The batches' file: `plan` -> `plan.jsonl`.
pub const LINES_EXTENSION: &str = "jsonl";

const READ_HINT: &str = "pass the plan.json, plan.jsonl or plan-header.json that `hsap-tune --out DIR` wrote (docs/plan-format.md)";

/// The header and the batches' file of a streamed plan named `stem` in `dir`.
pub fn streamed_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{stem}{HEADER_SUFFIX}")), dir.join(format!("{stem}.{LINES_EXTENSION}")))
}

/// Whether `path` names a streamed plan (its `.jsonl` or its header).
pub fn is_streamed(path: &Path) -> bool {
    streamed_pair(path).is_some()
}

/// The header and batches of the streamed plan `path` names (either file), or None when `path`
/// is a whole plan.
fn streamed_pair(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent().unwrap_or(Path::new(""));
    if let Some(stem) = name.strip_suffix(HEADER_SUFFIX) {
        return Some(streamed_paths(dir, stem));
    }
    let stem = name.strip_suffix(&format!(".{LINES_EXTENSION}"))?;
    Some(streamed_paths(dir, stem))
}

impl Plan {
    /// Reads a plan: a whole `plan.json`, or a streamed plan named by its `.jsonl` or its header,
    /// checking its format version and everything [`Plan::check`] checks.
    pub fn read(path: &Path) -> Result<Plan> {
        if streamed_pair(path).is_some() {
            let stream = PlanStream::open(path)?;
            let header = stream.header().clone();
            let batches = stream.collect::<Result<Vec<_>>>()?;
            return Ok(Plan::from_parts(header, batches));
        }
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Plan::parse(path, &text)
    }

    /// [`Plan::read`] keeping only the batch with index `k` (a streamed plan is read one line at
    /// a time, so a long plan is never held whole).
    pub fn read_batch(path: &Path, k: usize) -> Result<Plan> {
        if streamed_pair(path).is_none() {
            let mut plan = Plan::read(path)?;
            let batch = plan.batch(k)?.clone();
            plan.batches = vec![batch];
            return Ok(plan);
        }
        let mut stream = PlanStream::open(path)?;
        let header = stream.header().clone();
        let mut last = None;
        for batch in stream.by_ref() {
            let batch = batch?;
            if batch.index == k {
                return Ok(Plan::from_parts(header, vec![batch]));
            }
            last = Some(batch.index);
        }
        Err(Error::invalid(
            format!("the plan has no batch {k} (it has {} batches)", header.batches),
            format!("choose --batch between 0 and {}", last.unwrap_or(0)),
        ))
    }

    /// [`Plan::read`] on the bytes of a whole plan; `path` only names it in errors.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Plan> {
        let plan: Plan = serde_json::from_slice(text).map_err(|e| not_a_plan(path, e))?;
        check_version(path, plan.format_version)?;
        plan.check(path)?;
        Ok(plan)
    }

    /// Writes the plan whole, as compact JSON (for small runs: every rank's token ranges of every
    /// batch are in it).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| Error::internal(format!("cannot encode the plan: {e}")))?;
        crate::output::write_atomic(path, &json)
    }
}

fn not_a_plan(path: &Path, e: serde_json::Error) -> Error {
    Error::input(path, e.line(), format!("not a plan: {e}"), READ_HINT)
}

fn check_version(path: &Path, version: u32) -> Result<()> {
    if version == PLAN_FORMAT_VERSION {
        return Ok(());
    }
    Err(Error::input(
        path,
        0,
        format!("plan format version {version} is not {PLAN_FORMAT_VERSION}"),
        "re-run the planner with this version of hsap-tune",
    ))
}

/// Writes a streamed plan: each batch one line of `<stem>.jsonl` as it comes, the header when
/// the plan is finished (it counts the batches). Both files are written under temporary names
/// and renamed by [`PlanWriter::finish`], so an interrupted run leaves no plan that looks whole.
pub struct PlanWriter {
    header: PlanHeader,
    header_path: PathBuf,
    lines_path: PathBuf,
    tmp: PathBuf,
    file: BufWriter<File>,
    /// The batches written, kept when the caller wants the plan whole as well.
    kept: Option<Vec<BatchPlan>>,
}

impl PlanWriter {
    /// Starts the plan `stem` in `dir` with `header`'s configuration (its batch count is set at
    /// the end). With `keep`, the batches are kept for [`PlanWriter::finish`] to return.
    pub fn create(dir: &Path, stem: &str, header: PlanHeader, keep: bool) -> Result<PlanWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (header_path, lines_path) = streamed_paths(dir, stem);
        let tmp = lines_path.with_extension(format!("{LINES_EXTENSION}.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(PlanWriter { header, header_path, lines_path, tmp, file: BufWriter::new(file), kept: keep.then(Vec::new) })
    }

    /// Appends one batch as one line.
    pub fn write(&mut self, batch: &BatchPlan) -> Result<()> {
        serde_json::to_writer(&mut self.file, batch).map_err(|e| Error::internal(format!("cannot encode the plan's batch {}: {e}", batch.index)))?;
        self.file.write_all(b"\n").map_err(|e| Error::io(&self.tmp, e))?;
        self.header.batches += 1;
        if let Some(kept) = &mut self.kept {
            kept.push(batch.clone());
        }
        Ok(())
    }

    /// Closes the batches' file and writes the header; returns the whole plan when the batches
    /// were kept.
    pub fn finish(mut self) -> Result<Option<Plan>> {
        self.file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.lines_path).map_err(|e| Error::io(&self.lines_path, e))?;
        let json = serde_json::to_vec_pretty(&self.header).map_err(|e| Error::internal(format!("cannot encode the plan's header: {e}")))?;
        crate::output::write_atomic(&self.header_path, &json)?;
        Ok(self.kept.take().map(|batches| Plan::from_parts(self.header, batches)))
    }
}

/// Reads a streamed plan one batch at a time, checking each as it comes (and that there are as
/// many as the header says).
pub struct PlanStream {
    header: PlanHeader,
    lines_path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line: usize,
    read: usize,
}

impl PlanStream {
    /// Opens the streamed plan that `path` (its `.jsonl` or its header) names.
    pub fn open(path: &Path) -> Result<PlanStream> {
        let (header_path, lines_path) = streamed_pair(path).ok_or_else(|| {
            Error::input(path, 0, "not a streamed plan: its name ends neither in .jsonl nor in -header.json", READ_HINT)
        })?;
        let text = std::fs::read(&header_path).map_err(|e| Error::io(&header_path, e))?;
        let header: PlanHeader = serde_json::from_slice(&text).map_err(|e| not_a_plan(&header_path, e))?;
        check_version(&header_path, header.format_version)?;
        header.check(&header_path)?;
        let file = File::open(&lines_path).map_err(|e| Error::io(&lines_path, e))?;
        Ok(PlanStream { header, lines_path, lines: BufReader::new(file).lines(), line: 0, read: 0 })
    }

    pub fn header(&self) -> &PlanHeader {
        &self.header
    }
}

impl Iterator for PlanStream {
    type Item = Result<BatchPlan>;

    fn next(&mut self) -> Option<Result<BatchPlan>> {
        let Some(line) = self.lines.next() else {
            if self.read == self.header.batches {
                return None;
            }
            let what = format!("{} batches, but its header says {}", self.read, self.header.batches);
            self.read = self.header.batches;
            return Some(Err(Error::input(&self.lines_path, self.line, what, "the plan was cut short: plan the trace again")));
        };
        self.line += 1;
        let text = match line {
            Ok(text) => text,
            Err(e) => return Some(Err(Error::io(&self.lines_path, e))),
        };
        let batch: BatchPlan = match serde_json::from_str(&text) {
            Ok(b) => b,
            Err(e) => return Some(Err(Error::input(&self.lines_path, self.line, format!("not a plan's batch: {e}"), READ_HINT))),
        };
        self.read += 1;
        Some(self.header.check_batch(&batch, &self.lines_path, self.line).map(|()| batch))
    }
}
