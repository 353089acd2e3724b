//! Shared links: a micro-batch's groups using the same NICs at once, priced in closed form.
//!
//! `CostModel::group` prices a group as if it had the network alone. In a micro-batch every group
//! runs at once, and two kinds of traffic meet on a domain's NICs:
//! - **data-parallel collectives** (ZeRO's per-layer weight gathers and gradient reduce-scatters)
//!   are one collective over every rank that all groups take part in: on each domain one set of
//!   flows per kind, however many groups are in it, spanning every domain (a ring over all ranks
//!   runs at its most loaded domain's pace). A gather shares the NICs with a reduce-scatter in
//!   flight at the same time, not with another gather;
//! - **a group's own network transfers** (all-to-alls and ring hops of a group spanning domains)
//!   share its domains' NICs with the data-parallel collectives in flight.
//!
//! Each network transfer's network part is stretched by its expected slowdown over its interval
//! on the groups' timelines: for every state of the other users of its NICs (which other
//! data-parallel kinds are in flight, taken as independent, their shares of the interval as
//! probabilities; which other group's flows are on the domain), the isolated rate over the
//! max-min fair share ([`max_min_shares`]) in that state, weighted by the state's share of the
//! interval. The timelines start isolated and are laid out again with the stretched transfers
//! until they settle ([`CONVERGED`]). No events are simulated: `sim` replays the same programs as an independent
//! check (docs/simulator.md), with the same fairness rule.

use super::comm::{self, NetworkDemand};
use super::{CostModel, Program};
use crate::cluster::{Collective, GB};
use std::collections::HashMap;

/// The timelines are laid out again with the stretched transfers until no group's time moves by
/// more than this share, at most [`MAX_ROUNDS`] times. Each round re-aligns the groups' phases to
/// the stretched times; the rounds alternate above and below their limit (on the Wikipedia
/// trace's first 20 batches the total after 1, 2, 3, 5, 8 and 12 rounds was 55.15, 57.12, 56.55,
/// 56.34, 55.66 and 55.65 s), so stopping early would leave it off by a round's swing.
pub const CONVERGED: f64 = 1e-3;
pub const MAX_ROUNDS: usize = 12;

/// One group of a micro-batch: its program and the domains its ranks are on.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    pub program: &'a Program,
    /// Domains (`Cluster::gpus_per_domain` GPUs each) of its ranks, ascending, no repeats.
    pub domains: &'a [u32],
    /// GPUs in the group.
    pub gpus: u32,
}

/// What one network stage of a group puts on the NICs.
#[derive(Debug, Clone)]
struct NetStage {
    stage: usize,
    demand: NetworkDemand,
    /// A data-parallel collective (over more ranks than the group): its kind.
    data_parallel: Option<Collective>,
    /// Domains its flows load: the group's, or every domain (`None`, a data-parallel ring).
    domains: Option<Vec<u32>>,
    /// The stage's `transfer_s`, and the parts of the transfer's isolated time scaled to it (a faster protocol, a fit, the
    /// stack's factor): latency, intra-domain part, network part.
    isolated_s: f64,
    latency_s: f64,
    intra_s: f64,
    network_s: f64,
    /// Each repetition's transfer time under sharing (isolated at first).
    reps_s: Vec<f64>,
    /// Its flows' relative rates beside no other group's flows ([`rates`]).
    alone: [f64; KINDS + 1],
}

impl NetStage {
    /// Never below the isolated time, which the scaled parts only reach to rounding.
    fn stretched_s(&self, slowdown: f64) -> f64 {
        (self.latency_s + self.intra_s.max(self.network_s * slowdown)).max(self.isolated_s)
    }
}

