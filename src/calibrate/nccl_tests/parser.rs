//! The line-by-line reader of nccl-tests logs: strips what launchers and renderers add around
//! each line, splits the file into runs, and reads headers, devices, command lines, tables and
//! footers. What the lines leave open is worked out afterwards by `infer`.

use super::infer::infer;
use super::log::*;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A number as printed, with half its last digit (the rounding it carries).
fn parse_reading(token: &str) -> Option<(f64, f64)> {
    let value: f64 = token.parse().ok().filter(|v: &f64| v.is_finite())?;
    let (mantissa, exponent) = match token.find(['e', 'E']) {
        Some(i) => (&token[..i], token[i + 1..].parse::<i32>().ok()?),
        None => (token, 0),
    };
    let decimals = mantissa.find('.').map_or(0, |dot| mantissa.len() - dot - 1) as i32;
    Some((value, 0.5 * 10f64.powi(exponent - decimals)))
}

/// Parses the text of an nccl-tests log; `path` only names it in errors.
pub(super) fn parse(path: &Path, text: &str) -> Result<NcclLog> {
    let mut parser = Parser::new(path);
    for (i, raw) in text.lines().enumerate() {
        parser.line(i + 1, raw)?;
    }
    parser.finish()
}

const LOG_HINT: &str = "pass the standard output of an nccl-tests binary (all_reduce_perf, all_gather_perf, ...)";

struct Parser {
    path: PathBuf,
    runs: Vec<NcclRun>,
    cur: NcclRun,
    /// Inside a result table: a line starting with a number must be a row.
    in_table: bool,
    /// The current run has ended (`Collective test concluded`); the next line starts a new one.
    concluded: bool,
    /// A row that did not parse: an error if the table goes on, a cut-off last row if not.
    pending: Option<(usize, Error)>,
}

impl Parser {
    fn new(path: &Path) -> Self {
        Parser {
            path: path.to_path_buf(),
            runs: Vec::new(),
            cur: NcclRun::new(1),
            in_table: false,
            concluded: false,
            pending: None,
        }
    }

