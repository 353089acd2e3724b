//! A rank's blocks from its group's workload (`crate::workload`): the step the cost model priced
//! is the step the validator runs. Every kernel and collective of the workload becomes an op
//! (GEMMs with their shapes, memory-bound passes with their bytes, ZeRO's collectives over the
//! data-parallel ranks); the attention steps become the attention ops of
//! [`super::schedule::group_attention`] (real kernels on the plan's layout), each tagged with the
//! step it runs and the kernel or collective of the workload it stands for.
//!
//! [`group_time_s`] prices the ops back: step by step in lock step, as the cost model prices a
//! workload, each op by the pricer. What the executor adds of its own (casts, zeroing, the
//! attention backward's preprocessing, the key/value gradients sent as a message of their own)
//! is priced too, so the schedule's time exceeds the cost model's by that much.

use super::schedule::{issue_order, AttnOps, Block, Op, OpKind, Outline, Phase, StepAt, Stream, Tensor, Work, GRAD_BUCKET_BYTES};
use crate::cluster::Collective;
use crate::cost::{Pass, Transfer};
use crate::error::{Error, Result};
use crate::workload::{Compute, Kernel, Part, Step, Traffic, Workload, RECOMPUTE};
use std::collections::BTreeMap;

/// The outline of every step: what lock-step pricing needs besides the ops.
pub fn outline(steps: &[Step]) -> Vec<Outline> {
    steps
        .iter()
        .map(|s| Outline {
            label: s.label.clone(),
            overlapped: s.transfer.is_some() && s.overlapped,
            inner: match &s.compute {
                Compute::Steps(inner) => outline(inner),
                Compute::Slots(_) => Vec::new(),
            },
        })
        .collect()
}

fn phase_of(step: &Step) -> Phase {
    if step.label.starts_with(RECOMPUTE) {
        Phase::LayerRecompute
    } else if step.part == Part::Head {
        Phase::Head
    } else if step.pass == Pass::Fwd {
        Phase::LayerForward
    } else {
        Phase::LayerBackward
    }
}

/// The blocks of the rank at `slot` of a group running `work` in micro-batch `microbatch`:
/// layer forward, output head, layer recomputation (when checkpointing), layer backward. `attn`
/// is the rank's attention ops; `dp_peers` the data-parallel ranks ZeRO's collectives span.
pub fn group_blocks(work: &Workload, microbatch: usize, slot: usize, attn: &AttnOps, dp_peers: &[u32]) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    for phase in [Phase::LayerForward, Phase::Head, Phase::LayerRecompute, Phase::LayerBackward] {
        let steps: Vec<(usize, &Step)> = work.steps.iter().enumerate().filter(|(_, s)| phase_of(s) == phase).collect();
        let Some(repeat) = steps.iter().map(|(_, s)| s.repeat).min() else { continue };
        let mut b = BlockOps { slot, dp_peers, ops: Vec::new(), pending: Vec::new() };
        let mut i = 0;
        while i < steps.len() {
            let (k, step) = steps[i];
            if step.part == Part::Attention {
                let end = steps[i..].iter().position(|(_, s)| s.part != Part::Attention).map_or(steps.len(), |n| i + n);
                let core = if step.pass == Pass::Fwd { &attn.fwd } else { &attn.bwd };
                b.attention(&steps[i..end], core)?;
                i = end;
                continue;
            }
            if step.repeat % repeat != 0 {
                return Err(Error::internal(format!("step `{}` runs {} times in a block of {repeat}", step.label, step.repeat)));
            }
            for _ in 0..step.repeat / repeat {
                b.step(k, step);
            }
            i += 1;
        }
        let mut ops = b.ops;
        issue_order(&mut ops);
        blocks.push(Block { phase, microbatch: Some(microbatch), repeat, ops });
    }
    Ok(blocks)
}

/// Ops of one block being laid out.
struct BlockOps<'a> {
    slot: usize,
    dp_peers: &'a [u32],
    ops: Vec<Op>,
    /// Collectives the next compute op waits for (an exposed transfer before its step's compute,
    /// an overlapped one before the next step's).
    pending: Vec<usize>,
}

/// The op a workload kernel of the step labelled `label` becomes.
fn kernel_op(label: &str, kernel: &Kernel) -> Option<OpKind> {
    match *kernel {
        Kernel::Gemm { linear, m, n, k } => Some(OpKind::Gemm {
            name: match ["dgrad", "wgrad", "recompute", "bwd"].into_iter().find(|w| label.contains(w)) {
                Some(what) => format!("{} {what}", linear.name()),
                None => linear.name().to_string(),
            },
            m: m.round() as u64,
            n: n.round() as u64,
            k: k.round() as u64,
            count: 1,
        }),
        Kernel::Memory { traffic, bytes } => Some(OpKind::Memory { name: traffic.name().to_string(), bytes: bytes.round() as u64 }),
        // Attention kernels run as the attention ops of the plan's layout.
        Kernel::Attention { .. } => None,
    }
}