/// Max-min fair allocation of `capacity` to flows with caps (water-filling): (owner, rate) per
/// flow, in cap order. A flow gets its cap or an equal share of what the smaller flows left.
pub fn max_min_shares(capacity: f64, flows: &[(usize, f64)]) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..flows.len()).collect();
    order.sort_by(|&a, &b| flows[a].1.total_cmp(&flows[b].1));
    let mut classes: Vec<(f64, u32)> = order.iter().map(|&j| (flows[j].1, 1)).collect();
    let level = water_level(capacity, &mut classes);
    order.into_iter().map(|j| (flows[j].0, flows[j].1.min(level))).collect()
}

/// The level of a max-min fair allocation of `capacity` to classes of equal flows, (cap per flow,
/// flows): every flow gets `min(cap, level)`; infinite when every flow gets its cap. Walking the
/// classes by cap, a class below the equal share of what is left takes its caps; the first one
/// above it sets the level for itself and every larger class. Sorts `classes` by cap.
pub fn water_level(capacity: f64, classes: &mut [(f64, u32)]) -> f64 {
    classes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut left = capacity;
    let mut remaining: u32 = classes.iter().map(|c| c.1).sum();
    for &(cap, n) in classes.iter().filter(|c| c.1 > 0) {
        let share = left / f64::from(remaining);
        if cap > share {
            return share;
        }
        left -= cap * f64::from(n);
        remaining -= n;
    }
    f64::INFINITY
}

/// Each group's micro-batch time with the NICs shared (module docs). A group that shares no
/// NIC with another's traffic keeps its isolated time exactly.
///
/// Groups with the same program and no network traffic of their own (only data-parallel
/// collectives, which load every domain alike) have the same timeline and meet the same traffic,
/// so they are priced once ([`twins`]): a micro-batch of 1,024 GPUs holds hundreds of idle or
/// equally loaded groups and a few distinct ones. The result is the same as pricing each: the
/// data-parallel collectives' intervals are merged into their union, which twins do not change.
pub fn shared_times_s(cm: &CostModel, groups: &[Placed]) -> Vec<f64> {
    let cluster = &cm.cluster;
    let capacity = cluster.nics_per_domain() * cluster.inter.nic_gb_per_s * GB;
    let mut all_net: Vec<Vec<NetStage>> = groups.iter().map(|g| net_stages(cm, g, capacity)).collect();
    if all_net.iter().filter(|n| !n.is_empty()).count() < 2 {
        return groups.iter().map(|g| g.program.time_s()).collect();
    }
    let (owner, firsts) = twins(groups, &all_net);
    let unique: Vec<Placed> = firsts.iter().map(|&i| groups[i]).collect();
    let mut net: Vec<Vec<NetStage>> = firsts.iter().map(|&i| std::mem::take(&mut all_net[i])).collect();
    let mut times: Vec<f64> = unique.iter().map(|g| g.program.time_s()).collect();
    let mut rates = Rates { capacity, table: HashMap::new(), last: None };
    for _ in 0..MAX_ROUNDS {
        let lines = Timelines::lay_out(&unique, &net);
        for (g, stages) in net.iter_mut().enumerate() {
            for (s, stage) in stages.iter_mut().enumerate() {
                for i in 0..stage.reps_s.len() {
                    let (a, b) = lines.intervals[g][s][i];
                    let slowdown = lines.slowdown(&mut rates, g, stage, a, b);
                    // Half a step towards the new time: the rounds alternate around their limit,
                    // and the mean of two alternates is nearer it than either.
                    stage.reps_s[i] = 0.5 * (stage.reps_s[i] + stage.stretched_s(slowdown));
                }
            }
        }
        let next: Vec<f64> = unique.iter().zip(&net).map(|(g, n)| group_time_s(g.program, n)).collect();
        let moved = times.iter().zip(&next).map(|(a, b)| (b - a).abs() / b.max(f64::MIN_POSITIVE)).fold(0.0, f64::max);
        times = next;
        if moved < CONVERGED {
            break;
        }
    }
    owner.iter().map(|&u| times[u]).collect()
}

