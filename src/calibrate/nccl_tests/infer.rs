//! What a run's table implies when the log does not say it: which test printed it (from the bus
//! factor, the count column, the redop and root columns) and on how many ranks and nodes.

use super::log::*;
use crate::calibrate::plural;

/// What the table itself says about the test and the rank count.
struct Evidence {
    /// busbw / algbw lies in this interval on every row (nccl-tests derives busbw from algbw by
    /// the test's bus factor, so only the printing rounds it).
    bus_ratio: Option<(f64, f64)>,
    /// size / (count x type size), when the same whole number on every row.
    count_ratio: Option<u64>,
    /// Whether the redop column says `none` (or nothing).
    no_redop: bool,
    /// The root column's values, when the table has one.
    roots: Option<Vec<i64>>,
}

/// Possible rank counts: all, or a closed range.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RankSet {
    Any,
    Range(u32, u32),
}

/// Rank counts beyond this are not considered when inverting a bus factor.
const MAX_RANKS: u32 = 1 << 20;

impl Evidence {
    fn of(rows: &[&Row]) -> Evidence {
        let mut lo: f64 = 0.0;
        let mut hi: f64 = f64::INFINITY;
        let mut informative = false;
        for t in rows.iter().flat_map(|r| r.timings()) {
            let a_lo = t.algbw_gb_per_s - t.algbw_half_ulp;
            if a_lo <= 0.0 || t.busbw_gb_per_s <= 0.0 {
                continue;
            }
            lo = lo.max((t.busbw_gb_per_s - t.busbw_half_ulp) / (t.algbw_gb_per_s + t.algbw_half_ulp));
            hi = hi.min((t.busbw_gb_per_s + t.busbw_half_ulp) / a_lo);
            informative = true;
        }
        let ratios: Vec<Option<u64>> = rows
            .iter()
            .map(|r| {
                let ts = type_size(&r.dtype)?;
                let per = r.count.checked_mul(ts).filter(|&p| p > 0)?;
                (r.size_bytes % per == 0).then_some(r.size_bytes / per)
            })
            .collect();
        let count_ratio = match ratios.first() {
            Some(Some(first)) if ratios.iter().all(|r| *r == Some(*first)) => Some(*first),
            _ => None,
        };
        let roots = rows.iter().map(|r| r.root).collect::<Option<Vec<i64>>>();
        Evidence {
            bus_ratio: (informative && lo <= hi).then_some((lo, hi)),
            count_ratio,
            no_redop: rows.iter().all(|r| r.redop.is_empty() || r.redop == "none"),
            roots,
        }
    }

    /// The rank counts under which the table is what `op` prints, or `None` if it cannot be.
    fn ranks_for(&self, op: NcclOp) -> Option<RankSet> {
        if op.has_no_redop() != self.no_redop {
            return None;
        }
        if let Some(roots) = &self.roots {
            if roots.iter().any(|&r| (r >= 0) != op.is_rooted()) {
                return None;
            }
        }
        let mut set = RankSet::Any;
        match (self.count_ratio, op.count_is_per_rank()) {
            (Some(r), true) => set = RankSet::Range(u32::try_from(r).ok()?, u32::try_from(r).ok()?),
            (Some(r), false) if r != 1 => return None,
            _ => {}
        }
        if let Some((lo, hi)) = self.bus_ratio {
            set = intersect(set, factor_ranks(op, lo, hi)?)?;
        }
        Some(set)
    }
}

/// Rank counts whose bus factor for `op` lies in [lo, hi].
fn factor_ranks(op: NcclOp, lo: f64, hi: f64) -> Option<RankSet> {
    op.bus_factor(2)?;
    let f = |n: u32| op.bus_factor(n).unwrap_or(f64::NAN);
    if (f(2) - f(MAX_RANKS)).abs() < 1e-12 {
        return (lo <= f(2) && f(2) <= hi).then_some(RankSet::Any);
    }
    // The other factors increase with n towards their limit, so bisection finds the first n
    // at or above lo and the first n above hi.
    let first_where = |pred: &dyn Fn(f64) -> bool| -> u32 {
        let (mut a, mut b) = (1u32, MAX_RANKS + 1);
        while a < b {
            let m = a + (b - a) / 2;
            if pred(f(m)) {
                b = m;
            } else {
                a = m + 1;
            }
        }
        a
    };
    let first = first_where(&|v| v >= lo);
    let last = first_where(&|v| v > hi) - 1;
    (first <= last && first <= MAX_RANKS).then_some(RankSet::Range(first, last.min(MAX_RANKS)))
}

fn intersect(a: RankSet, b: RankSet) -> Option<RankSet> {
    match (a, b) {
        (RankSet::Any, x) | (x, RankSet::Any) => Some(x),
        (RankSet::Range(a0, a1), RankSet::Range(b0, b1)) => {
            let (lo, hi) = (a0.max(b0), a1.min(b1));
            (lo <= hi).then_some(RankSet::Range(lo, hi))
        }
    }
}