impl BlockOps<'_> {
    fn push(&mut self, mut op: Op) -> usize {
        if op.stream == Stream::Compute {
            op.waits.append(&mut self.pending);
            op.waits.sort_unstable();
            op.waits.dedup();
        }
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// A step outside attention: its collective over the data-parallel ranks, then its kernels.
    fn step(&mut self, k: usize, step: &Step) {
        let at = Some(StepAt { step: k as u32, inner: None });
        let mut after = Vec::new();
        if let Some(t) = step.transfer {
            let tensor = if t.collective == Collective::AllGather { Tensor::Weights } else { Tensor::Grads };
            let bytes = t.bytes.round() as u64;
            let kind = OpKind::DataParallel {
                collective: t.collective,
                tensor,
                peers: self.dp_peers.to_vec(),
                bytes,
                bucket_bytes: GRAD_BUCKET_BYTES.min(bytes).max(1),
            };
            let id = self.push(Op { at, work: Some(Work::Transfer(t)), ..Op::new(Stream::Data, kind) });
            if step.overlapped {
                after.push(id);
            } else {
                self.pending.push(id);
            }
        }
        for kernel in step.compute.kernels_of(self.slot) {
            if let Some(kind) = kernel_op(&step.label, &kernel) {
                self.push(Op { at, work: Some(Work::Kernel(kernel)), ..Op::new(Stream::Compute, kind) });
            }
        }
        self.pending.extend(after);
    }

    /// A run of attention steps: the rank's attention ops, each tagged with its step; the Ulysses
    /// all-to-alls dropped when the run has none (selective recomputation reruns the core only).
    fn attention(&mut self, steps: &[(usize, &Step)], core: &[Op]) -> Result<()> {
        let leaves = leaves(steps);
        let a2a: Vec<&Leaf> = leaves.iter().filter(|l| matches!(l.step.transfer, Some(t) if t.collective == Collective::AllToAll)).collect();
        let keep: Vec<bool> = core.iter().map(|op| !a2a.is_empty() || !matches!(op.kind, OpKind::AllToAll { .. })).collect();
        let n_a2a = core.iter().zip(&keep).filter(|(op, &k)| k && matches!(op.kind, OpKind::AllToAll { .. })).count();
        if n_a2a != a2a.len() {
            return Err(Error::internal(format!("{n_a2a} all-to-alls in the attention ops, {} in the workload", a2a.len())));
        }
        // Each op's step: the step it runs, else (transfers and the executor's own ops) the
        // step of the next op that has one; the outer ring's transfer belongs to its round.
        let mut a2a_seen = 0;
        let mut tagged: Vec<(Op, Option<usize>)> = Vec::new();
        for (op, _) in core.iter().zip(&keep).filter(|(_, &k)| k) {
            let leaf = match &op.kind {
                OpKind::AllToAll { .. } => {
                    a2a_seen += 1;
                    leaves.iter().position(|l| std::ptr::eq(l, a2a[a2a_seen - 1]))
                }
                OpKind::AttnFwd(a) | OpKind::AttnBwd(a) => {
                    leaves.iter().position(|l| l.step.ring_step == Some(a.step)).or_else(|| leaves.iter().position(|l| l.attention(self.slot)))
                }
                OpKind::AllGather { .. } => leaves.iter().position(|l| l.carries(Collective::AllGather)),
                OpKind::ReduceScatter { .. } => leaves.iter().position(|l| l.carries(Collective::ReduceScatter)),
                _ => None,
            };
            tagged.push((op.clone(), leaf));
        }
        // Key/value gradients leave after the step that computed them: the previous op's step.
        let mut previous = None;
        for (op, leaf) in tagged.iter_mut() {
            if leaf.is_none() && matches!(op.kind, OpKind::SendRecv { tensor: Tensor::DKv, .. }) {
                *leaf = previous;
            }
            previous = leaf.or(previous);
        }
        let mut next = None;
        for (op, leaf) in tagged.iter_mut().rev() {
            match leaf {
                Some(l) => next = Some(*l),
                None => *leaf = next,
            }
            if op.stream == Stream::Outer {
                *leaf = leaf.and_then(|l| leaves.iter().position(|o| o.at.step == leaves[l].at.step && o.at.inner.is_none()));
            }
        }
        let last = tagged.iter().rev().find_map(|(_, l)| *l);
        for (_, leaf) in tagged.iter_mut() {
            *leaf = leaf.or(last);
        }
        // Lay the ops out, each leaf's memory-bound kernels (merges, conversions, layout copies)
        // after its last op; remap the waits.
        let last_of: BTreeMap<usize, usize> = tagged.iter().enumerate().filter_map(|(i, (_, l))| l.map(|l| (l, i))).collect();
        let mut index = vec![0; tagged.len()];
        let mut done = vec![false; leaves.len()];
        for (i, (op, leaf)) in tagged.iter().enumerate() {
            let mut op = op.clone();
            let old: Vec<usize> = std::mem::take(&mut op.waits);
            op.waits = old.into_iter().filter_map(|w| core_index(&keep, w).map(|w| index[w])).collect();
            if let Some(l) = *leaf {
                op.at = Some(leaves[l].at);
                op.work = leaves[l].work(&op, self.slot);
            }
            index[i] = self.push(op);
            if let Some(l) = *leaf {
                if last_of.get(&l) == Some(&i) {
                    self.memory(&leaves[l]);
                    done[l] = true;
                }
            }
        }
        for (leaf, _) in leaves.iter().zip(&done).filter(|(_, &d)| !d) {
            self.memory(leaf);
        }
        Ok(())
    }

    /// The leaf's memory-bound passes, but those the executor does with ops of its own (priced
    /// by their shapes): the accumulators' conversion (fp32 accumulators in the kernels, casts
    /// after them) and the key/value gradients' merge (the adds into the travelling gradients).
    fn memory(&mut self, leaf: &Leaf) {
        for kernel in leaf.kernels(self.slot) {
            if matches!(kernel, Kernel::Memory { traffic, .. } if !matches!(traffic, Traffic::Conversion | Traffic::KvGradMerge)) {
                if let Some(kind) = kernel_op(&leaf.step.label, &kernel) {
                    self.push(Op { at: Some(leaf.at), work: Some(Work::Kernel(kernel)), ..Op::new(Stream::Compute, kind) });
                }
            }
        }
    }
}

