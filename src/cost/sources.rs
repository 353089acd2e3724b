//! Which figures price the model on a calibrated cluster: a fit of the collective itself, the
//! preset's model scaled to a fit of the same link ([`comm::source`]), or the preset's own
//! figures; kernel curves that replace the published tables; overlap figures. `tune`, `predict`
//! and the report print these lines so that a run says what it measured and what it assumed.

use super::comm::{self, Source, Transfer};
use crate::cluster::{Cluster, Collective, LinkLevel};
use std::collections::BTreeSet;

/// One line per collective and link level the run can use (inter-node only on more than one
/// node), then the calibration's kernel curves and overlap figures. Empty for a cluster without
/// a calibration: every figure is the preset's.
pub fn describe(cluster: &Cluster) -> Vec<String> {
    let levels: &[LinkLevel] = if cluster.domains() > 1 { &LinkLevel::ALL } else { &[LinkLevel::Intra] };
    let ranks = |level: LinkLevel| if level == LinkLevel::Intra { cluster.gpus_per_domain() } else { cluster.gpus() };
    let used: Vec<(Collective, LinkLevel, u32)> =
        levels.iter().flat_map(|&l| Collective::ALL.into_iter().map(move |c| (c, l, ranks(l)))).collect();
    lines(cluster, &used)
}

/// [`describe`] for the collectives `transfers` actually priced (a prediction's).
pub fn describe_transfers<'a>(cluster: &Cluster, transfers: impl IntoIterator<Item = &'a Transfer>) -> Vec<String> {
    let used: BTreeSet<(Collective, LinkLevel, u32)> =
        transfers.into_iter().filter(|t| t.ranks > 1).map(|t| (t.collective, t.level, t.ranks)).collect();
    lines(cluster, &used.into_iter().collect::<Vec<_>>())
}

fn lines(cluster: &Cluster, used: &[(Collective, LinkLevel, u32)]) -> Vec<String> {
    let Some(cal) = &cluster.calibration else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    let mut seen: BTreeSet<(Collective, LinkLevel)> = BTreeSet::new();
    for &(collective, level, ranks) in used {
        if !seen.insert((collective, level)) {
            continue;
        }
        let line = match comm::source(cluster, collective, level, ranks) {
            Source::Fitted(f) => format!(
                "{} {}: fitted on {} ranks, {:.1} us + {:.1} GB/s bus bandwidth ({})",
                collective.name(),
                level.name(),
                f.ranks,
                f.latency_us,
                f.busbw_gb_per_s,
                origin(&f.provenance)
            ),
            Source::Scaled { fit, latency, bandwidth } => format!(
                "{} {}: preset scaled to the {} {} fit (latency x{latency:.2}, bandwidth x{bandwidth:.2})",
                collective.name(),
                level.name(),
                fit.op.name(),
                fit.level.name()
            ),
            Source::Preset => format!("{} {}: preset (nothing measured at this level)", collective.name(), level.name()),
        };
        out.push(line);
    }
    for k in &cal.kernels {
        let mut shape = Vec::new();
        if let Some(d) = k.head_dim {
            shape.push(format!("head_dim {d}"));
        }
        if let Some(c) = k.causal {
            shape.push(if c { "causal".to_string() } else { "not causal".to_string() });
        }
        if let Some(v) = k.varlen {
            shape.push(if v { "varlen".to_string() } else { "dense".to_string() });
        }
        if let Some(d) = &k.dtype {
            shape.push(d.clone());
        }
        let shape = if shape.is_empty() { String::new() } else { format!(" ({})", shape.join(", ")) };
        let kernel = k.kernel.as_ref().map_or(String::new(), |name| format!(" of {name}"));
        out.push(format!("{}{kernel}{shape}: fitted curve over {} sizes ({})", k.kind.name(), k.points.len(), origin(&k.provenance)));
    }
    if cal.kernels.is_empty() {
        out.push("kernels: published tables and the preset's peaks (no kernel measured)".into());
    }
    for o in &cal.overlap {
        out.push(format!("overlap of {}: measured {:.2}, not used by the cost model", o.op, o.efficiency));
    }
    out
}

/// The inputs a provenance names: what comes before its first ": ".
fn origin(provenance: &str) -> &str {
    provenance.split(": ").next().unwrap_or(provenance)
}