/// Works out the test, the rank and node counts from everything the run printed, and notes
/// what is missing.
pub(super) fn infer(run: &mut NcclRun) {
    let mut notes = Vec::new();
    let series = run.first_series();
    if series.len() < run.rows.len() {
        notes.push(format!(
            "the table holds several type/redop series; the first ({} {}, {} rows) is used",
            series[0].dtype,
            series[0].redop,
            series.len()
        ));
    }
    let evidence = Evidence::of(&series);

    // Ranks the log lists outright.
    let ranks_listed = listed_ranks(run);
    if run.header.is_none() {
        notes.push("no `nThread ... nGpus ...` run header".into());
    }
    if run.devices.is_empty() {
        notes.push("no device lines: the log does not list ranks and hosts".into());
    } else if run.devices_cut {
        notes.push(format!("device list cut short (`...`) after {} of the ranks", run.devices.len()));
    }

    // The test: named by the log, else inferred from the table.
    let stated = run
        .program
        .clone()
        .or_else(|| run.command.as_ref().map(|c| Fact::new(c.op, format!("the command line (line {})", c.line))));
    let constrain = |set: RankSet| match &ranks_listed {
        Some(r) => intersect(set, RankSet::Range(r.value, r.value)),
        None => Some(set),
    };
    let fits: Vec<(NcclOp, RankSet)> = NcclOp::ALL
        .into_iter()
        .filter_map(|op| Some((op, constrain(evidence.ranks_for(op)?)?)))
        .collect();
    let describe = describe_evidence(&evidence);
    let op_ranks: Option<RankSet>;
    run.op = match stated {
        Some(fact) => {
            op_ranks = fits.iter().find(|(op, _)| *op == fact.value).map(|(_, s)| *s);
            if op_ranks.is_none() && fact.value.bus_factor(2).is_some() {
                notes.push(format!(
                    "the table does not look like {} ({describe}{}); the log's word is taken",
                    fact.value,
                    ranks_listed.as_ref().map_or(String::new(), |r| format!(", {} ranks", r.value))
                ));
            }
            OpFinding::Known {
                op: fact.value,
                from: fact.from,
                inferred: false,
            }
        }
        None => match fits.as_slice() {
            [(op, set)] => {
                op_ranks = Some(*set);
                let from = format!("inferred from the table: {describe}");
                notes.push("the log does not name its test".into());
                OpFinding::Known {
                    op: *op,
                    from,
                    inferred: true,
                }
            }
            [] => {
                op_ranks = None;
                let why = format!("no nccl-tests test prints a table like this one ({describe})");
                notes.push(why.clone());
                OpFinding::Unknown { why }
            }
            many => {
                // The candidates may still agree on the rank count.
                let sets: Vec<RankSet> = many.iter().map(|(_, s)| *s).collect();
                op_ranks = sets.iter().all(|s| *s == sets[0]).then_some(sets[0]);
                let names: Vec<String> = many.iter().map(|(op, _)| op.to_string()).collect();
                let why = format!("the table fits {} alike ({describe})", names.join(" and "));
                notes.push(format!("the log does not name its test, and {why}"));
                OpFinding::Ambiguous {
                    candidates: many.iter().map(|(op, _)| *op).collect(),
                    why,
                }
            }
        },
    };

    run.ranks = ranks_listed.clone();
    if run.ranks.is_none() {
        match op_ranks {
            Some(RankSet::Range(lo, hi)) if lo == hi => {
                let how = if evidence.count_ratio.is_some_and(|r| r > 1) { "size/count" } else { "busbw/algbw" };
                run.ranks = Some(Fact::new(lo, format!("inferred from {how}")));
                notes.push("the rank count is not listed".into());
            }
            Some(RankSet::Range(lo, hi)) => {
                let lo = if run.devices_cut { lo.max(run.devices.len() as u32) } else { lo };
                run.rank_range = Some((lo, hi));
                notes.push(format!("the rank count is not listed; busbw/algbw puts it between {lo} and {hi}"));
            }
            _ => notes.push("the rank count is not listed".into()),
        }
    }

    run.nodes = listed_nodes(run);
    if run.nodes.is_none() {
        let seen = run.hosts().len();
        notes.push(if seen > 0 {
            format!("the node count is not listed (the cut device list shows {})", plural(seen, "host"))
        } else {
            "the node count is not listed".into()
        });
    }
    run.gpus_per_node = gpus_per_node(run);

    if run.footer.is_none() {
        notes.push("no footer (`Out of bounds values`, `Avg bus bandwidth`): the run may have been cut short".into());
    } else if let Some(avg) = run.footer.as_ref().and_then(|f| f.avg_busbw_gb_per_s) {
        // nccl-tests' footer is the mean busbw over every timing: if the rows disagree, rows
        // are missing (an excerpt) or extra.
        let rows_avg = run.rows_avg_busbw_gb_per_s();
        if (rows_avg - avg).abs() > 0.006 + 1e-5 * avg.abs() {
            notes.push(format!(
                "the footer's average bus bandwidth {avg} GB/s differs from the rows' {rows_avg:.4} GB/s: rows are missing from this log"
            ));
        }
    }
    if run.columns.as_ref().is_some_and(|c| c.line == 0) {
        notes.push("no column header: columns taken from the row width".into());
    }
    if let Some(line) = run.cut_row {
        notes.push(format!("the last row (line {line}) is cut off and was dropped: the run was cut short"));
    }
    let one_group = run.rows.iter().filter(|r| r.in_place.is_none()).count();
    if one_group > 0 {
        notes.push(format!("{one_group} row(s) have a single timing (the in-place half is missing)"));
    }
    run.notes = notes;
}