    /// The table went on after a row that did not parse: that row is garbled.
    fn raise_pending(&mut self) -> Result<()> {
        match self.pending.take() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// The run ended after a row that did not parse: it was the last row, cut off.
    fn settle_pending(&mut self) {
        if let Some((line, _)) = self.pending.take() {
            self.cur.cut_row = Some(line);
        }
    }

    fn err(&self, line: usize, what: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::input(&self.path, line, what, hint)
    }

    /// Whether the current run has begun (anything beyond a version line or a command line).
    fn cur_started(&self) -> bool {
        self.cur.program.is_some() || self.cur.header.is_some() || !self.cur.devices.is_empty() || !self.cur.rows.is_empty()
    }

    fn new_run(&mut self) {
        self.settle_pending();
        let done = std::mem::replace(&mut self.cur, NcclRun::new(self.runs.len() + 2));
        self.runs.push(done);
        self.in_table = false;
        self.concluded = false;
    }

    fn begin_run_if(&mut self, start: bool) {
        if start || self.concluded {
            self.new_run();
        }
    }

    fn line(&mut self, n: usize, raw: &str) -> Result<()> {
        let content = strip_prefixes(raw);
        if content.is_empty() {
            return Ok(());
        }
        if content.contains("NCCL INFO") || content.contains("NCCL WARN") || content.contains("NCCL TRACE") {
            self.nccl_info(content);
            return Ok(());
        }
        if let Some(v) = content.strip_prefix("NCCL version") {
            self.cur.nccl_info.version = Some(v.trim().to_string());
            return Ok(());
        }
        if let Some(v) = content.strip_prefix("nccl-tests version") {
            let started = self.cur_started() || self.cur.nccl_tests_version.is_some();
            self.begin_run_if(started);
            self.cur.nccl_tests_version = Some(v.trim().to_string());
            return self.touch(n);
        }
        if let Some(program) = content.strip_prefix("Collective test starting:") {
            let started = self.cur_started();
            self.begin_run_if(started);
            let program = program.trim();
            let op = NcclOp::from_binary(program)
                .ok_or_else(|| self.err(n, format!("unknown nccl-tests program '{program}'"), LOG_HINT))?;
            self.cur.program = Some(Fact::new(op, format!("`Collective test starting: {program}` (line {n})")));
            return self.touch(n);
        }
        if content.starts_with("Collective test concluded") {
            self.touch(n)?;
            self.concluded = true;
            self.in_table = false;
            return Ok(());
        }
        if content.starts_with("nThread ") {
            let started = self.cur.header.is_some() || !self.cur.devices.is_empty() || !self.cur.rows.is_empty();
            self.begin_run_if(started);
            self.cur.header = Some(self.run_header(n, content)?);
            return self.touch(n);
        }
        if content.starts_with("Using devices") {
            return Ok(());
        }
        if content.starts_with("Rank ") && content.contains(" on ") {
            let device = self.device(n, content)?;
            if !self.cur.rows.is_empty() {
                self.new_run();
            }
            self.cur.devices.push(device);
            return self.touch(n);
        }
        if content == "..." {
            if !self.cur.devices.is_empty() {
                self.cur.devices_cut = true;
            }
            return Ok(());
        }
        let tokens: Vec<&str> = content.split_whitespace().collect();
        if tokens.first() == Some(&"size") && tokens.contains(&"count") && tokens.contains(&"busbw") {
            let started = !self.cur.rows.is_empty() || self.cur.columns.is_some();
            self.begin_run_if(started);
            self.cur.columns = Some(self.columns(n, &tokens)?);
            self.in_table = true;
            return self.touch(n);
        }
        if content.starts_with("(B)") || content.contains("out-of-place") {
            return Ok(());
        }
        if content.starts_with("Out of bounds values") || content.starts_with("Avg bus bandwidth") {
            self.raise_pending()?;
        }
        if let Some(rest) = content.strip_prefix("Out of bounds values") {
            let value = rest.trim_start_matches([' ', ':']).split_whitespace().next().and_then(|v| v.parse().ok());
            self.cur.footer = Some(Footer {
                line: n,
                out_of_bounds: value,
                avg_busbw_gb_per_s: None,
            });
            self.in_table = false;
            return self.touch(n);
        }
        if let Some(rest) = content.strip_prefix("Avg bus bandwidth") {
            let value = rest.trim_start_matches([' ', ':']).split_whitespace().next().and_then(|v| v.parse().ok());
            let footer = self.cur.footer.get_or_insert(Footer {
                line: n,
                out_of_bounds: None,
                avg_busbw_gb_per_s: None,
            });
            footer.avg_busbw_gb_per_s = value;
            self.in_table = false;
            return self.touch(n);
        }
        if tokens.first().is_some_and(|t| t.parse::<u64>().is_ok()) {
            return self.row_line(n, &tokens);
        }
        if let Some(command) = command_line(n, content, &tokens) {
            let started = !self.cur.rows.is_empty() || self.cur.command.is_some();
            self.begin_run_if(started);
            self.cur.command = Some(command);
            return self.touch(n);
        }
        Ok(())
    }

    fn touch(&mut self, n: usize) -> Result<()> {
        if self.cur.first_line == 0 {
            self.cur.first_line = n;
        }
        self.cur.last_line = n;
        Ok(())
    }

    fn nccl_info(&mut self, content: &str) {
        if self.concluded {
            self.new_run();
        }
        let info = &mut self.cur.nccl_info;
        info.lines += 1;
        let tokens: Vec<&str> = content.split_whitespace().collect();
        for pair in tokens.windows(2) {
            let value = pair[1].parse::<u32>().ok();
            match pair[0] {
                "nRanks" | "nranks" => info.ranks = info.ranks.or(value),
                "nNodes" => info.nodes = info.nodes.or(value),
                "localRanks" => info.local_ranks = info.local_ranks.or(value),
                _ => {}
            }
        }
        if let Some(i) = content.find("NCCL version ") {
            let v = content[i + "NCCL version ".len()..].split_whitespace().next().unwrap_or_default();
            info.version.get_or_insert_with(|| v.to_string());
        }
    }

    fn run_header(&self, n: usize, content: &str) -> Result<RunHeader> {
        // "nThread 1 nGpus 1 minBytes 8 maxBytes 8589934592 step: 2(factor) warmup iters: 5
        // iters: 20 agg iters: 1 validation: 1 graph: 0": words up to a value name it.
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        let mut key: Vec<&str> = Vec::new();
        for token in content.split_whitespace() {
            if token.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                fields.insert(key.join(" ").trim_end_matches(':').to_string(), token.to_string());
                key.clear();
            } else {
                key.push(token);
            }
        }
        let hint = "the header should read `nThread 1 nGpus 1 minBytes 8 maxBytes ... step: 2(factor) ...`";
        let number = |name: &str| -> Result<Option<u64>> {
            fields
                .get(name)
                .map(|v| v.parse::<u64>().map_err(|_| self.err(n, format!("run header: {name} = '{v}' is not a number"), hint)))
                .transpose()
        };
        let small = |name: &str| -> Result<Option<u32>> {
            number(name)?
                .map(|v| u32::try_from(v).map_err(|_| self.err(n, format!("run header: {name} = {v} is too large"), hint)))
                .transpose()
        };
        let required = |name: &str| -> Result<u32> {
            small(name)?.ok_or_else(|| self.err(n, format!("run header without {name}"), hint))
        };
        let step = match fields.get("step") {
            None => None,
            Some(v) => {
                let (num, kind) = v.split_once('(').unwrap_or((v, "factor)"));
                let num: u64 = num
                    .parse()
                    .map_err(|_| self.err(n, format!("run header: step '{v}' is not understood"), hint))?;
                Some(if kind.starts_with("bytes") { Step::Bytes(num) } else { Step::Factor(num) })
            }
        };
        Ok(RunHeader {
            line: n,
            n_threads: required("nThread")?,
            n_gpus: required("nGpus")?,
            min_bytes: number("minBytes")?,
            max_bytes: number("maxBytes")?,
            step,
            warmup_iters: small("warmup iters")?,
            iters: small("iters")?,
            agg_iters: small("agg iters")?,
            validation: small("validation")?,
            graph: small("graph")?,
        })
    }