/// Classes of twins: groups with the same program (the same `Program`, by address) and GPUs whose
/// network stages are all data-parallel. Every other group is a class of its own. Returns each
/// group's class and each class's first group, in order of first appearance.
fn twins(groups: &[Placed], net: &[Vec<NetStage>]) -> (Vec<usize>, Vec<usize>) {
    let mut class_of: HashMap<(*const Program, u32), usize> = HashMap::new();
    let mut firsts = Vec::new();
    let owner = groups
        .iter()
        .zip(net)
        .enumerate()
        .map(|(i, (g, n))| {
            let mut new_class = || {
                firsts.push(i);
                firsts.len() - 1
            };
            if n.iter().any(|s| s.domains.is_some()) {
                return new_class();
            }
            let key = (std::ptr::from_ref(g.program), g.gpus);
            match class_of.get(&key) {
                Some(&c) => c,
                None => {
                    let c = new_class();
                    class_of.insert(key, c);
                    c
                }
            }
        })
        .collect();
    (owner, firsts)
}

/// The group's network stages, with their isolated parts.
fn net_stages(cm: &CostModel, g: &Placed, capacity: f64) -> Vec<NetStage> {
    let cluster = &cm.cluster;
    g.program
        .stages
        .iter()
        .enumerate()
        .filter(|(_, s)| s.repeat > 0 && s.transfer_s > 0.0)
        .filter_map(|(i, s)| {
            let t = s.transfer.as_ref()?;
            let parts = comm::parts(cluster, t);
            let demand = parts.network?;
            let data_parallel = (t.ranks > g.gpus).then_some(t.collective);
            let domains = data_parallel.is_none().then(|| g.domains.to_vec());
            let isolated = parts.isolated_s();
            let scale = if isolated > 0.0 { s.transfer_s / isolated } else { 1.0 };
            Some(NetStage {
                stage: i,
                isolated_s: s.transfer_s,
                demand,
                data_parallel,
                domains,
                latency_s: scale * parts.latency_s,
                intra_s: scale * parts.intra_s,
                network_s: scale * demand.bytes_per_flow / demand.isolated_rate,
                reps_s: vec![s.transfer_s; s.repeat as usize],
                alone: rates(capacity, demand, None),
            })
        })
        .collect()
}

/// A program's time with its network stages' repetitions at their shared times: its isolated
/// time plus what each stretched repetition adds, so that a group sharing nothing keeps its
/// isolated time exactly and no group's time falls below it by rounding.
fn group_time_s(program: &Program, net: &[NetStage]) -> f64 {
    let added: f64 = net
        .iter()
        .map(|n| {
            let stage = &program.stages[n.stage];
            n.reps_s.iter().map(|&r| stage.time_with(r) - stage.time_s()).sum::<f64>()
        })
        .sum();
    program.time_s() + added
}

/// Where every group's network transfers run on its current timeline.
struct Timelines {
    /// Per group, per network stage, per repetition: (start, end) of the transfer.
    intervals: Vec<Vec<Vec<(f64, f64)>>>,
    /// Per data-parallel kind: the union of every group's transfers of that kind, merged.
    data_parallel: Vec<(Collective, Vec<(f64, f64)>)>,
    /// Per group with network transfers of its own (not data-parallel): the group, its domains
    /// and those transfers in time order, (start, end, demand).
    own: Vec<(usize, Vec<u32>, Vec<(f64, f64, NetworkDemand)>)>,
}

