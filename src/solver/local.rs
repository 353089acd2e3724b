//! Exact local search on one micro-batch's groups: while some change makes the slowest group
//! faster, apply it. Changes: move one of its documents to another group, swap one with a shorter
//! document of another group, and (for hsap) resize groups: merge the slowest group with another
//! of a size they can share, split it in two, or give it another (u, r) of the same size.
//!
//! Every change is first estimated with the surrogate, as a difference from the group's exact
//! time (`exact + surrogate(after) - surrogate(before)`, which cancels most of the surrogate's
//! error), and only the most promising few are priced by the cost model; the cost model decides.

use super::assign::{earliest_finish, Bin};
use super::surrogate::Candidate;
use super::{model_scheme_options, Ctx, Group};
use crate::scheme::GroupShape;
use crate::trace::Batch;

/// What the local search may change and how much it may spend.
#[derive(Debug, Clone, Copy)]
pub struct Search {
    /// Cost-model calls the search may spend on one micro-batch.
    pub budget: usize,
    /// Merge, split and reshape groups and re-choose their schemes (hsap); false keeps every
    /// group's shape and scheme (the static plans: one shape is their method).
    pub resize: bool,
}

/// Documents of the slowest group whose moves are estimated: its longest, and as many spread over
/// the rest of its lengths (short documents balance finely).
const DOCS_LONGEST: usize = 6;
const DOCS_SPREAD: usize = 6;
/// Groups, fastest first, that the slowest group's documents may be swapped with.
const SWAP_TARGETS: usize = 8;
/// Partners, fastest first, the slowest group may merge with.
const MERGE_PARTNERS: usize = 3;
/// Changes priced exactly per step, best estimate first, before the search gives up.
const EXACT_TRIES: usize = 4;

/// The surrogate's running terms of a group (`Candidate::finish_s`), with the two largest `alone`
/// and the two most negative anchor gains, so that one document can be taken out in O(1).
#[derive(Debug, Clone, Copy)]
struct Agg {
    load: f64,
    alone: [(f64, usize); 2],
    gain: [(f64, usize); 2],
}

const NONE: usize = usize::MAX;

impl Agg {
    fn empty(c: &Candidate) -> Agg {
        Agg { load: c.base_s, alone: [(0.0, NONE); 2], gain: [(0.0, NONE); 2] }
    }

    fn of(c: &Candidate, batch: &Batch, docs: &[usize]) -> Agg {
        docs.iter().fold(Agg::empty(c), |a, &d| a.add(c, d, batch.docs[d].len))
    }

    fn add(mut self, c: &Candidate, d: usize, len: u32) -> Agg {
        let doc = c.doc(len);
        self.load += doc.marginal_s;
        let a = (doc.alone_s, d);
        if a.0 > self.alone[0].0 {
            self.alone = [a, self.alone[0]];
        } else if a.0 > self.alone[1].0 {
            self.alone[1] = a;
        }
        let g = (doc.gain_s, d);
        if g.0 < self.gain[0].0 {
            self.gain = [g, self.gain[0]];
        } else if g.0 < self.gain[1].0 {
            self.gain[1] = g;
        }
        self
    }

    /// Without document `d` (the third largest term is not kept: after one removal the result
    /// may under-state `alone` or the gain by that much, which only the estimate sees).
    fn remove(mut self, c: &Candidate, d: usize, len: u32) -> Agg {
        self.load -= c.marginal_s(len);
        if self.alone[0].1 == d {
            self.alone = [self.alone[1], (0.0, NONE)];
        } else if self.alone[1].1 == d {
            self.alone[1] = (0.0, NONE);
        }
        if self.gain[0].1 == d {
            self.gain = [self.gain[1], (0.0, NONE)];
        } else if self.gain[1].1 == d {
            self.gain[1] = (0.0, NONE);
        }
        self
    }

    fn time(&self, c: &Candidate) -> f64 {
        c.finish_s(self.load, self.alone[0].0, self.gain[0].0)
    }
}