    fn device(&self, n: usize, content: &str) -> Result<Device> {
        let bad = |what: &str| {
            self.err(
                n,
                format!("device line not understood ({what}): '{content}'"),
                "device lines read `Rank N Group G Pid P on HOST device D [BUS] NAME`",
            )
        };
        let tokens: Vec<&str> = content.split_whitespace().collect();
        let value_after = |key: &str| tokens.iter().position(|t| *t == key).and_then(|i| tokens.get(i + 1).copied());
        let int = |key: &str| value_after(key).and_then(|v| v.parse::<u64>().ok());
        let rank = int("Rank").and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad("rank"))?;
        let group = int("Group").and_then(|v| u32::try_from(v).ok());
        let pid = int("Pid").ok_or_else(|| bad("pid"))?;
        let host = value_after("on").ok_or_else(|| bad("host"))?.to_string();
        let device = int("device").and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad("device"))?;
        let dev_pos = tokens.iter().position(|t| *t == "device").unwrap_or(0);
        let rest = tokens.get(dev_pos + 2..).unwrap_or_default();
        let (bus_id, name) = match rest.first() {
            Some(b) if b.starts_with('[') => (b.trim_matches(['[', ']']).to_string(), rest[1..].join(" ")),
            _ => (String::new(), rest.join(" ")),
        };
        Ok(Device {
            line: n,
            rank,
            group,
            pid,
            host,
            device,
            bus_id,
            name,
        })
    }

    fn columns(&self, n: usize, tokens: &[&str]) -> Result<Columns> {
        let bad = |what: String| {
            self.err(
                n,
                format!("column header not understood: {what}"),
                "expected `size count type redop [root] time algbw busbw #wrong time algbw busbw #wrong`",
            )
        };
        if tokens.len() < 4 || tokens[1] != "count" || tokens[2] != "type" || tokens[3] != "redop" {
            return Err(bad(format!("'{}' does not start with size, count, type, redop", tokens.join(" "))));
        }
        let root = (tokens.get(4) == Some(&"root")).then_some(4);
        let mut groups = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if *t != "time" && *t != "cputime" {
                continue;
            }
            if tokens.get(i + 1) != Some(&"algbw") || tokens.get(i + 2) != Some(&"busbw") {
                return Err(bad(format!("'{t}' at column {} is not followed by algbw and busbw", i + 1)));
            }
            let check = tokens.get(i + 3).filter(|c| **c == "#wrong" || **c == "error").map(|_| i + 3);
            groups.push(GroupCols {
                time: i,
                algbw: i + 1,
                busbw: i + 2,
                check,
            });
        }
        if groups.is_empty() {
            return Err(bad("no time/algbw/busbw columns".into()));
        }
        let check = groups[0].check.map(|c| tokens[c].to_string());
        Ok(Columns {
            line: n,
            names: tokens.iter().map(|t| t.to_string()).collect(),
            has_root: root.is_some(),
            check,
            layout: Layout { root, groups },
        })
    }

    /// The column set a header-less table has, from the width of its first row: 13 columns are
    /// the current format (with `root`), 12 the old one.
    fn implied_columns(tokens: &[&str]) -> Option<Columns> {
        let (root, first_time, names) = match tokens.len() {
            13 => (Some(4), 5, "size count type redop root time algbw busbw #wrong time algbw busbw #wrong"),
            12 => (None, 4, "size count type redop time algbw busbw error time algbw busbw error"),
            _ => return None,
        };
        let group = |t: usize| GroupCols {
            time: t,
            algbw: t + 1,
            busbw: t + 2,
            check: Some(t + 3),
        };
        Some(Columns {
            line: 0,
            names: names.split(' ').map(String::from).collect(),
            has_root: root.is_some(),
            check: Some(if root.is_some() { "#wrong" } else { "error" }.into()),
            layout: Layout {
                root,
                groups: vec![group(first_time), group(first_time + 4)],
            },
        })
    }

    fn row_line(&mut self, n: usize, tokens: &[&str]) -> Result<()> {
        if self.concluded {
            self.begin_run_if(true);
        }
        if self.cur.columns.is_none() {
            // Outside any table, a line that starts with a number is only a row if it has a
            // row's shape; otherwise it is some other program's output around the log.
            let Some(columns) = Self::implied_columns(tokens) else { return Ok(()) };
            let Ok(row) = self.row(n, tokens, &columns) else { return Ok(()) };
            self.cur.columns = Some(columns);
            self.cur.rows.push(row);
            self.in_table = true;
            return self.touch(n);
        }
        if !self.in_table {
            // A number after the footer: a new table without a header, or unrelated output.
            let Some(columns) = Self::implied_columns(tokens) else { return Ok(()) };
            let Ok(row) = self.row(n, tokens, &columns) else { return Ok(()) };
            self.new_run();
            self.cur.columns = Some(columns);
            self.cur.rows.push(row);
            self.in_table = true;
            return self.touch(n);
        }
        let Some(columns) = self.cur.columns.clone() else { return Ok(()) };
        match self.row(n, tokens, &columns) {
            Ok(row) => {
                self.raise_pending()?;
                self.cur.rows.push(row);
                self.touch(n)
            }
            Err(e) => {
                self.raise_pending()?;
                self.pending = Some((n, e));
                Ok(())
            }
        }
    }

    fn row(&self, n: usize, tokens: &[&str], columns: &Columns) -> Result<Row> {
        let layout = &columns.layout;
        let expected = layout.width();
        let hint = format!(
            "rows follow the column header{}: {}",
            if columns.line > 0 { format!(" at line {}", columns.line) } else { String::new() },
            columns.names.join(" ")
        );
        let mut tokens: Vec<&str> = tokens.to_vec();
        // Old alltoall printed an empty redop: the row is one column short and a number sits
        // where the redop should be.
        if tokens.len() + 1 == expected && tokens.get(layout.redop()).is_some_and(|t| t.parse::<f64>().is_ok()) {
            tokens.insert(layout.redop(), "");
        }
        let one_group = layout.end_of_group(0);
        let groups = if tokens.len() >= expected {
            layout.groups.len()
        } else if tokens.len() == one_group {
            1
        } else {
            return Err(self.err(
                n,
                format!("garbled result row: {} columns where the table has {expected}", tokens.len()),
                hint,
            ));
        };
        let field = |i: usize, name: &str| -> Result<&str> {
            tokens
                .get(i)
                .copied()
                .ok_or_else(|| self.err(n, format!("result row without its {name} column"), hint.clone()))
        };
        let int = |i: usize, name: &str| -> Result<u64> {
            let t = field(i, name)?;
            t.parse()
                .map_err(|_| self.err(n, format!("result row: {name} '{t}' is not a whole number"), hint.clone()))
        };
        let size_bytes = int(0, "size")?;
        let count = int(1, "count")?;
        let dtype = field(2, "type")?;
        if !dtype.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(self.err(n, format!("result row: type '{dtype}' is not a type name"), hint));
        }
        let redop = field(3, "redop")?.to_string();
        let root = match layout.root {
            Some(i) => {
                let t = field(i, "root")?;
                Some(t.parse::<i64>().map_err(|_| self.err(n, format!("result row: root '{t}' is not a number"), hint.clone()))?)
            }
            None => None,
        };
        let mut timings = Vec::new();
        for cols in &layout.groups[..groups] {
            timings.push(self.timing(n, &tokens, cols, &hint)?);
        }
        let mut timings = timings.into_iter();
        Ok(Row {
            line: n,
            size_bytes,
            count,
            dtype: dtype.to_string(),
            redop,
            root,
            out_of_place: timings.next(),
            in_place: timings.next(),
        })
    }

    fn timing(&self, n: usize, tokens: &[&str], cols: &GroupCols, hint: &str) -> Result<Timing> {
        let reading = |i: usize, name: &str| -> Result<(f64, f64)> {
            let t = tokens.get(i).copied().unwrap_or_default();
            parse_reading(t)
                .filter(|(v, _)| *v >= 0.0)
                .ok_or_else(|| self.err(n, format!("result row: {name} '{t}' is not a non-negative number"), hint))
        };
        let (time_us, _) = reading(cols.time, "time")?;
        if time_us <= 0.0 {
            return Err(self.err(n, "result row: a time of 0 us cannot be a measurement", hint));
        }
        let (algbw, algbw_half_ulp) = reading(cols.algbw, "algbw")?;
        let (busbw, busbw_half_ulp) = reading(cols.busbw, "busbw")?;
        let check = match cols.check.map(|i| tokens.get(i).copied().unwrap_or_default()) {
            None | Some("N/A") => Check::NotChecked,
            Some(t) => match (t.parse::<u64>(), t.parse::<f64>()) {
                (Ok(w), _) => Check::Wrong(w),
                (_, Ok(e)) => Check::Error(e),
                _ => return Err(self.err(n, format!("result row: check column '{t}' is not a number or N/A"), hint)),
            },
        };
        Ok(Timing {
            time_us,
            algbw_gb_per_s: algbw,
            busbw_gb_per_s: busbw,
            check,
            algbw_half_ulp,
            busbw_half_ulp,
        })
    }

    fn finish(mut self) -> Result<NcclLog> {
        self.settle_pending();
        let last = std::mem::replace(&mut self.cur, NcclRun::new(0));
        self.runs.push(last);
        let mut runs = Vec::new();
        let mut tableless = Vec::new();
        for run in std::mem::take(&mut self.runs) {
            match (&run.columns, run.rows.is_empty()) {
                (_, false) => runs.push(run),
                (Some(columns), true) => {
                    return Err(self.err(
                        columns.line,
                        "the result table has a column header but no rows",
                        "the run stopped before its first size finished; rerun it, or drop this log",
                    ))
                }
                (None, true) => {
                    if run.header.is_some() || !run.devices.is_empty() {
                        tableless.push(run.first_line);
                    }
                }
            }
        }
        if runs.is_empty() {
            return Err(match tableless.first() {
                Some(line) => self.err(
                    *line,
                    "the run starting here printed no result table (did it fail? look for errors after this line)",
                    LOG_HINT,
                ),
                None => self.err(
                    0,
                    "not an nccl-tests log: found no result table (a `size count type redop ...` header or rows of sizes and timings)",
                    LOG_HINT,
                ),
            });
        }
        for (i, run) in runs.iter_mut().enumerate() {
            run.index = i + 1;
            infer(run);
        }
        if let Some(first) = runs.first_mut() {
            for line in tableless {
                first.notes.push(format!("the run starting at line {line} printed no result table and was skipped"));
            }
        }
        Ok(NcclLog { path: self.path, runs })
    }
}