fn describe_evidence(e: &Evidence) -> String {
    let mut parts = Vec::new();
    if let Some((lo, hi)) = e.bus_ratio {
        parts.push(format!("busbw/algbw = {:.4}", (lo + hi) / 2.0));
    }
    if let Some(r) = e.count_ratio {
        parts.push(if r == 1 { "size = count x type size".to_string() } else { format!("size = {r} x count x type size") });
    }
    parts.push(if e.no_redop { "no redop".to_string() } else { "a redop".to_string() });
    if let Some(roots) = &e.roots {
        parts.push(format!("root {}", roots.first().copied().unwrap_or(-1)));
    }
    parts.join(", ")
}

fn listed_ranks(run: &NcclRun) -> Option<Fact<u32>> {
    if !run.devices.is_empty() && !run.devices_cut {
        let n = run.devices.len() as u32;
        let mut seen: Vec<u32> = run.devices.iter().map(|d| d.rank).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() as u32 == n && seen.last() == Some(&(n - 1)) {
            return Some(Fact::new(n, "device lines"));
        }
    }
    if let Some(n) = run.nccl_info.ranks {
        return Some(Fact::new(n, "NCCL INFO lines"));
    }
    let command = run.command.as_ref()?;
    let processes = command.processes?;
    // The run header, when present, says what each process actually drove.
    let per_process = run.header.as_ref().map_or(command.threads * command.gpus, |h| h.n_threads * h.n_gpus);
    let how = match &command.launcher {
        None => format!("the command line (one process, -t {} -g {})", command.threads, command.gpus),
        Some(l) => format!("the command line ({l}: {processes} processes x {per_process} GPUs)"),
    };
    Some(Fact::new(processes * per_process, how))
}

fn listed_nodes(run: &NcclRun) -> Option<Fact<u32>> {
    if !run.devices.is_empty() && !run.devices_cut {
        return Some(Fact::new(run.hosts().len() as u32, "device lines (distinct hosts)"));
    }
    if let Some(n) = run.nccl_info.nodes {
        return Some(Fact::new(n, "NCCL INFO lines"));
    }
    let command = run.command.as_ref()?;
    let nodes = command.nodes?;
    let how = match &command.launcher {
        None => "the command line (a single process runs on one node)".to_string(),
        Some(l) => format!("the command line ({l})"),
    };
    Some(Fact::new(nodes, how))
}

fn gpus_per_node(run: &NcclRun) -> Option<Fact<u32>> {
    if !run.devices.is_empty() && !run.devices_cut {
        let most = run
            .hosts()
            .iter()
            .map(|h| run.devices.iter().filter(|d| d.host == *h).count() as u32)
            .max()?;
        return Some(Fact::new(most, "device lines"));
    }
    if let Some(n) = run.nccl_info.local_ranks {
        return Some(Fact::new(n, "NCCL INFO lines"));
    }
    let (ranks, nodes) = (run.ranks.as_ref()?, run.nodes.as_ref()?);
    (nodes.value > 0 && ranks.value % nodes.value == 0)
        .then(|| Fact::new(ranks.value / nodes.value, format!("{} ranks / {} nodes", ranks.value, nodes.value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_factor_inverts_to_rank_counts() {
        // 2(n-1)/n = 1.75 only for n = 8.
        assert_eq!(factor_ranks(NcclOp::AllReduce, 1.7499, 1.7501), Some(RankSet::Range(8, 8)));
        // (n-1)/n = 0.9375 only for n = 16.
        assert_eq!(factor_ranks(NcclOp::AllGather, 0.93749, 0.93751), Some(RankSet::Range(16, 16)));
        // A wide interval leaves a range.
        assert_eq!(factor_ranks(NcclOp::AllReduce, 1.979, 1.985), Some(RankSet::Range(96, 133)));
        assert_eq!(factor_ranks(NcclOp::SendRecv, 0.99, 1.01), Some(RankSet::Any));
        assert_eq!(factor_ranks(NcclOp::SendRecv, 1.7, 1.8), None);
        assert_eq!(factor_ranks(NcclOp::Gather, 0.9, 1.0), None);
    }
}
