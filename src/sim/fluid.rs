//! The fluid simulation of one micro-batch: groups advance through their stages; transfers'
//! network parts progress at rates set by max-min fair sharing of each node's NICs.

use super::timeline::Timeline;
use crate::cluster::{Cluster, Collective, GB};
use crate::cost::links::max_min_shares;
use crate::cost::{comm, CostModel, Program, Stage, Transfer};

/// How one group's micro-batch went.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRun {
    pub time_s: f64,
    /// Compute time of the group's average rank.
    pub compute_s: f64,
    /// Time the group waited on each collective.
    pub exposed_s: Vec<(Collective, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatchRun {
    pub groups: Vec<GroupRun>,
    /// The background transfer (gradient synchronisation), if one ran: (start, end) from the
    /// micro-batch's start.
    pub background: Option<(f64, f64)>,
}

impl MicroBatchRun {
    pub fn time_s(&self) -> f64 {
        self.groups.iter().map(|g| g.time_s).fold(0.0, f64::max)
    }

    pub fn straggler(&self) -> usize {
        let t = self.time_s();
        self.groups.iter().position(|g| g.time_s == t).unwrap_or(0)
    }
}

/// Below these, a time or a byte count left is rounding noise: treating it as done keeps the
/// event loop from stepping by denormal amounts.
const EPS_S: f64 = 1e-12;
const EPS_BYTES: f64 = 1e-3;

/// A transfer in flight: latency first, then the intra-node part and the network part together.
#[derive(Debug, Clone)]
struct Flight {
    collective: Collective,
    latency_left: f64,
    intra_left: f64,
    /// Network bytes left per flow, scaled so that the isolated time matches the cost model's.
    net_left: f64,
    flows_per_node: u32,
    cap_per_flow: f64,
    nodes: Vec<u32>,
    /// A collective over more ranks than the group (ZeRO's data-parallel traffic): every group
    /// takes part in the same collective, so on each node it is one set of flows, not one per group.
    shared: bool,
}

impl Flight {
    /// A transfer that alone takes `isolated_s`, the cost model's time for it.
    fn new(cluster: &Cluster, t: &Transfer, isolated_s: f64, group_nodes: &[u32], group_size: usize) -> Flight {
        let shared = t.ranks as usize > group_size;
        let nodes = if shared { (0..t.nodes.min(cluster.domains())).collect() } else { group_nodes.to_vec() };
        let parts = comm::parts(cluster, t);
        // A faster protocol, a calibrated fit or the stack's fitted factor changes the isolated
        // time: scale every part alike so that alone the transfer takes the cost model's time.
        let datasheet = parts.isolated_s();
        let scale = if datasheet > 0.0 { isolated_s / datasheet } else { 1.0 };
        let demand = parts.network;
        Flight {
            collective: t.collective,
            latency_left: scale * parts.latency_s,
            intra_left: scale * parts.intra_s,
            net_left: demand.map_or(0.0, |d| scale * d.bytes_per_flow),
            flows_per_node: demand.map_or(0, |d| d.flows_per_node),
            cap_per_flow: demand.map_or(f64::INFINITY, |d| d.cap_per_flow),
            nodes,
            shared,
        }
    }

    fn latency_done(&self) -> bool {
        self.latency_left <= EPS_S
    }

    fn on_network(&self) -> bool {
        self.latency_done() && self.net_left > EPS_BYTES
    }

    fn done(&self) -> bool {
        self.latency_done() && self.intra_left <= EPS_S && self.net_left <= EPS_BYTES
    }

    /// Time until the next change, given the network rate (bytes/s per flow).
    fn next_event(&self, rate: f64) -> f64 {
        if !self.latency_done() {
            return self.latency_left;
        }
        let net = if self.net_left > EPS_BYTES { self.net_left / rate } else { f64::INFINITY };
        let intra = if self.intra_left > EPS_S { self.intra_left } else { f64::INFINITY };
        net.min(intra)
    }

    fn advance(&mut self, dt: f64, rate: f64) {
        if !self.latency_done() {
            self.latency_left -= dt;
            return;
        }
        self.intra_left -= dt;
        if self.net_left > EPS_BYTES {
            self.net_left -= dt * rate;
        }
    }
}

/// Where a group is in its program.
struct Cursor<'a> {
    program: &'a Program,
    stage: usize,
    rep: u32,
    /// Compute left in the current stage repetition (starts once an exposed transfer is done).
    compute_left: f64,
    flight: Option<Flight>,
    nodes: Vec<u32>,
    /// GPUs in the group.
    size: usize,
    finished: Option<f64>,
    run: GroupRun,
    in_backward: bool,
    /// When the current stage's transfer finished (for the timeline).
    flight_end: Option<f64>,
}