/// Index among the kept ops of the core op `w`.
fn core_index(keep: &[bool], w: usize) -> Option<usize> {
    keep.get(w).copied().filter(|&k| k).map(|_| keep[..w].iter().filter(|&&k| k).count())
}

/// A step or inner step of an attention run.
struct Leaf<'a> {
    at: StepAt,
    step: &'a Step,
}

fn leaves<'a>(steps: &[(usize, &'a Step)]) -> Vec<Leaf<'a>> {
    let mut out = Vec::new();
    for &(k, step) in steps {
        out.push(Leaf { at: StepAt { step: k as u32, inner: None }, step });
        if let Compute::Steps(inner) = &step.compute {
            for (i, s) in inner.iter().enumerate() {
                out.push(Leaf { at: StepAt { step: k as u32, inner: Some(i as u32) }, step: s });
            }
        }
    }
    out
}

impl Leaf<'_> {
    /// The leaf's own kernels on `slot` (a round's are its inner steps').
    fn kernels(&self, slot: usize) -> Vec<Kernel> {
        match &self.step.compute {
            Compute::Slots(_) => self.step.compute.kernels_of(slot),
            Compute::Steps(_) => Vec::new(),
        }
    }

    fn carries(&self, collective: Collective) -> bool {
        matches!(self.step.transfer, Some(t) if t.collective == collective)
    }

    /// Whether the leaf computes attention with no ring step of its own (one call over all keys).
    fn attention(&self, slot: usize) -> bool {
        self.step.ring_step.is_none() && self.kernels(slot).iter().any(|k| matches!(k, Kernel::Attention { .. }))
    }

    /// What `op` runs of this leaf: its attention kernel, or its collective with the op's bytes
    /// (the executor may send what the model counts as one message in two).
    fn work(&self, op: &Op, slot: usize) -> Option<Work> {
        match &op.kind {
            OpKind::AttnFwd(_) | OpKind::AttnBwd(_) => {
                self.kernels(slot).into_iter().find(|k| matches!(k, Kernel::Attention { .. })).map(Work::Kernel)
            }
            kind => {
                let (collective, bytes, _) = kind.collective()?;
                let t = self.step.transfer.filter(|t| t.collective == collective)?;
                Some(Work::Transfer(Transfer { bytes: bytes as f64, messages: 1, ..t }))
            }
        }
    }
}
