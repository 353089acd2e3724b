//! Plans on disk (docs/plan-format.md), the types being `crate::plan`'s:
//! - streamed: `<stem>-header.json` (the run's configuration, [`PlanHeader`], and the list of
//!   the batches' files) and `<stem>.jsonl`, then `<stem>-00001.jsonl`, `<stem>-00002.jsonl`, ...
//!   (one batch per line, written as batches are planned: [`PlanWriter`], a new file when one
//!   would pass [`PART_BYTES`]; read one batch at a time: [`PlanStream`]), so that neither the
//!   planner nor a reader holds a long trace's plan, and no file grows with the trace;
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
/// The batches' files: `plan` -> `plan.jsonl`, `plan-00001.jsonl`, ...
pub const LINES_EXTENSION: &str = "jsonl";
/// A streamed plan's batches file takes batches while it stays within this many bytes (a batch
/// longer than that alone gets a file of its own): long traces' plans come in files that a
/// tool copies, uploads or opens whole (the 10-million-document trace's plan is 1.7 GB).
pub const PART_BYTES: u64 = 128 << 20;
/// Digits of a further part's number: `plan-00001.jsonl`.
const PART_DIGITS: usize = 5;

const READ_HINT: &str = "pass the plan.json, plan.jsonl or plan-header.json that `hsap-tune --out DIR` wrote (docs/plan-format.md)";

/// The header and the batches' file of a streamed plan named `stem` in `dir`.
pub fn streamed_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}{HEADER_SUFFIX}")),
        dir.join(format!("{stem}.{LINES_EXTENSION}")),
    )
}

/// The file name of the batches' file number `part` (0-based) of the plan `stem`.
pub fn part_name(stem: &str, part: usize) -> String {
    match part {
        0 => format!("{stem}.{LINES_EXTENSION}"),
        k => format!("{stem}-{k:0PART_DIGITS$}.{LINES_EXTENSION}"),
    }
}

/// Whether `name` is a further batches' file (`<stem>-00001.jsonl`, ...) of the plan `stem`.
pub fn is_further_part(name: &str, stem: &str) -> bool {
    further_part_stem(name) == Some(stem)
}

/// The stem of a further part's name (`plan-00001.jsonl` -> `plan`).
fn further_part_stem(name: &str) -> Option<&str> {
    let (stem, number) = name
        .strip_suffix(&format!(".{LINES_EXTENSION}"))?
        .rsplit_once('-')?;
    (number.len() == PART_DIGITS && number.bytes().all(|b| b.is_ascii_digit()) && number != "00000")
        .then_some(stem)
}

/// Whether `path` names a streamed plan (one of its `.jsonl` files or its header).
pub fn is_streamed(path: &Path) -> bool {
    streamed_pair(path).is_some()
}

/// The header and first batches' file of the streamed plan `path` names (its header or any of
/// its batches' files), or None when `path` is a whole plan.
fn streamed_pair(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent().unwrap_or(Path::new(""));
    if let Some(stem) = name.strip_suffix(HEADER_SUFFIX) {
        return Some(streamed_paths(dir, stem));
    }
    if let Some(stem) = further_part_stem(name) {
        return Some(streamed_paths(dir, stem));
    }
    let stem = name.strip_suffix(&format!(".{LINES_EXTENSION}"))?;
    Some(streamed_paths(dir, stem))
}

/// `<stem>-header.json` as written: the header's fields and the batches' files in order
/// (absent in plans written before plans came in parts: then `<stem>.jsonl` alone).
#[derive(serde::Serialize, serde::Deserialize)]
struct HeaderFile {
    #[serde(flatten)]
    header: PlanHeader,
    #[serde(default)]
    parts: Vec<String>,
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
            format!(
                "the plan has no batch {k} (it has {} batches)",
                header.batches
            ),
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
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::internal(format!("cannot encode the plan: {e}")))?;
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

/// Writes a streamed plan: each batch one line of `<stem>.jsonl` as it comes, in a new file
/// (`<stem>-00001.jsonl`, ...) when the current one would pass its byte budget, the header when
/// the plan is finished (it counts the batches and lists the files). Every file is written under
/// a temporary name and renamed by [`PlanWriter::finish`], so an interrupted run leaves no plan
/// that looks whole.
pub struct PlanWriter {
    header: PlanHeader,
    dir: PathBuf,
    stem: String,
    header_path: PathBuf,
    /// The batches' files so far (the last one open, under the temporary name `tmp`).
    parts: Vec<String>,
    tmp: PathBuf,
    file: BufWriter<File>,
    /// Bytes in the open file, and the most one file takes.
    part_written: u64,
    part_bytes: u64,
    line: Vec<u8>,
    /// The batches written, kept when the caller wants the plan whole as well.
    kept: Option<Vec<BatchPlan>>,
}

fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

impl PlanWriter {
    /// Starts the plan `stem` in `dir` with `header`'s configuration (its batch count is the
    /// batches written), in files of at most [`PART_BYTES`]. With `keep`, the batches are kept
    /// for [`PlanWriter::finish`] to return.
    pub fn create(
        dir: &Path,
        stem: &str,
        mut header: PlanHeader,
        keep: bool,
    ) -> Result<PlanWriter> {
        header.batches = 0;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (header_path, _) = streamed_paths(dir, stem);
        let first = part_name(stem, 0);
        let tmp = tmp_path(dir, &first);
        let file = open_part(&tmp)?;
        Ok(PlanWriter {
            header,
            dir: dir.to_path_buf(),
            stem: stem.to_string(),
            header_path,
            parts: vec![first],
            tmp,
            file,
            part_written: 0,
            part_bytes: PART_BYTES,
            line: Vec::new(),
            kept: keep.then(Vec::new),
        })
    }

