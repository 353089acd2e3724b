//! Sequence-parallel schemes: how one SP group of `ulysses x ring` GPUs splits the attention of
//! the sequences it runs. The cost model prices a [`GroupShape`]; the planner chooses them; the
//! validator executes them.

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::model::ModelShape;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// DeepSpeed-Ulysses: all-to-all from sequence shards to head shards (ring = 1).
    Ulysses,
    /// Ring attention: KV blocks circulate, each step's transfer overlaps its compute (ulysses = 1).
    Ring,
    /// Llama-3-style context parallel: all-gather K and V over the ring dimension.
    Allgather,
    /// USP: Ulysses inside the `ulysses` ranks, ring attention across the `ring` ranks.
    Usp,
    /// Double ring: the ring dimension as an inner ring inside each node and an outer ring across nodes.
    DoubleRing,
    /// Sequence-aware hierarchical SP: Ulysses inside a node, ring across, and documents placed so that
    /// masked blocks are skipped and no KV goes to a rank that does not need it.
    Hsap,
    /// LASP (Sun et al. 2024, arXiv 2404.02882): linear attention over contiguous sequence
    /// shards, each rank's memory state passed to the next rank point to point, one rank after
    /// another (ulysses = 1). Linear layers only.
    Lasp1,
    /// LASP-2 (Sun et al. 2025, arXiv 2502.07563): one all-gather of every rank's memory state,
    /// overlapped with the intra-chunk computation (ulysses = 1). Linear layers only.
    Lasp2,
    /// LASP-2H (arXiv 2502.07563, section 3.4): LASP-2 on the linear layers and an all-gather of
    /// K and V on the softmax layers, over the same contiguous shards (ulysses = 1).
    Lasp2h,
}

impl Scheme {
    pub const ALL: [Scheme; 6] = [
        Scheme::Ulysses,
        Scheme::Ring,
        Scheme::Allgather,
        Scheme::Usp,
        Scheme::DoubleRing,
        Scheme::Hsap,
    ];

    /// The schemes of linear-attention and hybrid models (the softmax schemes are [`Scheme::ALL`]).
    pub const LINEAR: [Scheme; 3] = [Scheme::Lasp1, Scheme::Lasp2, Scheme::Lasp2h];

    /// Whether the scheme is one of the LASP family, which shard the sequence contiguously and
    /// exchange linear attention's memory states.
    pub fn is_lasp(self) -> bool {
        Scheme::LINEAR.contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Lasp1 => "lasp1",
            Scheme::Lasp2 => "lasp2",
            Scheme::Lasp2h => "lasp2h",
            Scheme::Ulysses => "ulysses",
            Scheme::Ring => "ring",
            Scheme::Allgather => "allgather",
            Scheme::Usp => "usp",
            Scheme::DoubleRing => "double_ring",
            Scheme::Hsap => "hsap",
        }
    }

    pub fn from_name(name: &str) -> Result<Scheme> {
        let every = || Scheme::ALL.into_iter().chain(Scheme::LINEAR);
        every().find(|s| s.name() == name).ok_or_else(|| Error::Unknown {
            kind: "scheme",
            name: name.to_string(),
            known: every().map(|s| s.name().to_string()).collect(),
            hint: "pick one of the schemes listed".into(),
        })
    }
}

/// How a ring scheme lays a sequence's tokens over the ring ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RingVariant {
    /// Contiguous chunks: causal masking leaves the early ranks idle in late steps.
    Basic,
    /// Chunks i and 2r-1-i on rank i: balanced causal work.
    #[default]
    Zigzag,
    /// Token t on rank t mod r: balanced up to one token per row.
    Stripe,
}

impl RingVariant {
    pub const ALL: [RingVariant; 3] = [RingVariant::Basic, RingVariant::Zigzag, RingVariant::Stripe];

    pub fn name(self) -> &'static str {
        match self {
            RingVariant::Basic => "basic",
            RingVariant::Zigzag => "zigzag",
            RingVariant::Stripe => "stripe",
        }
    }
}

/// One SP group's configuration: scheme, degrees and ring layout. Ranks are laid out
/// Ulysses-major: the `ulysses` ranks of one ring position are consecutive, so they share a node
/// whenever `ulysses` divides the GPUs per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupShape {
    pub scheme: Scheme,
    pub ulysses: u32,
    pub ring: u32,
    #[serde(default)]
    pub variant: RingVariant,
}

impl GroupShape {
    pub fn size(&self) -> u32 {
        self.ulysses * self.ring
    }