/// A change to the groups.
#[derive(Debug, Clone)]
enum Change {
    Move { doc: usize, to: usize },
    Swap { doc: usize, to: usize, back: usize },
    /// The slowest group and `with` become one group of shape (u, r).
    Merge { with: usize, ulysses: u32, ring: u32 },
    /// The slowest group becomes two groups: (shape, documents) each.
    Split { parts: [(u32, u32, Vec<usize>); 2] },
    /// The slowest group gets another (u, r) of its size.
    Reshape { ulysses: u32, ring: u32 },
}

struct Local<'a> {
    ctx: &'a Ctx,
    batch: &'a Batch,
    cands: &'a [Candidate],
    left: usize,
    resize: bool,
    /// Per group, what sharing links multiplies its exact time by ([`improve_scaled`]).
    factors: &'a [f64],
    groups: Vec<Group>,
    /// Exact time of each group (0 when empty, infinite over memory).
    time: Vec<f64>,
    agg: Vec<Option<Agg>>,
}

/// Improves `groups` in place (see the module doc). `cands` are the surrogate's candidates the
/// groups' (u, r) are looked up in (groups without one are only priced exactly).
pub fn improve(ctx: &Ctx, batch: &Batch, groups: &mut Vec<Group>, cands: &[Candidate], search: Search) {
    improve_scaled(ctx, batch, groups, cands, search, &[]);
}

/// [`improve`] with group `i`'s exact times multiplied by `factors[i]` (1 where absent): what
/// sharing links with the other groups adds to each (`Ctx::shared_times`), taken as fixed while
/// documents move. Groups keep their shapes and places (`search.resize` is ignored), so that each
/// factor stays with its group.
pub fn improve_scaled(ctx: &Ctx, batch: &Batch, groups: &mut Vec<Group>, cands: &[Candidate], search: Search, factors: &[f64]) {
    let resize = search.resize && factors.is_empty();
    let mut s = Local {
        ctx,
        batch,
        cands,
        left: search.budget,
        resize,
        factors,
        groups: std::mem::take(groups),
        time: Vec::new(),
        agg: Vec::new(),
    };
    for i in 0..s.groups.len() {
        let (shape, docs) = (s.groups[i].shape, s.groups[i].docs.clone());
        let t = s.price_at(i, &shape, &docs);
        s.time.push(t);
    }
    s.agg = (0..s.groups.len()).map(|i| s.agg_of(i)).collect();
    while s.left > 0 && s.step() {}
    *groups = s.groups;
}