    /// The same writer with files of at most `bytes` each (at least one batch per file).
    pub fn with_part_bytes(mut self, bytes: u64) -> PlanWriter {
        self.part_bytes = bytes;
        self
    }

    /// Appends one batch as one line.
    pub fn write(&mut self, batch: &BatchPlan) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, batch).map_err(|e| {
            Error::internal(format!(
                "cannot encode the plan's batch {}: {e}",
                batch.index
            ))
        })?;
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.part_written > 0 && self.part_written + len > self.part_bytes {
            self.next_part()?;
        }
        self.file
            .write_all(&self.line)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.part_written += len;
        self.header.batches += 1;
        if let Some(kept) = &mut self.kept {
            kept.push(batch.clone());
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.tmp, e))
    }

    fn next_part(&mut self) -> Result<()> {
        self.close_part()?;
        let name = part_name(&self.stem, self.parts.len());
        self.tmp = tmp_path(&self.dir, &name);
        self.file = open_part(&self.tmp)?;
        self.parts.push(name);
        self.part_written = 0;
        Ok(())
    }

    /// Closes the batches' files and writes the header; returns the whole plan when the batches
    /// were kept.
    pub fn finish(mut self) -> Result<Option<Plan>> {
        self.close_part()?;
        for name in &self.parts {
            let path = self.dir.join(name);
            std::fs::rename(tmp_path(&self.dir, name), &path).map_err(|e| Error::io(&path, e))?;
        }
        let file = HeaderFile {
            header: self.header,
            parts: self.parts,
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::internal(format!("cannot encode the plan's header: {e}")))?;
        crate::output::write_atomic(&self.header_path, &json)?;
        Ok(self
            .kept
            .take()
            .map(|batches| Plan::from_parts(file.header, batches)))
    }
}

fn open_part(tmp: &Path) -> Result<BufWriter<File>> {
    let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    Ok(BufWriter::new(file))
}

/// Reads a streamed plan one batch at a time, file after file, checking each batch as it comes
/// (and that there are as many as the header says).
pub struct PlanStream {
    header: PlanHeader,
    dir: PathBuf,
    /// The batches' files in order, and the one being read (its path, lines and line number).
    parts: std::vec::IntoIter<String>,
    lines_path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line: usize,
    read: usize,
}

impl PlanStream {
    /// Opens the streamed plan that `path` (its header or one of its `.jsonl` files) names.
    pub fn open(path: &Path) -> Result<PlanStream> {
        let (header_path, first) = streamed_pair(path).ok_or_else(|| {
            Error::input(
                path,
                0,
                "not a streamed plan: its name ends neither in .jsonl nor in -header.json",
                READ_HINT,
            )
        })?;
        let text = std::fs::read(&header_path).map_err(|e| Error::io(&header_path, e))?;
        let file: HeaderFile =
            serde_json::from_slice(&text).map_err(|e| not_a_plan(&header_path, e))?;
        let header = file.header;
        check_version(&header_path, header.format_version)?;
        header.check(&header_path)?;
        let dir = header_path.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(bad) = file
            .parts
            .iter()
            .find(|p| Path::new(p).file_name().and_then(|n| n.to_str()) != Some(p.as_str()))
        {
            return Err(Error::input(
                &header_path,
                0,
                format!("its part {bad:?} is not a file name beside the header"),
                READ_HINT,
            ));
        }
        let mut parts = file.parts.into_iter();
        let lines_path = parts.next().map_or(first, |name| dir.join(name));
        let lines = open_lines(&lines_path)?;
        Ok(PlanStream {
            header,
            dir,
            parts,
            lines_path,
            lines,
            line: 0,
            read: 0,
        })
    }

    pub fn header(&self) -> &PlanHeader {
        &self.header
    }

    /// The next line of the plan, moving on to the next file at the end of one.
    fn next_line(&mut self) -> Option<Result<String>> {
        loop {
            if let Some(line) = self.lines.next() {
                self.line += 1;
                return Some(line.map_err(|e| Error::io(&self.lines_path, e)));
            }
            let name = self.parts.next()?;
            self.lines_path = self.dir.join(name);
            self.line = 0;
            match open_lines(&self.lines_path) {
                Ok(lines) => self.lines = lines,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn open_lines(path: &Path) -> Result<std::io::Lines<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(BufReader::new(file).lines())
}

impl Iterator for PlanStream {
    type Item = Result<BatchPlan>;

    fn next(&mut self) -> Option<Result<BatchPlan>> {
        let Some(line) = self.next_line() else {
            if self.read == self.header.batches {
                return None;
            }
            let what = format!(
                "{} batches, but its header says {}",
                self.read, self.header.batches
            );
            self.read = self.header.batches;
            return Some(Err(Error::input(
                &self.lines_path,
                self.line,
                what,
                "the plan was cut short: plan the trace again",
            )));
        };
        let text = match line {
            Ok(text) => text,
            Err(e) => {
                self.read = self.header.batches;
                return Some(Err(e));
            }
        };
        let batch: BatchPlan = match serde_json::from_str(&text) {
            Ok(b) => b,
            Err(e) => {
                return Some(Err(Error::input(
                    &self.lines_path,
                    self.line,
                    format!("not a plan's batch: {e}"),
                    READ_HINT,
                )))
            }
        };
        self.read += 1;
        Some(
            self.header
                .check_batch(&batch, &self.lines_path, self.line)
                .map(|()| batch),
        )
    }
}