impl<'a> Cursor<'a> {
    fn stage(&self) -> &'a Stage {
        &self.program.stages[self.stage]
    }

    fn start_stage(&mut self, cluster: &Cluster, now: f64) {
        while self.stage < self.program.stages.len() && self.program.stages[self.stage].repeat == 0 {
            self.stage += 1;
        }
        if self.stage >= self.program.stages.len() {
            self.finished = Some(now);
            return;
        }
        let stage = self.stage();
        if stage.in_backward() {
            self.in_backward = true;
        }
        self.compute_left = stage.compute_s;
        self.flight = stage
            .transfer
            .as_ref()
            .filter(|_| stage.transfer_s > 0.0)
            .map(|t| Flight::new(cluster, t, stage.transfer_s, &self.nodes, self.size));
    }

    /// Computing now: always in overlapped stages, after the transfer in exposed ones.
    fn computing(&self) -> bool {
        self.compute_left > EPS_S && (self.stage().overlapped || self.flight.is_none())
    }

    fn waiting_on(&self) -> Option<Collective> {
        self.flight.as_ref().filter(|_| !self.computing()).map(|f| f.collective)
    }
}

/// Simulates one micro-batch of groups (`programs`, each with its global ranks) starting at
/// `start`. The gradient synchronisation of the step, when given, starts once every group is in
/// its backward pass and shares the network with them.
pub fn simulate_microbatch(
    cm: &CostModel,
    programs: &[(Program, Vec<u32>)],
    start: f64,
    timeline: Option<&mut Timeline>,
) -> MicroBatchRun {
    simulate(cm, programs, start, None, timeline)
}

/// As [`simulate_microbatch`], with a background transfer over all GPUs that starts when every
/// group has entered its backward pass (the data-parallel gradient reduction).
pub fn simulate_microbatch_with_sync(
    cm: &CostModel,
    programs: &[(Program, Vec<u32>)],
    start: f64,
    sync: Transfer,
    timeline: Option<&mut Timeline>,
) -> MicroBatchRun {
    simulate(cm, programs, start, Some(sync), timeline)
}