impl Timelines {
    fn lay_out(groups: &[Placed], net: &[Vec<NetStage>]) -> Timelines {
        let mut intervals = Vec::with_capacity(groups.len());
        let mut data_parallel: Vec<(Collective, Vec<(f64, f64)>)> = Vec::new();
        let mut own: Vec<(usize, Vec<u32>, Vec<(f64, f64, NetworkDemand)>)> = Vec::new();
        for (g, (placed, stages)) in groups.iter().zip(net).enumerate() {
            let mut mine: Vec<Vec<(f64, f64)>> = stages.iter().map(|n| Vec::with_capacity(n.reps_s.len())).collect();
            let mut t = 0.0;
            let mut k = 0;
            for (i, stage) in placed.program.stages.iter().enumerate() {
                let Some(n) = stages.get(k).filter(|n| n.stage == i) else {
                    t += f64::from(stage.repeat) * stage.time_s();
                    continue;
                };
                for &r in &n.reps_s {
                    mine[k].push((t, t + r));
                    t += stage.time_with(r);
                }
                match n.data_parallel {
                    Some(kind) => match data_parallel.iter_mut().find(|(c, _)| *c == kind) {
                        Some((_, list)) => list.extend(&mine[k]),
                        None => data_parallel.push((kind, mine[k].clone())),
                    },
                    None => {
                        if own.last().is_none_or(|o| o.0 != g) {
                            own.push((g, placed.domains.to_vec(), Vec::new()));
                        }
                        if let Some(o) = own.last_mut() {
                            o.2.extend(mine[k].iter().map(|&(a, b)| (a, b, n.demand)));
                        }
                    }
                }
                k += 1;
            }
            intervals.push(mine);
        }
        for (_, list) in &mut data_parallel {
            *list = merge(std::mem::take(list));
        }
        Timelines { intervals, data_parallel, own }
    }

    /// How much longer than alone group `g`'s transfer of `stage` over [a, b] takes its network
    /// part: the isolated rate over the mean rate its flows get over the interval (the states of
    /// the other users of its NICs weighted by their shares of it), on its most loaded domain.
    /// The interval is the transfer's on the current (stretched) timeline, so its bytes move at
    /// the time-averaged rate: the harmonic, not the arithmetic, mean of the slowdowns.
    fn slowdown(&self, rates: &mut Rates, g: usize, stage: &NetStage, a: f64, b: f64) -> f64 {
        let len = b - a;
        if len <= 0.0 {
            return 1.0;
        }
        // Data-parallel kinds that can be in flight beside this transfer, with their shares of
        // its interval: a collective of the same kind is the same collective (no second flow).
        let mut shares = [0.0; KINDS];
        let mut n = 0;
        for (_, list) in self.data_parallel.iter().filter(|(c, _)| Some(*c) != stage.data_parallel) {
            let p = covered(list, a, b) / len;
            if p > 0.0 {
                shares[n] = p;
                n += 1;
            }
        }
        let kinds = &shares[..n];
        let alone = mean_rate(stage.demand, &stage.alone, kinds);
        let mut slowest = alone;
        // Another group's own flows on a domain this transfer loads: a data-parallel ring loads
        // every domain. (The planner never puts two groups' own flows on one domain: groups are
        // whole domains or inside one.)
        let meets = |domains: &[u32]| stage.domains.as_ref().is_none_or(|mine| mine.iter().any(|d| domains.binary_search(d).is_ok()));
        for (_, _, list) in self.own.iter().filter(|o| o.0 != g && meets(&o.1)) {
            // Its transfers run one after another: sorted by start and by end alike.
            let first = list.partition_point(|x| x.1 <= a);
            let (mut rest, mut rate) = (1.0, 0.0);
            for &(s, e, demand) in list[first..].iter().take_while(|x| x.0 < b) {
                let share = (e.min(b) - s.max(a)) / len;
                rest -= share;
                rate += share * mean_rate(stage.demand, &rates.of(stage.demand, demand), kinds);
            }
            if rest < 1.0 {
                slowest = slowest.min(rate + rest.max(0.0) * alone);
            }
        }
        1.0 / slowest
    }
}

/// Data-parallel kinds: at most one ring flow per collective kind.
const KINDS: usize = Collective::ALL.len();