/// Strips what launchers, loggers and renderers put around nccl-tests' own text, however they
/// are stacked: `[1,0]<stdout>:` (mpirun --tag-output), `0: ` (srun --label), `[3]` (rank tags),
/// `node17: ` (pdsh, clush), timestamps (`2024-05-01T12:00:00.123Z` from kubectl --timestamps,
/// `[2024-05-01 12:00:00]`, `12:00:00`), a byte-order mark, a carriage return, and the leading
/// `#` of comment lines.
fn strip_prefixes(raw: &str) -> &str {
    let mut s = raw.trim_end().trim_start_matches('\u{feff}').trim_start();
    while let Some(rest) = strip_one_prefix(s) {
        s = rest.trim_start();
    }
    s.strip_prefix('#').unwrap_or(s).trim()
}

fn strip_one_prefix(s: &str) -> Option<&str> {
    mpirun_tag(s).or_else(|| bracketed(s)).or_else(|| timestamp(s)).or_else(|| label(s))
}

/// `[1,0]<stdout>:` or `[1,0]<stderr>:`.
fn mpirun_tag(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find("]<")?;
    if !rest[..close].split(',').all(|p| p.trim().parse::<u32>().is_ok()) {
        return None;
    }
    let colon = rest[close..].find(">:")?;
    Some(&rest[close + colon + 2..])
}

