//! Putting documents into groups: splitting a batch into micro-batches and a greedy assignment by
//! the surrogate (earliest finish). The exact local search that follows is `local.rs`.

use super::{Candidate, Ctx, DocCost, Group};
use crate::trace::Batch;

/// Attention pairs plus the linear layers' work in pair units: the work proxy the sequence-aware
/// layout balances with, used here to balance micro-batches.
pub fn work(len: u32, linear_weight: f64) -> f64 {
    let s = f64::from(len);
    s * (s + 1.0) / 2.0 + linear_weight * s
}

/// Splits a batch's documents into the fewest micro-batches whose tokens stay within
/// `tokens_per_micro` each (at least `min_micro`), balancing work between them: longest first,
/// each to the micro-batch with the least work that has room. Returns document indices per
/// micro-batch, each sorted.
pub fn split_microbatches(batch: &Batch, tokens_per_micro: u64, min_micro: usize, linear_weight: f64) -> Vec<Vec<usize>> {
    let total = batch.tokens();
    let mut m = (total.div_ceil(tokens_per_micro.max(1)) as usize).max(min_micro).max(1);
    let docs: Vec<usize> = (0..batch.docs.len()).collect();
    loop {
        if let Some(mut parts) = deal(batch, &docs, m, tokens_per_micro, linear_weight) {
            parts.retain(|p| !p.is_empty());
            return parts;
        }
        m += 1;
    }
}

/// Deals `docs` into `parts` parts of at most `tokens_cap` tokens each (a document longer than
/// that gets an empty part of its own), balancing work: longest first, each to the part with the
/// least work that has room. None when some document finds no room. Each part sorted.
pub fn deal(batch: &Batch, docs: &[usize], parts: usize, tokens_cap: u64, linear_weight: f64) -> Option<Vec<Vec<usize>>> {
    let mut order = docs.to_vec();
    order.sort_by(|&a, &b| batch.docs[b].len.cmp(&batch.docs[a].len).then(a.cmp(&b)));
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); parts];
    let mut tokens = vec![0u64; parts];
    let mut load = vec![0.0f64; parts];
    for &d in &order {
        let len = u64::from(batch.docs[d].len);
        let i = (0..parts)
            .filter(|&i| tokens[i] + len <= tokens_cap || tokens[i] == 0)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))?;
        out[i].push(d);
        tokens[i] += len;
        load[i] += work(batch.docs[d].len, linear_weight);
    }
    for p in &mut out {
        p.sort_unstable();
    }
    Some(out)
}

/// A group being filled: its candidate shape, documents, surrogate terms (`Candidate::finish_s`)
/// and tokens.
#[derive(Debug, Clone)]
pub struct Bin<'a> {
    pub cand: &'a Candidate,
    pub docs: Vec<usize>,
    pub load_s: f64,
    /// The slowest of its documents alone.
    pub alone_s: f64,
    /// The largest anchor gain among the documents (`Candidate::anchor_gain_s`, <= 0).
    pub gain_s: f64,
    pub tokens: u64,
}