impl<'a> Local<'a> {
    fn cand(&self, ulysses: u32, ring: u32) -> Option<&'a Candidate> {
        self.cands.iter().find(|c| c.shape.ulysses == ulysses && c.shape.ring == ring)
    }

    fn len(&self, d: usize) -> u32 {
        self.batch.docs[d].len
    }

    fn agg_of(&self, i: usize) -> Option<Agg> {
        let g = &self.groups[i];
        self.cand(g.shape.ulysses, g.shape.ring).map(|c| Agg::of(c, self.batch, &g.docs))
    }

    /// Exact time of `docs` on `shape` (infinite over memory, 0 when empty).
    fn price(&mut self, shape: &GroupShape, docs: &[usize]) -> f64 {
        if docs.is_empty() {
            return 0.0;
        }
        self.left = self.left.saturating_sub(1);
        let lens: Vec<u32> = docs.iter().map(|&d| self.len(d)).collect();
        self.ctx.time_within_memory(&self.ctx.group_cost(shape, &lens))
    }

    /// [`Self::price`] of group `i`, times its factor.
    fn price_at(&mut self, i: usize, shape: &GroupShape, docs: &[usize]) -> f64 {
        self.price(shape, docs) * self.factors.get(i).copied().unwrap_or(1.0)
    }

    /// The best scheme of (u, r) for `docs` and its exact time.
    fn best(&mut self, ulysses: u32, ring: u32, docs: &[usize]) -> (GroupShape, f64) {
        let lens: Vec<u32> = docs.iter().map(|&d| self.len(d)).collect();
        self.left = self.left.saturating_sub(model_scheme_options(&self.ctx.cm.model, ulysses, ring, self.ctx.gpus_per_domain).len());
        let (shape, cost) = self.ctx.best_scheme(ulysses, ring, &lens);
        let t = if docs.is_empty() { 0.0 } else { self.ctx.time_within_memory(&cost) };
        (shape, t)
    }

    /// Estimated exact time of group `i` after its terms become `after`.
    fn estimate(&self, i: usize, after: Agg, empty: bool) -> f64 {
        let g = &self.groups[i];
        match (self.cand(g.shape.ulysses, g.shape.ring), self.agg[i]) {
            _ if empty => 0.0,
            (Some(c), Some(before)) if self.time[i] > 0.0 => self.time[i] + after.time(c) - before.time(c),
            (Some(c), _) => after.time(c),
            _ => f64::INFINITY,
        }
    }

    /// One step: the best-estimated changes of the slowest group, priced until one shortens it.
    fn step(&mut self) -> bool {
        let Some(k) = (0..self.groups.len()).max_by(|&a, &b| self.time[a].total_cmp(&self.time[b]).then(b.cmp(&a))) else {
            return false;
        };
        let mut changes = self.changes(k);
        changes.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, change) in changes.into_iter().take(EXACT_TRIES) {
            if self.left == 0 {
                return false;
            }
            if self.try_apply(k, change) {
                return true;
            }
        }
        false
    }

    /// Candidate changes of group `k` with their estimated new slowest time among the groups
    /// they touch; only those estimated to beat `k`'s time.
    fn changes(&self, k: usize) -> Vec<(f64, Change)> {
        let mut out = Vec::new();
        let tk = self.time[k];
        let gk = &self.groups[k];
        let Some(ck) = self.cand(gk.shape.ulysses, gk.shape.ring) else { return out };
        let Some(ak) = self.agg[k] else { return out };
        let mut docs = gk.docs.clone();
        docs.sort_by(|&a, &b| self.len(b).cmp(&self.len(a)).then(a.cmp(&b)));
        let mut tried: Vec<usize> = docs.iter().copied().take(DOCS_LONGEST).collect();
        let rest = &docs[tried.len()..];
        for i in 0..DOCS_SPREAD.min(rest.len()) {
            tried.push(rest[i * rest.len() / DOCS_SPREAD.min(rest.len())]);
        }
        let mut fastest: Vec<usize> = (0..self.groups.len()).filter(|&j| j != k).collect();
        fastest.sort_by(|&a, &b| self.time[a].total_cmp(&self.time[b]).then(a.cmp(&b)));
        // Groups without documents of one (u, r) are interchangeable as a move's target: the
        // first stands for them all (a large cluster has hundreds of idle GPUs).
        let mut empty_seen = Vec::new();
        let targets: Vec<usize> = (0..self.groups.len())
            .filter(|&j| j != k)
            .filter(|&j| {
                let g = &self.groups[j];
                if !g.docs.is_empty() {
                    return true;
                }
                let key = (g.shape.ulysses, g.shape.ring);
                let first = !empty_seen.contains(&key);
                if first {
                    empty_seen.push(key);
                }
                first
            })
            .collect();
        for &d in &tried {
            let len = self.len(d);
            let without = ak.remove(ck, d, len);
            let empty_k = gk.docs.len() == 1;
            let tk_new = self.estimate(k, without, empty_k);
            if tk_new >= tk {
                continue;
            }
            for &j in &targets {
                let gj = &self.groups[j];
                let Some(cj) = self.cand(gj.shape.ulysses, gj.shape.ring) else { continue };
                let aj = self.agg[j].unwrap_or_else(|| Agg::empty(cj));
                let tokens_j: u64 = gj.docs.iter().map(|&e| u64::from(self.len(e))).sum();
                if !cj.fits(tokens_j + u64::from(len)) {
                    continue;
                }
                let est = tk_new.max(self.estimate(j, aj.add(cj, d, len), false));
                if est < tk {
                    out.push((est, Change::Move { doc: d, to: j }));
                }
            }
            for &j in fastest.iter().take(SWAP_TARGETS) {
                let gj = &self.groups[j];
                let Some(cj) = self.cand(gj.shape.ulysses, gj.shape.ring) else { continue };
                let Some(aj) = self.agg[j] else { continue };
                let tokens_j: u64 = gj.docs.iter().map(|&e| u64::from(self.len(e))).sum();
                let tokens_k: u64 = gk.docs.iter().map(|&e| u64::from(self.len(e))).sum();
                for &e in gj.docs.iter().filter(|&&e| self.len(e) < len) {
                    let le = self.len(e);
                    if !cj.fits(tokens_j + u64::from(len - le)) || !ck.fits(tokens_k - u64::from(len - le)) {
                        continue;
                    }
                    let est_k = self.estimate(k, without.add(ck, e, le), false);
                    let est_j = self.estimate(j, aj.remove(cj, e, le).add(cj, d, len), false);
                    let est = est_k.max(est_j);
                    if est < tk {
                        out.push((est, Change::Swap { doc: d, to: j, back: e }));
                    }
                }
            }
        }
        if self.resize {
            self.resize_changes(k, &fastest, &mut out);
        }
        out
    }

    /// Merges, splits and reshapes of group `k`, estimated by the surrogate alone.
    fn resize_changes(&self, k: usize, fastest: &[usize], out: &mut Vec<(f64, Change)>) {
        let (gpn, gpus) = (self.ctx.gpus_per_domain, self.ctx.gpus);
        let tk = self.time[k];
        let gk = &self.groups[k];
        let sk = gk.shape.size();
        let lens = |docs: &[usize]| docs.iter().map(|&d| self.len(d)).collect::<Vec<u32>>();
        let tokens = |docs: &[usize]| docs.iter().map(|&d| u64::from(self.len(d))).sum::<u64>();
        // The fastest shape of a size for some documents, by the surrogate.
        let shape_for = |size: u32, docs: &[usize]| {
            let l = lens(docs);
            let t = tokens(docs);
            self.cands
                .iter()
                .filter(|c| c.size == size && c.fits(t))
                .map(|c| (c.time_s(l.iter().copied()), c))
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.shape.cmp(&b.1.shape)))
        };
        let mergeable = |s: u32| (s == sk && s < gpn) || (s >= gpn && sk >= gpn && s + sk <= gpus);
        for &j in fastest.iter().filter(|&&j| mergeable(self.groups[j].shape.size())).take(MERGE_PARTNERS) {
            let mut docs = gk.docs.clone();
            docs.extend(&self.groups[j].docs);
            if let Some((est, c)) = shape_for(sk + self.groups[j].shape.size(), &docs) {
                if est < tk {
                    out.push((est, Change::Merge { with: j, ulysses: c.shape.ulysses, ring: c.shape.ring }));
                }
            }
        }
        if gk.docs.len() >= 2 {
            let mut halves = Vec::new();
            if sk >= 2 && sk <= gpn {
                halves.push((sk / 2, sk / 2));
            } else if sk > gpn {
                halves.push((sk - gpn, gpn));
                if (sk / 2) % gpn == 0 && sk / 2 != gpn {
                    halves.push((sk / 2, sk / 2));
                }
            }
            for (a, b) in halves {
                if let Some(split) = self.split(gk, a, b) {
                    if split.0 < tk {
                        out.push(split);
                    }
                }
            }
        }
        if let Some((est, c)) = shape_for(sk, &gk.docs) {
            if (c.shape.ulysses, c.shape.ring) != (gk.shape.ulysses, gk.shape.ring) && est < tk {
                out.push((est, Change::Reshape { ulysses: c.shape.ulysses, ring: c.shape.ring }));
            }
        }
    }

    /// Group `g`'s documents over two groups of `a` and `b` GPUs (each the shape of its size the
    /// surrogate prefers for half the work), by earliest finish; the estimate is the slower part.
    fn split(&self, g: &Group, a: u32, b: u32) -> Option<(f64, Change)> {
        let pick = |size: u32| {
            self.cands
                .iter()
                .filter(|c| c.size == size)
                .min_by(|x, y| {
                    let tx = x.time_s(g.docs.iter().map(|&d| self.len(d)));
                    let ty = y.time_s(g.docs.iter().map(|&d| self.len(d)));
                    tx.total_cmp(&ty).then(x.shape.cmp(&y.shape))
                })
        };
        let (ca, cb) = (pick(a)?, pick(b)?);
        let mut bins = vec![Bin::new(ca), Bin::new(cb)];
        if !earliest_finish(&mut bins, self.batch, &g.docs) || bins.iter().any(|b| b.docs.is_empty()) {
            return None;
        }
        let est = bins.iter().map(Bin::finish_s).fold(0.0, f64::max);
        let part = |b: &Bin<'_>| {
            let mut docs = b.docs.clone();
            docs.sort_unstable();
            (b.cand.shape.ulysses, b.cand.shape.ring, docs)
        };
        Some((est, Change::Split { parts: [part(&bins[0]), part(&bins[1])] }))
    }

    /// Prices `change` exactly and applies it when it shortens group `k`.
    fn try_apply(&mut self, k: usize, change: Change) -> bool {
        let tk = self.time[k];
        let better = |t: f64| t < tk * (1.0 - 1e-9);
        let without = |docs: &[usize], d: usize| docs.iter().copied().filter(|&x| x != d).collect::<Vec<usize>>();
        let with = |docs: &[usize], d: usize| {
            let mut v = docs.to_vec();
            v.push(d);
            v.sort_unstable();
            v
        };
        match change {
            Change::Move { doc, to } => {
                let from_docs = without(&self.groups[k].docs, doc);
                let to_docs = with(&self.groups[to].docs, doc);
                let (sk, sj) = (self.groups[k].shape, self.groups[to].shape);
                let (a, b) = (self.price_at(k, &sk, &from_docs), self.price_at(to, &sj, &to_docs));
                if !better(a.max(b)) {
                    return false;
                }
                self.set(k, sk, from_docs, a);
                self.set(to, sj, to_docs, b);
            }
            Change::Swap { doc, to, back } => {
                let k_docs = with(&without(&self.groups[k].docs, doc), back);
                let j_docs = with(&without(&self.groups[to].docs, back), doc);
                let (sk, sj) = (self.groups[k].shape, self.groups[to].shape);
                let (a, b) = (self.price_at(k, &sk, &k_docs), self.price_at(to, &sj, &j_docs));
                if !better(a.max(b)) {
                    return false;
                }
                self.set(k, sk, k_docs, a);
                self.set(to, sj, j_docs, b);
            }
            Change::Merge { with: j, ulysses, ring } => {
                let mut docs = self.groups[k].docs.clone();
                docs.extend(&self.groups[j].docs);
                docs.sort_unstable();
                let (shape, t) = self.best(ulysses, ring, &docs);
                if !better(t) {
                    return false;
                }
                self.groups[k] = Group { shape, docs };
                self.time[k] = t;
                self.agg[k] = self.agg_of(k);
                self.groups.remove(j);
                self.time.remove(j);
                self.agg.remove(j);
                return true;
            }
            Change::Split { parts } => {
                let [(ua, ra, da), (ub, rb, db)] = parts;
                let (sa, ta) = self.best(ua, ra, &da);
                let (sb, tb) = self.best(ub, rb, &db);
                if !better(ta.max(tb)) {
                    return false;
                }
                self.groups[k] = Group { shape: sa, docs: da };
                self.time[k] = ta;
                self.agg[k] = self.agg_of(k);
                self.groups.push(Group { shape: sb, docs: db });
                self.time.push(tb);
                self.agg.push(self.agg_of(self.groups.len() - 1));
                return true;
            }
            Change::Reshape { ulysses, ring } => {
                let docs = self.groups[k].docs.clone();
                let (shape, t) = self.best(ulysses, ring, &docs);
                if !better(t) {
                    return false;
                }
                self.groups[k].shape = shape;
                self.time[k] = t;
                self.agg[k] = self.agg_of(k);
                return true;
            }
        }
        true
    }

    /// Group `i` now runs `docs`, priced at `t` on `shape`: with shapes free, its scheme is
    /// chosen again (the documents changed, so may the fastest scheme).
    fn set(&mut self, i: usize, shape: GroupShape, docs: Vec<usize>, t: f64) {
        let (shape, t) = if self.resize && !docs.is_empty() { self.best(shape.ulysses, shape.ring, &docs) } else { (shape, t) };
        self.groups[i] = Group { shape, docs };
        self.time[i] = t;
        self.agg[i] = self.agg_of(i);
    }
}