/// `[3]`, `[0, 1]` or `[2024-05-01 12:00:00]` at the start, followed by a space, a colon or nothing.
fn bracketed(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find(']')?;
    let inner = rest[..close].trim();
    let ranks = !inner.is_empty() && inner.split(',').all(|p| p.trim().parse::<u32>().is_ok());
    let time = timestamp(inner).is_some_and(|after| after.trim().is_empty());
    if !(ranks || time) {
        return None;
    }
    end_of_prefix(&rest[close + 1..])
}

/// A date and time (`2024-05-01T12:00:00.123456Z`, `2024-05-01 12:00:00,123`), or a time alone.
fn timestamp(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let digits = |at: usize, n: usize| b.len() >= at + n && b[at..at + n].iter().all(u8::is_ascii_digit);
    let mut at = 0;
    if digits(0, 4) && b.get(4) == Some(&b'-') && digits(5, 2) && b.get(7) == Some(&b'-') && digits(8, 2) {
        at = 10;
        if matches!(b.get(at), Some(b'T' | b' ')) && digits(at + 1, 2) && b.get(at + 3) == Some(&b':') {
            at += 1;
        } else {
            return end_of_prefix(&s[at..]);
        }
    }
    if !(digits(at, 2) && b.get(at + 2) == Some(&b':') && digits(at + 3, 2) && b.get(at + 5) == Some(&b':') && digits(at + 6, 2)) {
        return None;
    }
    at += 8;
    if matches!(b.get(at), Some(b'.' | b',')) && digits(at + 1, 1) {
        at += 1;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
    }
    if b.get(at) == Some(&b'Z') {
        at += 1;
    } else if matches!(b.get(at), Some(b'+' | b'-')) && digits(at + 1, 2) {
        at += 3;
        at += usize::from(b.get(at) == Some(&b':'));
        if digits(at, 2) {
            at += 2;
        }
    }
    end_of_prefix(&s[at..])
}