impl<'a> Bin<'a> {
    pub fn new(cand: &'a Candidate) -> Bin<'a> {
        Bin { cand, docs: Vec::new(), load_s: cand.base_s, alone_s: 0.0, gain_s: 0.0, tokens: 0 }
    }

    /// Surrogate time of the group as it is.
    pub fn finish_s(&self) -> f64 {
        self.cand.finish_s(self.load_s, self.alone_s, self.gain_s)
    }

    /// Surrogate time of the group with one more document whose figures on this group's shape
    /// are `c`.
    pub fn finish_with(&self, c: &DocCost) -> f64 {
        self.cand.finish_s(self.load_s + c.marginal_s, self.alone_s.max(c.alone_s), self.gain_s.min(c.gain_s))
    }

    pub fn fits(&self, len: u32) -> bool {
        self.cand.fits(self.tokens + u64::from(len))
    }

    /// Adds document `d` of `len` tokens, whose figures on this group's shape are `c`.
    pub fn push_with(&mut self, d: usize, len: u32, c: &DocCost) {
        self.docs.push(d);
        self.load_s += c.marginal_s;
        self.alone_s = self.alone_s.max(c.alone_s);
        self.gain_s = self.gain_s.min(c.gain_s);
        self.tokens += u64::from(len);
    }
}

/// Earliest-finish assignment by the surrogate: longest documents first, each to the group where
/// it would finish first among those with memory for it. Returns false when some document fits
/// no group.
pub fn earliest_finish(bins: &mut [Bin<'_>], batch: &Batch, docs: &[usize]) -> bool {
    let mut order = docs.to_vec();
    order.sort_by(|&a, &b| batch.docs[b].len.cmp(&batch.docs[a].len).then(a.cmp(&b)));
    // Empty bins of one candidate are interchangeable: only the first is priced (ties go to the
    // lowest index anyway), which keeps a large cluster's many idle GPUs cheap.
    let mut empty_seen: Vec<*const Candidate> = Vec::new();
    for d in order {
        let len = batch.docs[d].len;
        empty_seen.clear();
        // Bins of one shape sit side by side: one interpolation per run of them.
        let mut last: Option<(*const Candidate, DocCost)> = None;
        let mut cost = |b: &Bin<'_>| {
            let c: *const Candidate = b.cand;
            match last {
                Some((p, cost)) if p == c => cost,
                _ => {
                    let cost = b.cand.doc(len);
                    last = Some((c, cost));
                    cost
                }
            }
        };
        let best = bins
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                if !b.docs.is_empty() {
                    return true;
                }
                let c: *const Candidate = b.cand;
                let first = !empty_seen.contains(&c);
                if first {
                    empty_seen.push(c);
                }
                first
            })
            .filter(|(_, b)| b.fits(len))
            .map(|(i, b)| {
                let c = cost(b);
                (i, b.finish_with(&c), b.load_s, c)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.total_cmp(&b.2)).then(a.0.cmp(&b.0)));
        let Some((i, _, _, c)) = best else { return false };
        bins[i].push_with(d, len, &c);
    }
    true
}

/// Surrogate makespan of filled bins.
pub fn makespan(bins: &[Bin<'_>]) -> f64 {
    bins.iter().filter(|b| !b.docs.is_empty()).map(Bin::finish_s).fold(0.0, f64::max)
}

/// Chooses each group's scheme: the fastest for its (u, r) and documents that fits in memory.
pub fn choose_schemes(ctx: &Ctx, batch: &Batch, groups: &mut [Group]) {
    for g in groups.iter_mut().filter(|g| !g.docs.is_empty()) {
        let lens: Vec<u32> = g.docs.iter().map(|&d| batch.docs[d].len).collect();
        g.shape = ctx.best_scheme(g.shape.ulysses, g.shape.ring, &lens).0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Doc;

    fn batch(lens: &[u32]) -> Batch {
        Batch {
            index: 0,
            docs: lens.iter().enumerate().map(|(i, &len)| Doc { index: i as u32, offset: 0, len }).collect(),
        }
    }

    #[test]
    fn microbatches_respect_the_token_budget_and_cover_every_document() {
        let b = batch(&[90, 10, 50, 50, 40, 30, 20, 5]);
        let parts = split_microbatches(&b, 100, 1, 0.0);
        assert_eq!(parts.len(), 3);
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        for p in &parts {
            assert!(p.iter().map(|&d| b.docs[d].len).sum::<u32>() <= 100, "{p:?}");
        }
    }

    #[test]
    fn a_document_longer_than_the_budget_gets_a_micro_batch_of_its_own() {
        let b = batch(&[500, 10]);
        let parts = split_microbatches(&b, 100, 1, 0.0);
        assert_eq!(parts, vec![vec![0], vec![1]]);
    }
}
