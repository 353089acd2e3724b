//! Plans: what to run, per global batch, on which GPUs. These are the types of `plan.json`
//! (docs/plan-format.md), written by the planner and read by the simulator and the validator
//! through `formats::plan`.

use crate::error::{Error, Result};
use crate::scheme::{GroupShape, RingVariant, Scheme};
use crate::trace::Doc;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Bumped whenever a field changes meaning (2: batches list their documents).
pub const PLAN_FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    /// The strategy that made it: `hsap`, or a baseline's name.
    pub strategy: String,
    pub trace: String,
    pub model: crate::model::ModelShape,
    pub cluster: crate::cluster::Cluster,
    /// How training runs (ZeRO stage, checkpointing, dtype...), which the plan was priced with.
    #[serde(default)]
    pub train: crate::cost::TrainConfig,
    /// Usable memory per GPU the plan was made against (the cost model's limit).
    #[serde(default)]
    pub memory_limit_bytes: f64,
    pub batches: Vec<BatchPlan>,
}

/// A plan without its batches: the run's configuration, written as `plan-header.json` beside
/// the batches streamed one per line into `plan.jsonl` (docs/plan-format.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    pub format_version: u32,
    pub strategy: String,
    pub trace: String,
    pub model: crate::model::ModelShape,
    pub cluster: crate::cluster::Cluster,
    #[serde(default)]
    pub train: crate::cost::TrainConfig,
    #[serde(default)]
    pub memory_limit_bytes: f64,
    /// Lines (batches) of the plan's `.jsonl`.
    pub batches: usize,
}

impl PlanHeader {
    /// The model and the cluster are valid: what [`PlanHeader::check_batch`] relies on.
    pub fn check(&self, path: &Path) -> Result<()> {
        self.model.check(path)?;
        self.cluster.check(path)
    }

    /// One batch holds what [`Plan::check`] checks of every batch; errors name `path` and
    /// `line` (0 when unknown).
    pub fn check_batch(&self, b: &BatchPlan, path: &Path, line: usize) -> Result<()> {
        check_batch(b, self.cluster.gpus()).map_err(|f| Error::input(path, line, format!("{}: {}", f.at, f.what), CHECK_HINT))
    }
}

impl Plan {
    /// The plan's header (its batches counted, not copied).
    pub fn header(&self) -> PlanHeader {
        PlanHeader {
            format_version: self.format_version,
            strategy: self.strategy.clone(),
            trace: self.trace.clone(),
            model: self.model.clone(),
            cluster: self.cluster.clone(),
            train: self.train.clone(),
            memory_limit_bytes: self.memory_limit_bytes,
            batches: self.batches.len(),
        }
    }

    /// A plan from its header and batches.
    pub fn from_parts(header: PlanHeader, batches: Vec<BatchPlan>) -> Plan {
        Plan {
            format_version: header.format_version,
            strategy: header.strategy,
            trace: header.trace,
            model: header.model,
            cluster: header.cluster,
            train: header.train,
            memory_limit_bytes: header.memory_limit_bytes,
            batches,
        }
    }