/// `0: ` (srun --label) or `node17: ` (pdsh): a rank or a lower-case host name and a colon. Upper
/// case is left alone so that `Warning: ...` stays a line of its own.
fn label(s: &str) -> Option<&str> {
    let (name, rest) = s.split_once(':')?;
    let hostlike = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_');
    if name.is_empty() || !name.chars().all(hostlike) {
        return None;
    }
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then_some(rest)
}

/// What follows a prefix: nothing, or a space or a colon that ends it.
fn end_of_prefix(rest: &str) -> Option<&str> {
    if rest.is_empty() || rest.starts_with(char::is_whitespace) {
        return Some(rest);
    }
    rest.strip_prefix(':')
}

/// A line that runs an nccl-tests binary, with what it says about the launch.
fn command_line(n: usize, content: &str, tokens: &[&str]) -> Option<CommandLine> {
    let at = tokens.iter().position(|t| NcclOp::from_binary(t).is_some())?;
    let op = NcclOp::from_binary(tokens[at])?;
    let before = &tokens[..at];
    let after = &tokens[at + 1..];
    const LAUNCHERS: [&str; 8] = ["mpirun", "mpiexec", "orterun", "prterun", "srun", "torchrun", "jsrun", "aprun"];
    let launcher_at = before.iter().position(|t| LAUNCHERS.contains(&t.rsplit('/').next().unwrap_or(t)));
    let flag = |args: &[&str], names: &[&str]| -> Option<u32> {
        args.iter().enumerate().find_map(|(i, t)| {
            names.iter().find_map(|name| {
                if *t == *name {
                    args.get(i + 1)?.parse().ok()
                } else {
                    t.strip_prefix(&format!("{name}="))?.parse().ok()
                }
            })
        })
    };
    // Only a command that starts with the binary (after a prompt, variables or wrappers such
    // as `env` or `numactl ...`) is known to be one process; `kubectl exec pod -- x_perf` or a
    // sentence naming the binary says nothing about the launch.
    let direct = before.iter().all(|t| {
        ["$", "#", ">", "%", "env", "sudo", "time", "exec", "nohup", "numactl"].contains(t) || t.contains('=') || t.starts_with('-')
    });
    let (launcher, processes, nodes) = match launcher_at {
        None if direct => (None, Some(1), Some(1)),
        None => (None, None, None),
        Some(i) => {
            let name = before[i].rsplit('/').next().unwrap_or(before[i]).to_string();
            let args = &before[i + 1..];
            if name == "srun" {
                let nodes = flag(args, &["-N", "--nodes"]);
                let per_node = flag(args, &["--ntasks-per-node"]);
                let processes = flag(args, &["-n", "--ntasks"]).or_else(|| Some(per_node? * nodes?));
                (Some(name), processes, nodes)
            } else if name.starts_with("mpi") || name == "orterun" || name == "prterun" {
                (Some(name), flag(args, &["-np", "-n", "--np", "--n"]), None)
            } else {
                (Some(name), None, None)
            }
        }
    };
    Some(CommandLine {
        line: n,
        text: content.to_string(),
        op,
        launcher,
        processes,
        nodes,
        threads: flag(after, &["-t", "--nthreads"]).unwrap_or(1),
        gpus: flag(after, &["-g", "--ngpus"]).unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_carry_their_rounding() {
        assert_eq!(parse_reading("338.82"), Some((338.82, 0.005)));
        assert_eq!(parse_reading("12646"), Some((12646.0, 0.5)));
        let (v, h) = parse_reading("1.2e+05").unwrap();
        assert_eq!(v, 1.2e5);
        assert!((h - 5e3).abs() < 1e-9, "{h}");
        assert_eq!(parse_reading("N/A"), None);
    }

    #[test]
    fn prefixes_and_hashes_are_stripped() {
        assert_eq!(strip_prefixes("[1,12]<stdout>:#  Rank  0 Group"), "Rank  0 Group");
        assert_eq!(strip_prefixes("#       size  \r"), "size");
        assert_eq!(strip_prefixes("   8  2  float"), "8  2  float");
        assert_eq!(strip_prefixes("[x]<stdout>: 8"), "[x]<stdout>: 8");
        assert_eq!(strip_prefixes("[1,0]<stderr>:  8  2 float"), "8  2 float");
    }

    #[test]
    fn launcher_labels_and_timestamps_are_stripped() {
        let line = "#  Rank  0 Group  0 Pid 1 on node17 device  0 [0x1b] NVIDIA H200";
        let bare = "Rank  0 Group  0 Pid 1 on node17 device  0 [0x1b] NVIDIA H200";
        for prefixed in [
            format!("0: {line}"),
            format!("12: {line}"),
            format!("[3] {line}"),
            format!("[0, 1]: {line}"),
            format!("node17: {line}"),
            format!("nid001234.hsn.cm: 0: {line}"),
            format!("2024-05-01T12:00:00.123456789Z {line}"),
            format!("2024-05-01 12:00:00,123 {line}"),
            format!("[2024-05-01 12:00:00] {line}"),
            format!("12:00:00: {line}"),
            format!("2024-05-01T12:00:00+02:00 3: {line}"),
            format!("\u{feff}{line}"),
        ] {
            assert_eq!(strip_prefixes(&prefixed), bare, "{prefixed}");
        }
        // A row keeps its first number; words with a colon, and unknown tags, stay.
        assert_eq!(strip_prefixes("0:    1048576   262144  float  sum  -1"), "1048576   262144  float  sum  -1");
        assert_eq!(strip_prefixes("   1048576   262144  float"), "1048576   262144  float");
        assert_eq!(strip_prefixes("Warning: node down"), "Warning: node down");
        assert_eq!(strip_prefixes("[node1] 8"), "[node1] 8");
        assert_eq!(strip_prefixes("ip-10-0-0-1:1234:1234 [0] NCCL INFO x"), "ip-10-0-0-1:1234:1234 [0] NCCL INFO x");
    }

    #[test]
    fn command_lines_say_how_the_test_was_launched() {
        let text = "./build/sendrecv_perf -b 128M -e 1G -f 2 -g 8";
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let c = command_line(3, text, &tokens).unwrap();
        assert_eq!((c.op, c.launcher.as_deref(), c.processes, c.nodes, c.gpus), (NcclOp::SendRecv, None, Some(1), Some(1), 8));
        let text = "mpirun -np 16 -x NCCL_DEBUG=INFO /opt/nccl-tests/build/all_gather_perf -b 8 -e 1G";
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let c = command_line(1, text, &tokens).unwrap();
        assert_eq!((c.op, c.launcher.as_deref(), c.processes, c.nodes), (NcclOp::AllGather, Some("mpirun"), Some(16), None));
        let text = "srun -N 2 --ntasks-per-node=8 all_reduce_perf_mpi -g 1";
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let c = command_line(1, text, &tokens).unwrap();
        assert_eq!((c.op, c.processes, c.nodes), (NcclOp::AllReduce, Some(16), Some(2)));
        let text = "$ NCCL_DEBUG=INFO ./all_reduce_perf -b 8 -e 1G";
        let c = command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((c.op, c.processes, c.nodes), (NcclOp::AllReduce, Some(1), Some(1)));
        let text = "kubectl exec nccl-0 -- /opt/nccl-tests/build/alltoall_perf -g 8";
        let c = command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((c.op, c.launcher.as_deref(), c.processes, c.nodes, c.gpus), (NcclOp::AllToAll, None, None, None, 8));
        let text = "Running all_gather_perf on the cluster";
        let c = command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((c.op, c.processes), (NcclOp::AllGather, None));
        let text = "$ dstack apply -f nccl-tests.dstack.yml";
        assert!(command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).is_none());
    }
}