fn simulate(
    cm: &CostModel,
    programs: &[(Program, Vec<u32>)],
    start: f64,
    sync: Option<Transfer>,
    mut timeline: Option<&mut Timeline>,
) -> MicroBatchRun {
    let cluster = &cm.cluster;
    // NICs are shared per NVLink domain, as the cost model prices them.
    let gpn = cluster.gpus_per_domain();
    let mut cursors: Vec<Cursor> = programs
        .iter()
        .map(|(program, ranks)| {
            let mut nodes: Vec<u32> = ranks.iter().map(|r| r / gpn).collect();
            nodes.dedup();
            Cursor {
                program,
                stage: 0,
                rep: 0,
                compute_left: 0.0,
                flight: None,
                nodes,
                size: ranks.len(),
                finished: None,
                run: GroupRun {
                    time_s: 0.0,
                    compute_s: 0.0,
                    exposed_s: Vec::new(),
                },
                in_backward: false,
                flight_end: None,
            }
        })
        .collect();
    let mut now = start;
    for c in &mut cursors {
        c.start_stage(cluster, now);
    }
    let all_nodes: Vec<u32> = (0..cluster.domains()).collect();
    let mut background: Option<Flight> = None;
    let mut background_span: Option<(f64, f64)> = None;
    let mut sync = sync;
    let mut stage_started: Vec<f64> = vec![now; cursors.len()];
    while cursors.iter().any(|c| c.finished.is_none()) || background.as_ref().is_some_and(|b| !b.done()) {
        if let Some(t) = sync.take_if(|_| cursors.iter().all(|c| c.in_backward || c.finished.is_some())) {
            background = Some(Flight::new(cluster, &t, cm.step_transfer_s(&t), &all_nodes, 0));
            background_span = Some((now - start, f64::NAN));
        }
        let rates = flow_rates(cluster, &cursors, background.as_ref());
        // The next event: a compute or a transfer part finishing somewhere.
        let mut dt = f64::INFINITY;
        for (i, c) in cursors.iter().enumerate().filter(|(_, c)| c.finished.is_none()) {
            if c.computing() {
                dt = dt.min(c.compute_left);
            }
            if let Some(f) = &c.flight {
                dt = dt.min(f.next_event(rates[i]));
            }
        }
        if let Some(b) = background.as_ref().filter(|b| !b.done()) {
            dt = dt.min(b.next_event(rates[cursors.len()]));
        }
        if !dt.is_finite() {
            dt = 0.0;
        }
        for (i, c) in cursors.iter_mut().enumerate().filter(|(_, c)| c.finished.is_none()) {
            if c.computing() {
                c.compute_left -= dt;
            } else if let Some(col) = c.waiting_on() {
                add(&mut c.run.exposed_s, col, dt);
            }
            if let Some(f) = &mut c.flight {
                f.advance(dt, rates[i]);
            }
        }
        if let Some(b) = background.as_mut().filter(|b| !b.done()) {
            b.advance(dt, rates[cursors.len()]);
            if b.done() {
                if let Some(span) = background_span.as_mut() {
                    span.1 = now + dt - start;
                }
            }
        }
        now += dt;
        // Finish what is done and start the next stage repetitions.
        for (i, c) in cursors.iter_mut().enumerate().filter(|(_, c)| c.finished.is_none()) {
            if c.flight.as_ref().is_some_and(Flight::done) {
                c.flight = None;
                c.flight_end = Some(now);
            }
            let compute_done = c.compute_left <= EPS_S;
            if !(compute_done && c.flight.is_none()) {
                continue;
            }
            let stage = c.stage();
            c.run.compute_s += stage.mean_compute_s;
            if let Some(t) = timeline.as_deref_mut() {
                t.stage(&programs[i].1, stage, stage_started[i], c.flight_end.take(), now);
            }
            stage_started[i] = now;
            c.rep += 1;
            if c.rep >= stage.repeat {
                c.rep = 0;
                c.stage += 1;
            }
            c.start_stage(cluster, now);
        }
    }
    MicroBatchRun {
        groups: cursors
            .into_iter()
            .map(|c| {
                let mut run = c.run;
                run.time_s = c.finished.unwrap_or(now) - start;
                run
            })
            .collect(),
        background: background_span,
    }
}

use super::add;

/// The network rate (bytes/s per flow) of every group's transfer in flight, and last the
/// background transfer's: max-min fair shares of each node's NICs, a transfer getting its
/// tightest node's share.
fn flow_rates(cluster: &Cluster, cursors: &[Cursor], background: Option<&Flight>) -> Vec<f64> {
    let flights: Vec<Option<&Flight>> = cursors
        .iter()
        .map(|c| c.flight.as_ref().filter(|f| f.on_network()))
        .chain(std::iter::once(background.filter(|f| f.on_network())))
        .collect();
    // The NICs of one NVLink domain (a node, or a rack's trays on NVL72), as the cost model
    // prices them.
    let capacity = cluster.nics_per_domain() * cluster.inter.nic_gb_per_s * GB;
    let mut rate = vec![f64::INFINITY; flights.len()];
    for node in 0..cluster.domains() {
        // Flows on this node: (flight index, cap) repeated per flow. Shared collectives of one
        // kind are one flight here; the others of that kind follow its rate.
        let mut flows: Vec<(usize, f64)> = Vec::new();
        let mut followers: Vec<(usize, usize)> = Vec::new();
        for (i, f) in flights.iter().enumerate() {
            let Some(f) = f.filter(|f| f.nodes.contains(&node)) else { continue };
            let leader = flights[..i]
                .iter()
                .position(|g| g.is_some_and(|g| g.shared && f.shared && g.collective == f.collective && g.nodes.contains(&node)));
            match leader {
                Some(l) => followers.push((i, l)),
                None => flows.extend(std::iter::repeat_n((i, f.cap_per_flow), f.flows_per_node as usize)),
            }
        }
        for (i, share) in max_min_shares(capacity, &flows) {
            rate[i] = rate[i].min(share);
        }
        for (i, l) in followers {
            rate[i] = rate[i].min(rate[l]);
        }
    }
    rate
}