    /// The batch with index `k`.
    pub fn batch(&self, k: usize) -> Result<&BatchPlan> {
        self.batches.iter().find(|b| b.index == k).ok_or_else(|| {
            Error::invalid(
                format!("the plan has no batch {k} (it has {} batches)", self.batches.len()),
                format!(
                    "choose --batch between {} and {}",
                    self.batches.first().map_or(0, |b| b.index),
                    self.batches.last().map_or(0, |b| b.index)
                ),
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPlan {
    pub index: usize,
    /// The batch's documents (pieces of split documents separately); each is in exactly one
    /// group of one micro-batch.
    pub docs: Vec<Doc>,
    pub microbatches: Vec<MicroBatch>,
    /// The cost model's step time: micro-batches in sequence plus exposed gradient synchronisation.
    pub predicted_step_s: f64,
    /// Highest predicted memory of any GPU in the step.
    pub predicted_peak_memory_bytes: f64,
    /// The part of the gradient synchronisation the last micro-batch's backward pass does not
    /// hide (included in `predicted_step_s`). Micro-batches are listed in execution order.
    #[serde(default)]
    pub grad_sync_exposed_s: f64,
    /// Which search produced the batch's plan (hsap: `greedy`, `milp` or `incumbent:<baseline>`).
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicroBatch {
    pub groups: Vec<GroupPlan>,
    /// The slowest group's predicted time.
    pub predicted_time_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPlan {
    /// Global ranks, in local-rank order (`q = slot * ulysses + i`).
    pub ranks: Vec<u32>,
    pub ulysses: u32,
    pub ring: u32,
    pub scheme: Scheme,
    pub ring_variant: RingVariant,
    /// Trace indices of the group's documents, in packing order.
    pub sequences: Vec<u32>,
    /// The same documents with the piece of each that is used (split documents have offsets).
    pub docs: Vec<Doc>,
    /// Per rank: which tokens it holds and its cu_seqlens.
    pub rank_layouts: Vec<RankLayout>,
    pub predicted_time_s: f64,
    pub predicted_memory_bytes: f64,
}

impl GroupPlan {
    pub fn shape(&self) -> GroupShape {
        GroupShape {
            scheme: self.scheme,
            ulysses: self.ulysses,
            ring: self.ring,
            variant: self.ring_variant,
        }
    }

    pub fn doc_lengths(&self) -> Vec<u32> {
        self.docs.iter().map(|d| d.len).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankLayout {
    pub rank: u32,
    /// Ring position of the rank within its group.
    pub slot: u32,
    /// `[start, end)` ranges in the group's packed (unpadded) token sequence; stripe layouts use
    /// `stride`, every other layout has stride 1.
    pub token_ranges: Vec<TokenRange>,
    /// Document boundaries of the rank's shard, unpadded and in the padded THD form.
    pub cu_seqlens: Vec<u32>,
    pub cu_seqlens_padded: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRange {
    pub start: u64,
    pub end: u64,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub stride: u32,
}

fn one() -> u32 {
    1
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

impl RankLayout {
    /// The rank layouts of a group laid out by `layout`, with its global `ranks`.
    pub fn from_layout(layout: &crate::scheme::GroupLayout, ranks: &[u32]) -> Vec<RankLayout> {
        let mut offsets = Vec::with_capacity(layout.docs.len());
        let mut at = 0u64;
        for &d in &layout.docs {
            offsets.push(at);
            at += u64::from(d);
        }
        layout
            .ranks
            .iter()
            .zip(ranks)
            .map(|(shard, &rank)| RankLayout {
                rank,
                slot: shard.slot,
                token_ranges: shard
                    .pieces
                    .iter()
                    .map(|p| {
                        let start = offsets[p.doc as usize] + u64::from(p.start);
                        TokenRange {
                            start,
                            end: start + u64::from(p.len - 1) * u64::from(p.stride) + 1,
                            stride: p.stride,
                        }
                    })
                    .collect(),
                cu_seqlens: shard.cu_seqlens(),
                cu_seqlens_padded: shard.cu_seqlens_padded(),
            })
            .collect()
    }
}

/// What the simulator and the validator rely on in a plan they read; [`Plan::check`] finds the
/// first place that breaks it.
const CHECK_HINT: &str = "regenerate the plan with `hsap-tune --out DIR`; docs/plan-format.md says what a plan must hold";

/// Where in a plan something is wrong, and what.
struct Fault {
    at: String,
    what: String,
}

impl Plan {
    /// Checks that the plan can be replayed and run as written: its model and cluster are valid;
    /// in every micro-batch each GPU of the cluster is in exactly one group; every group has
    /// ranks, positive degrees whose product is its size, one layout per rank whose token ranges
    /// agree with its `cu_seqlens` and together hold each of the group's tokens once; and every document of a
    /// batch is in exactly one group of one micro-batch. Errors name `path`, the batch, the
    /// micro-batch and the group.
    pub fn check(&self, path: &Path) -> Result<()> {
        let header = self.header();
        header.check(path)?;
        self.batches.iter().try_for_each(|b| header.check_batch(b, path, 0))
    }
}

fn check_batch(b: &BatchPlan, gpus: u32) -> std::result::Result<(), Fault> {
    let at = format!("batch {}", b.index);
    if b.microbatches.is_empty() {
        return Err(Fault { at, what: "no micro-batches".into() });
    }
    let mut listed: HashMap<(u32, u32), (u32, Option<(usize, usize)>)> = HashMap::with_capacity(b.docs.len());
    for d in &b.docs {
        if listed.insert((d.index, d.offset), (d.len, None)).is_some() {
            return Err(Fault { at, what: format!("{} is listed twice in its documents", doc_name(d)) });
        }
    }
    for (m, micro) in b.microbatches.iter().enumerate() {
        let mut owner: Vec<Option<usize>> = vec![None; gpus as usize];
        for (g, group) in micro.groups.iter().enumerate() {
            let at = || format!("batch {}, micro-batch {m}, group {g}", b.index);
            for d in &group.docs {
                match listed.get_mut(&(d.index, d.offset)) {
                    None => return Err(Fault { at: at(), what: format!("{} is not among the batch's documents", doc_name(d)) }),
                    Some((len, _)) if *len != d.len => {
                        return Err(Fault { at: at(), what: format!("{} has {} tokens here but {len} in the batch's list", doc_name(d), d.len) })
                    }
                    Some((_, Some((m0, g0)))) => {
                        return Err(Fault { at: at(), what: format!("{} is also in micro-batch {m0}, group {g0}", doc_name(d)) })
                    }
                    Some((_, placed)) => *placed = Some((m, g)),
                }
            }
            check_group(group, gpus, &mut owner, g).map_err(|what| Fault { at: at(), what })?;
        }
        if let Some(gpu) = owner.iter().position(Option::is_none) {
            return Err(Fault {
                at: format!("batch {}, micro-batch {m}", b.index),
                what: format!("GPU {gpu} is in no group (every GPU of the cluster's {gpus} is in exactly one)"),
            });
        }
    }
    match b.docs.iter().find(|d| listed[&(d.index, d.offset)].1.is_none()) {
        Some(d) => Err(Fault { at, what: format!("{} ({} tokens) is in no group", doc_name(d), d.len) }),
        None => Ok(()),
    }
}

/// "document 17" or, for a piece of a split document, "document 17 from token 8192".
fn doc_name(d: &Doc) -> String {
    match d.offset {
        0 => format!("document {}", d.index),
        o => format!("document {} from token {o}", d.index),
    }
}

/// One group: its ranks (recorded in `owner`, GPU -> group), degrees, documents and layouts.
fn check_group(group: &GroupPlan, gpus: u32, owner: &mut [Option<usize>], g: usize) -> std::result::Result<(), String> {
    let (u, r, n) = (group.ulysses, group.ring, group.ranks.len());
    if n == 0 {
        return Err("the group has no ranks".into());
    }
    if u == 0 || r == 0 {
        return Err(format!("ulysses {u} x ring {r}: both degrees must be at least 1"));
    }
    if u64::from(u) * u64::from(r) != n as u64 {
        return Err(format!("ulysses {u} x ring {r} is not its {n} ranks"));
    }
    for &rank in &group.ranks {
        let Some(slot) = owner.get_mut(rank as usize) else {
            return Err(format!("rank {rank} is outside the cluster (GPUs 0 to {})", gpus - 1));
        };
        match *slot {
            Some(other) if other == g => return Err(format!("rank {rank} appears twice")),
            Some(other) => return Err(format!("rank {rank} is also in group {other}")),
            None => *slot = Some(g),
        }
    }
    if group.sequences.len() != group.docs.len() || group.sequences.iter().zip(&group.docs).any(|(&s, d)| s != d.index) {
        return Err("`sequences` are not the trace indices of `docs`".into());
    }
    if group.rank_layouts.len() != n {
        return Err(format!("{} rank layouts for {n} ranks", group.rank_layouts.len()));
    }
    let tokens: u64 = group.docs.iter().map(|d| u64::from(d.len)).sum();
    let mut held = 0u64;
    for (layout, &rank) in group.rank_layouts.iter().zip(&group.ranks) {
        if layout.rank != rank {
            return Err(format!("the layout of rank {rank} is rank {}'s", layout.rank));
        }
        held += check_layout(layout, tokens).map_err(|what| format!("rank {rank}: {what}"))?;
    }
    if held != tokens {
        return Err(format!("its ranks hold {held} tokens but its documents have {tokens}"));
    }
    check_disjoint(&group.rank_layouts)
}

/// No token of the group is held twice: with every range inside the group's tokens and as many
/// held as it has, each token is then held exactly once. Ranges are swept by start, each compared
/// with the ranges still open at its start: one where ranges follow each other, a stripe's
/// stride where they interleave.
fn check_disjoint(layouts: &[RankLayout]) -> std::result::Result<(), String> {
    let mut ranges: Vec<(TokenRange, u32)> = layouts.iter().flat_map(|l| l.token_ranges.iter().map(move |&t| (t, l.rank))).collect();
    ranges.sort_unstable_by_key(|(t, _)| (t.start, t.end));
    let mut open: Vec<(TokenRange, u32)> = Vec::new();
    for (t, rank) in ranges {
        open.retain(|(o, _)| o.end > t.start);
        if let Some((o, other, x)) = open.iter().find_map(|&(o, other)| shared_token(&o, &t).map(|x| (o, other, x))) {
            let text = |t: &TokenRange| if t.stride == 1 { format!("{}..{}", t.start, t.end) } else { format!("{}..{} by {}", t.start, t.end, t.stride) };
            return Err(format!("ranks {other} and {rank} both hold token {x} (their ranges {} and {})", text(&o), text(&t)));
        }
        open.push((t, rank));
    }
    Ok(())
}

/// The first token two ranges both hold, if any: `x = a.start (mod a.stride)` and `x = b.start
/// (mod b.stride)` inside both, by the Chinese remainder theorem.
fn shared_token(a: &TokenRange, b: &TokenRange) -> Option<u64> {
    let (lo, hi) = (a.start.max(b.start), a.end.min(b.end));
    if lo >= hi {
        return None;
    }
    let (sa, sb) = (i128::from(a.stride), i128::from(b.stride));
    let (g, inv, _) = extended_gcd(sa, sb);
    let diff = i128::from(b.start) - i128::from(a.start);
    if diff % g != 0 {
        return None;
    }
    // a.start + sa k = b.start (mod sb): k = (diff / g) inv (mod sb / g).
    let m = sb / g;
    let k = ((diff / g) % m * (inv % m) % m + m) % m;
    let lcm = sa / g * sb;
    let x0 = i128::from(a.start) + sa * k;
    let lo = i128::from(lo);
    let x = if x0 >= lo { x0 } else { x0 + (lo - x0 + lcm - 1) / lcm * lcm };
    (x < i128::from(hi)).then_some(x as u64)
}

/// (gcd(a, b), x, y) with a x + b y = gcd(a, b), for positive a and b.
fn extended_gcd(a: i128, b: i128) -> (i128, i128, i128) {
    if b == 0 {
        return (a, 1, 0);
    }
    let (g, x, y) = extended_gcd(b, a % b);
    (g, y, x - a / b * y)
}

/// A rank's layout: token ranges inside the group's `tokens`, and `cu_seqlens` (unpadded and
/// padded) that count the same tokens. Returns the tokens the rank holds.
fn check_layout(layout: &RankLayout, tokens: u64) -> std::result::Result<u64, String> {
    let mut held = 0u64;
    for t in &layout.token_ranges {
        if t.stride == 0 || t.start >= t.end || t.end > tokens {
            return Err(format!("token range {}..{} (stride {}) is not inside the group's {tokens} tokens", t.start, t.end, t.stride));
        }
        held += (t.end - t.start).div_ceil(u64::from(t.stride));
    }
    let (cu, padded) = (&layout.cu_seqlens, &layout.cu_seqlens_padded);
    if cu.first() != Some(&0) || padded.first() != Some(&0) || cu.len() != padded.len() {
        return Err("cu_seqlens and cu_seqlens_padded must start at 0 and have one entry per document run".into());
    }
    let runs = cu.windows(2).zip(padded.windows(2));
    if let Some(k) = runs.clone().position(|(c, p)| c[1] < c[0] || p[1] < p[0] || p[1] - p[0] < c[1] - c[0]) {
        return Err(format!("run {k} of cu_seqlens {:?} / cu_seqlens_padded {:?} shrinks or is padded to less than its tokens", &cu[k..k + 2], &padded[k..k + 2]));
    }
    let counted = u64::from(*cu.last().unwrap_or(&0));
    if counted != held {
        return Err(format!("its token ranges hold {held} tokens but cu_seqlens counts {counted}"));
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::{shared_token, TokenRange};
    use proptest::prelude::*;

    fn r(start: u64, end: u64, stride: u32) -> TokenRange {
        TokenRange { start, end, stride }
    }

    #[test]
    fn shared_tokens_of_intervals_and_stripes() {
        assert_eq!(shared_token(&r(0, 10, 1), &r(10, 20, 1)), None);
        assert_eq!(shared_token(&r(0, 10, 1), &r(9, 20, 1)), Some(9));
        // A stripe of 4 starting at 1 (1, 5, 9) and one starting at 2 never meet; one at 5 does.
        assert_eq!(shared_token(&r(1, 10, 4), &r(2, 11, 4)), None);
        assert_eq!(shared_token(&r(1, 10, 4), &r(5, 6, 1)), Some(5));
        // Strides 4 and 6 from 1 and 3: 9 is the first token both hold (1, 5, 9 / 3, 9).
        assert_eq!(shared_token(&r(1, 30, 4), &r(3, 30, 6)), Some(9));
        assert_eq!(shared_token(&r(1, 9, 4), &r(3, 30, 6)), None);
        // Parities differ: strides 2 and 4 from 0 and 1 never meet.
        assert_eq!(shared_token(&r(0, 100, 2), &r(1, 100, 4)), None);
    }

    proptest! {
        /// Every layout hsap writes passes: each scheme and ring variant on random documents.
        #[test]
        fn the_layouts_of_every_scheme_hold_each_token_once(docs in proptest::collection::vec(1u32..300, 1..6), u in 0usize..3, r in 0usize..3) {
            use crate::scheme::{layout, GroupShape, HsapParams, RingVariant, Scheme};
            let (u, r) = ([1u32, 2, 4][u], [1u32, 2, 4][r]);
            for scheme in Scheme::ALL {
                let (u, r) = match scheme {
                    Scheme::Ulysses => (u, 1),
                    Scheme::Ring | Scheme::Allgather => (1, r),
                    _ => (u, r),
                };
                for variant in RingVariant::ALL {
                    let l = layout(&GroupShape { scheme, ulysses: u, ring: r, variant }, &docs, &HsapParams::default());
                    let ranks: Vec<u32> = (0..u * r).collect();
                    let layouts = super::RankLayout::from_layout(&l, &ranks);
                    prop_assert_eq!(super::check_disjoint(&layouts), Ok(()), "{:?} u{} r{} {:?} on {:?}", scheme, u, r, variant, docs);
                }
            }
        }

        /// Against enumerating both ranges' tokens.
        #[test]
        fn shared_token_is_the_first_common_token(a0 in 0u64..60, an in 1u64..40, sa in 1u32..9, b0 in 0u64..60, bn in 1u64..40, sb in 1u32..9) {
            let a = r(a0, a0 + (an - 1) * u64::from(sa) + 1, sa);
            let b = r(b0, b0 + (bn - 1) * u64::from(sb) + 1, sb);
            let tokens = |t: &TokenRange| (t.start..t.end).step_by(t.stride as usize).collect::<std::collections::BTreeSet<u64>>();
            let first = tokens(&a).intersection(&tokens(&b)).next().copied();
            prop_assert_eq!(shared_token(&a, &b), first);
            prop_assert_eq!(shared_token(&b, &a), first);
        }
    }
}