/// A transfer's `own` flows' rate relative to their isolated rate (at most 1) with `n`
/// data-parallel ring flows beside them, `n` = 0..=[`KINDS`], and `other` flows of another group
/// on its domain if any: what [`mean_rate`] weighs.
fn rates(capacity: f64, own: NetworkDemand, other: Option<NetworkDemand>) -> [f64; KINDS + 1] {
    let other = other.map_or((0.0, 0), |o| (o.cap_per_flow, o.flows_per_node));
    let mut rates = [0.0; KINDS + 1];
    for (in_flight, r) in (0u32..).zip(rates.iter_mut()) {
        // A data-parallel collective is one ring flow per domain, capped at its NICs.
        let mut classes = [(own.cap_per_flow, own.flows_per_node), (capacity, in_flight), other];
        let rate = own.cap_per_flow.min(water_level(capacity, &mut classes));
        *r = (rate / own.isolated_rate).min(1.0);
    }
    rates
}

/// [`rates`] beside another group's flows, tabulated once per pricing by the shapes of both
/// transfers' flows: a micro-batch has a few flow shapes and hundreds of thousands of transfers.
/// The last one asked is kept apart: a group's transfers in a row mostly have one shape.
struct Rates {
    capacity: f64,
    table: HashMap<RateKey, [f64; KINDS + 1]>,
    last: Option<(RateKey, [f64; KINDS + 1])>,
}

/// The bits of (own cap, own flows, own isolated rate, other cap, other flows).
type RateKey = [u64; 5];

impl Rates {
    fn of(&mut self, own: NetworkDemand, other: NetworkDemand) -> [f64; KINDS + 1] {
        let key = [
            own.cap_per_flow.to_bits(),
            own.flows_per_node.into(),
            own.isolated_rate.to_bits(),
            other.cap_per_flow.to_bits(),
            other.flows_per_node.into(),
        ];
        if let Some((_, r)) = self.last.filter(|(k, _)| *k == key) {
            return r;
        }
        let capacity = self.capacity;
        let r = *self.table.entry(key).or_insert_with(|| rates(capacity, own, Some(other)));
        self.last = Some((key, r));
        r
    }
}

/// The mean rate of a transfer's `own` flows, relative to their isolated rate, over the states of
/// the data-parallel kinds in flight (each with probability `kinds[i]`, independently), from
/// their `rates` by how many are in flight ([`Rates::of`]).
fn mean_rate(own: NetworkDemand, rates: &[f64; KINDS + 1], kinds: &[f64]) -> f64 {
    if own.flows_per_node == 0 {
        return 1.0;
    }
    let mut mean = 0.0;
    for state in 0..1usize << kinds.len() {
        let mut p = 1.0;
        let mut in_flight = 0;
        for (i, &q) in kinds.iter().enumerate() {
            if state & (1 << i) != 0 {
                p *= q;
                in_flight += 1;
            } else {
                p *= 1.0 - q;
            }
        }
        mean += p * rates[in_flight];
    }
    mean
}