    /// Checks the degrees against the scheme, the model and the cluster.
    pub fn check(&self, model: &ModelShape, cluster: &Cluster) -> Result<()> {
        let (u, r) = (self.ulysses, self.ring);
        let bad = |what: String, hint: &str| Err(Error::invalid(what, hint));
        if u == 0 || r == 0 {
            return bad(format!("degrees must be at least 1 (ulysses = {u}, ring = {r})"), "use 1 for an unused dimension");
        }
        match self.scheme {
            Scheme::Ulysses if r != 1 => return bad(format!("ulysses with ring = {r}"), "use scheme usp for ulysses x ring"),
            Scheme::Ring | Scheme::Allgather if u != 1 => {
                return bad(format!("{} with ulysses = {u}", self.scheme.name()), "use scheme usp for ulysses x ring")
            }
            s if s.is_lasp() && u != 1 => {
                return bad(format!("{} with ulysses = {u}", s.name()), "the LASP schemes shard the sequence over ring ranks only: use ulysses = 1")
            }
            _ => {}
        }
        self.check_layer_kinds(model)?;
        if model.heads % u != 0 {
            return bad(
                format!("ulysses degree {u} does not divide the model's {} query heads", model.heads),
                "choose a Ulysses degree that divides the number of heads",
            );
        }
        let g = self.size();
        let gpn = cluster.gpus_per_domain();
        if g > gpn && g % gpn != 0 {
            return bad(
                format!("a group of {g} GPUs spans part of an NVLink domain (domains have {gpn} GPUs)"),
                "groups larger than a domain (a node, or a rack on NVL72) must be whole domains",
            );
        }
        if g > cluster.gpus() {
            return bad(
                format!("a group of {g} GPUs is larger than the cluster's {}", cluster.gpus()),
                "raise --nodes or lower the degrees",
            );
        }
        Ok(())
    }

    /// Whether the scheme can run the model's layer kinds: linear layers split over more than one
    /// GPU need a LASP scheme, and LASP-1 and LASP-2 run linear layers only (LASP-2H also
    /// softmax ones).
    fn check_layer_kinds(&self, model: &ModelShape) -> Result<()> {
        let (softmax, linear) = model.layer_counts();
        let scheme = self.scheme;
        if linear > 0 && !scheme.is_lasp() && self.size() > 1 {
            return Err(Error::invalid(
                format!("{} has {linear} linear-attention layers, which scheme {} does not split", model.name, scheme.name()),
                "use scheme lasp1, lasp2 (linear layers only) or lasp2h (hybrids), with the SP degree in ring",
            ));
        }
        if softmax > 0 && matches!(scheme, Scheme::Lasp1 | Scheme::Lasp2) && self.ring > 1 {
            return Err(Error::invalid(
                format!("{} has {softmax} softmax layers; {} splits linear-attention layers only", model.name, scheme.name()),
                "use scheme lasp2h for a hybrid model (all-gather attention on its softmax layers)",
            ));
        }
        Ok(())
    }

    /// How many NVLink domains the group spans (groups are aligned to domain boundaries).
    pub fn nodes(&self, gpus_per_domain: u32) -> u32 {
        self.size().div_ceil(gpus_per_domain)
    }

    /// Key/value heads the busiest Ulysses rank holds: rank i computes query heads
    /// [i h/u, (i+1) h/u) and needs every KV head those map to (query head q uses KV head
    /// q / (h / kv)). Fewer KV heads than ranks means replicated heads; a degree that divides
    /// neither way makes some ranks straddle two KV groups.
    pub fn kv_heads_per_rank(&self, model: &ModelShape) -> u32 {
        let (h, kv, u) = (model.heads, model.kv_heads, self.ulysses.max(1));
        let per_rank = h / u;
        let group = (h / kv).max(1);
        (0..u)
            .map(|i| {
                let (first, last) = (i * per_rank, (i + 1) * per_rank - 1);
                last / group - first / group + 1
            })
            .max()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_heads_per_rank_counts_straddled_groups() {
        let shape = |u| GroupShape { scheme: Scheme::Ulysses, ulysses: u, ring: 1, variant: RingVariant::Zigzag };
        let qwen = ModelShape::resolve("qwen2.5-14b").unwrap(); // 40 heads, 8 KV heads: groups of 5
        // u = 5: 8 query heads per rank; rank 1 holds heads 8-15, KV heads 1, 2 and 3.
        assert_eq!(shape(5).kv_heads_per_rank(&qwen), 3);
        assert_eq!(shape(8).kv_heads_per_rank(&qwen), 1);
        assert_eq!(shape(4).kv_heads_per_rank(&qwen), 2);
        let llama = ModelShape::resolve("llama3-8b").unwrap(); // 32 heads, 8 KV heads
        assert_eq!(shape(16).kv_heads_per_rank(&llama), 1, "replicated");
        assert_eq!(shape(2).kv_heads_per_rank(&llama), 4);
    }
}

impl std::fmt::Display for GroupShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} u{}xr{}", self.scheme.name(), self.ulysses, self.ring)?;
        if matches!(self.scheme, Scheme::Ring | Scheme::Usp | Scheme::DoubleRing) {
            write!(f, " {}", self.variant.name())?;
        }
        Ok(())
    }
}

pub mod layout;
pub use layout::{layout, GroupLayout, HsapParams, Piece, RankShard, Run, Slot};