/// Intervals sorted and overlapping ones joined.
fn merge(mut list: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    list.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(list.len());
    for (a, b) in list {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Length of [a, b] that merged, sorted `list` covers.
fn covered(list: &[(f64, f64)], a: f64, b: f64) -> f64 {
    let first = list.partition_point(|x| x.1 <= a);
    list[first..].iter().take_while(|x| x.0 < b).map(|x| x.1.min(b) - x.0.max(a)).filter(|&l| l > 0.0).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, LinkLevel};
    use crate::cost::{Part, Stage, TrainConfig, Transfer};
    use crate::model::ModelShape;
    use crate::scheme::{GroupShape, RingVariant, Scheme};

    #[test]
    fn classes_of_equal_flows_share_as_their_flows_do_one_by_one() {
        // 4 flows capped at 5, 2 uncapped (cap 100) and 3 capped at 30 on 60: the 5s take 20, the
        // other five split 40 equally (8 each, under 30 and 100).
        let mut classes = [(30.0, 3), (5.0, 4), (100.0, 2)];
        assert_eq!(water_level(60.0, &mut classes), 8.0);
        let flows: Vec<(usize, f64)> = [(0, 30.0); 3].into_iter().chain([(1, 5.0); 4]).chain([(2, 100.0); 2]).collect();
        let shares = max_min_shares(60.0, &flows);
        assert!(shares.iter().all(|&(o, r)| r == if o == 1 { 5.0 } else { 8.0 }), "{shares:?}");
        // Everyone under the share: every flow its cap, the level infinite.
        assert_eq!(water_level(60.0, &mut [(5.0, 2), (10.0, 1), (0.0, 0)]), f64::INFINITY);
    }

    #[test]
    fn water_filling_gives_capped_flows_their_cap_and_splits_the_rest() {
        // 48 GB/s over flows capped at 5, 24 and 24: 5, then 21.5 each.
        let r = max_min_shares(48.0, &[(0, 24.0), (1, 5.0), (2, 24.0)]);
        let get = |i| r.iter().find(|(k, _)| *k == i).unwrap().1;
        assert_eq!((get(0), get(1), get(2)), (21.5, 5.0, 21.5));
    }

    /// a100-40g-ib400 on two nodes: 2 NICs x 24 GB/s per node.
    fn model() -> CostModel {
        let cluster = Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(2).unwrap();
        CostModel::new(ModelShape::resolve("gpt-7b").unwrap(), cluster, TrainConfig::default()).unwrap()
    }

    /// A program of one exposed stage carrying `t`, priced at its parts' isolated time (so that
    /// nothing is scaled), of `gpus` GPUs.
    fn program(cm: &CostModel, t: Transfer, gpus: u32) -> Program {
        let shape = GroupShape { scheme: Scheme::Ulysses, ulysses: gpus, ring: 1, variant: RingVariant::Zigzag };
        crate::cost::one_transfer(shape, Part::Linear, t, comm::parts(&cm.cluster, &t).isolated_s())
    }

    /// ZeRO's collective of one layer over all 16 GPUs (one 400 MB buffer): a ring across both
    /// nodes, 15/16 of it over each node's 48 GB/s.
    fn data_parallel(collective: Collective) -> Transfer {
        Transfer::new(collective, 16, 2, 4e8)
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b
    }

    #[test]
    fn two_groups_on_one_nic_pay_twice_the_network_time_of_one() {
        let cm = model();
        let gather = data_parallel(Collective::AllGather);
        let parts = comm::parts(&cm.cluster, &gather);
        let net = parts.network.unwrap();
        assert_eq!(net.isolated_rate, 48e9);
        let network_s = net.bytes_per_flow / net.isolated_rate;
        assert!(network_s > parts.intra_s, "the network part bounds the transfer");
        // One group alone (1 GPU on node 0, the other GPUs idle): its isolated time exactly.
        let a = program(&cm, gather, 1);
        let alone = cm.shared_times_s(&[(&a, &[0])]);
        assert_eq!(alone, vec![a.time_s()]);
        // Another group's gather at the same time is the same collective: nothing shared.
        let same = cm.shared_times_s(&[(&a, &[0]), (&program(&cm, gather, 1), &[1])]);
        assert_eq!(same, vec![a.time_s(); 2]);
        // A reduce-scatter of as many bytes beside it: two flows on each node's 48 GB/s, each at
        // 24 GB/s for the whole transfer. Each group's time is the latency plus twice the
        // network time (to the model's convergence, `CONVERGED`).
        let reduce = program(&cm, data_parallel(Collective::ReduceScatter), 1);
        let shared = cm.shared_times_s(&[(&a, &[0]), (&reduce, &[1])]);
        let expected = parts.latency_s + 2.0 * network_s;
        for t in shared {
            assert!(rel(t, expected) < CONVERGED, "{t} vs {expected}");
        }
    }

    #[test]
    fn a_groups_all_to_all_shares_its_nics_with_the_data_parallel_ring() {
        // A 16-GPU all-to-all across both nodes: 8 flows per node of at most one NIC (24 GB/s),
        // 6 GB/s each alone. Beside a long all-gather of another group (one ring flow per node,
        // capped at 48 GB/s), 9 flows share 48 GB/s: 16/3 GB/s each, 9/8 of the network time.
        let cm = model();
        let a2a = Transfer::new(Collective::AllToAll, 16, 2, 1e8);
        assert_eq!(a2a.level, LinkLevel::Inter);
        let parts = comm::parts(&cm.cluster, &a2a);
        let net = parts.network.unwrap();
        assert_eq!((net.flows_per_node, net.isolated_rate), (8, 6e9));
        let group = program(&cm, a2a, 16);
        // The gather outlasts the all-to-all however it is slowed: it covers the whole interval.
        let long = program(&cm, Transfer::new(Collective::AllGather, 32, 2, 4e10), 1);
        let times = cm.shared_times_s(&[(&group, &(0..16).collect::<Vec<u32>>()), (&long, &[0])]);
        let network_s = net.bytes_per_flow / net.isolated_rate;
        let expected = parts.latency_s + parts.intra_s.max(network_s * 9.0 / 8.0);
        assert!(rel(times[0], expected) < CONVERGED, "{} vs {expected}", times[0]);
    }

    #[test]
    fn traffic_that_never_meets_shares_nothing() {
        // The gather runs while the other group computes, then the reduce-scatter while the first
        // computes: no interval overlaps, both keep their isolated times.
        let cm = model();
        let mut a = program(&cm, data_parallel(Collective::AllGather), 1);
        let mut b = program(&cm, data_parallel(Collective::ReduceScatter), 1);
        let long = 2.0 * a.time_s().max(b.time_s());
        let idle = Stage { compute_s: long, mean_compute_s: long, transfer: None, transfer_s: 0.0, ..a.stages[0].clone() };
        a.stages.push(idle.clone());
        b.stages.insert(0, idle);
        let times = cm.shared_times_s(&[(&a, &[0]), (&b, &[1])]);
        assert_eq!(times, vec![a.time_s(), b.time_s()]);
    }

    #[test]
    fn twins_priced_once_give_what_pricing_each_gives() {
        // Three gathering groups that share one program (twins, priced once) and the same three
        // as separate copies (priced each), beside an all-to-all across both nodes and a
        // reduce-scatter that starts half-way through the gathers: the same times, to the bit.
        let cm = model();
        let a2a = program(&cm, Transfer::new(Collective::AllToAll, 16, 2, 1e8), 16);
        let gather = program(&cm, data_parallel(Collective::AllGather), 1);
        let mut reduce = program(&cm, data_parallel(Collective::ReduceScatter), 1);
        let half = 0.5 * gather.time_s();
        let wait = Stage { compute_s: half, mean_compute_s: half, transfer: None, transfer_s: 0.0, ..reduce.stages[0].clone() };
        reduce.stages.insert(0, wait);
        let copies: Vec<Program> = (0..3).map(|_| gather.clone()).collect();
        let all: Vec<u32> = (0..16).collect();
        let (r0, r1, r2, r9) = ([0u32], [1u32], [2u32], [9u32]);
        let twins = [(&a2a, &all[..]), (&gather, &r0[..]), (&reduce, &r1[..]), (&gather, &r2[..]), (&gather, &r9[..])];
        let apart = [(&a2a, &all[..]), (&copies[0], &r0[..]), (&reduce, &r1[..]), (&copies[1], &r2[..]), (&copies[2], &r9[..])];
        let times = cm.shared_times_s(&twins);
        assert_eq!(times, cm.shared_times_s(&apart));
        // Not a micro-batch that shares nothing: every group waits on another's traffic.
        for (t, (p, _)) in times.iter().zip(&twins) {
            assert!(*t > p.time_s() * (1.0 + CONVERGED), "{t} vs alone {}", p.time_s());
        }
    }
}
