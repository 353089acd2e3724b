//! `hsap-tune validate`: run a plan's kernels and collectives on GPUs and compare the times with
//! the prediction, or (`--dry-run`) print what every rank would run. docs/validate.md.

use super::{io_out, thousands};
use crate::cost::CostModel;
use crate::error::{Error, Result};
use crate::gpu::attention::Tiling;
use crate::gpu::harness::{self, HarnessPlan, KernelSet};
use crate::gpu::pricing::CostModelPricer;
use crate::gpu::schedule::{Block, MetaRef, Op, OpKind, Schedule};
use crate::gpu::varlen::VarlenMeta;
use crate::plan::Plan;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The plan to run, written by the planner: plan.jsonl (or plan-header.json) or plan.json.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Only the batch with this index (default: every batch of the plan).
    #[arg(long, value_name = "K")]
    pub batch: Option<usize>,
    /// Print every rank's schedule (kernels, collectives, streams) and predictions; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run, print only this rank's schedule.
    #[arg(long, value_name = "R", requires = "dry_run")]
    pub rank: Option<u32>,
    /// With --dry-run, print JSON: per batch `predicted_step_s` (the plan's), `schedule_step_s`
    /// (the schedule priced by the cost model) and every rank's ops.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Measurements CSV written by rank 0 (docs/measurements.md); a plot goes beside it (.svg).
    #[arg(long, value_name = "FILE", default_value = "measurements.csv")]
    pub out: PathBuf,
    /// Timed repetitions of each batch; medians are reported.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Untimed repetitions before timing.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub warmup: u32,
    /// Seconds to wait for every rank at the rendezvous.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub timeout: u64,
    /// The kernels to run. torch: time every attention call and GEMM of the plan's program with
    /// the stack's production kernel through PyTorch (one process, one GPU), against the
    /// prediction; reference: run the whole plan on every GPU with hsap's own attention kernels,
    /// proving it correct (its times are not comparable with the prediction); cudnn: as torch,
    /// without Python: cuDNN's fused attention (when the stack prices cuDNN's) and cuBLASLt.
    /// Default: torch where PyTorch with CUDA is importable, else reference.
    #[arg(long, value_enum, value_name = "SET")]
    pub kernels: Option<KernelSet>,
}

pub fn validate(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    // One batch of a streamed plan is read without holding the others.
    let plan = match args.batch {
        Some(k) if crate::formats::plan::is_streamed(&args.plan) => Plan::read_batch(&args.plan, k)?,
        _ => Plan::read(&args.plan)?,
    };
    let mut schedules = Schedule::for_plan(&plan, args.batch, Tiling::default())?;
    let pricer = CostModelPricer::new(&plan)?;
    for s in &mut schedules {
        s.price(&pricer);
    }
    if args.dry_run {
        if let Some(r) = args.rank.filter(|&r| r >= plan.cluster.gpus()) {
            return Err(Error::invalid(format!("--rank {r}: the plan runs on {} GPUs", plan.cluster.gpus()), "ranks count from 0"));
        }
        if args.json {
            return write_dry_run_json(&schedules, pricer.cost_model(), args.rank, out);
        }
        return write_dry_run(&plan, &args.plan, &schedules, pricer.cost_model(), args.rank, out).map_err(io_out);
    }
    let set = match args.kernels {
        Some(set) => set,
        // Production kernels when they are there.
        None if crate::gpu::cuda::driver_present() && harness::missing_for_harness()?.is_none() => KernelSet::Torch,
        None => KernelSet::Reference,
    };
    harness::require("validate", set)?;
    let cm = pricer.cost_model();
    let priced = cm.attention.kernel;
    if set != KernelSet::Reference {
        return validate_production(args, set, &schedules, priced, out, err);
    }
    writeln!(
        out,
        "kernels: reference (hsap's CUDA-core attention kernels, kernels/attention.cu; cuBLAS GEMMs; NCCL). This run proves the plan \
         correct; its times are NOT comparable with the prediction, which prices {} attention. Its attention rows are marked \
         kernel={}, which calibrate refuses; time the production kernels with --kernels torch.",
        priced.name(),
        crate::formats::measurements::REFERENCE_KERNEL
    )
    .map_err(io_out)?;
    let options = crate::gpu::cuda::RunOptions {
        repeats: args.repeats,
        warmup: args.warmup,
        timeout: std::time::Duration::from_secs(args.timeout),
        source: format!("validate {}", args.plan.display()),
        out: args.out.clone(),
    };
    crate::gpu::cuda::validate(&plan, &schedules, &options, out, err)
}

/// `validate --kernels torch|cudnn`: the program's attention calls and GEMMs, timed on this
/// process's GPU by the stack's kernel (through the harness, or cuDNN and cuBLASLt), against the
/// cost model's prediction of each.
fn validate_production(args: &ValidateArgs, set: KernelSet, schedules: &[Schedule], kernel: crate::cost::AttentionKernel, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let launch = crate::gpu::launch::Launch::from_env()?;
    if launch.rank != 0 {
        writeln!(err, "rank {}: nothing to do; with --kernels {} rank 0 times every rank's kernels on its GPU", launch.rank, set.name()).map_err(io_out)?;
        return Ok(());
    }
    let source = format!("validate {} --kernels {}", args.plan.display(), set.name());
    let (calls, notes) = HarnessPlan::for_schedules(schedules, kernel, set, args.repeats, args.warmup, &source);
    writeln!(
        out,
        "kernels: {}: {} distinct attention calls and {} GEMMs of the plan's program on GPU {}, attention by {} ({}), GEMMs by {}; collectives are not timed in this mode (--kernels reference runs them)",
        set.name(),
        calls.attention.len(),
        calls.gemms.len(),
        launch.local_rank,
        kernel.name(),
        kernel.measured_names().join(", "),
        if set == KernelSet::Cudnn { "cuBLASLt" } else { "torch.matmul" }
    )
    .map_err(io_out)?;
    if set == KernelSet::Cudnn && kernel != crate::cost::AttentionKernel::Cudnn {
        writeln!(out, "note: the stack prices {} attention; --kernels cudnn times cuDNN's only, so attention is not timed (use --kernels torch)", kernel.name()).map_err(io_out)?;
    }
    for n in &notes {
        writeln!(out, "note: {n}").map_err(io_out)?;
    }
    let dir = args.out.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let dir = dir.join(format!("{}-harness", args.out.file_stem().map_or("measurements".into(), |s| s.to_string_lossy().into_owned())));
    let rows = harness::run_production(set, &calls, &dir, launch.local_rank, err)?;
    crate::formats::measurements::write(&args.out, &rows)?;
    let mut timed: Vec<String> = rows.iter().map(|r| r.kernel_label()).collect();
    timed.sort();
    timed.dedup();
    writeln!(out, "timed with: {}", if timed.is_empty() { "nothing (no kernel took the calls)".into() } else { timed.join(", ") }).map_err(io_out)?;
    writeln!(out, "{} rows written to {}", rows.len(), args.out.display()).map_err(io_out)?;
    crate::gpu::report::write_table(&crate::gpu::report::compare(&rows), out).map_err(io_out)
}

/// A predicted time, `-` where there is none.
fn seconds(t: Option<f64>) -> String {
    t.map_or("-".into(), crate::units::seconds)
}

fn ranks_text(ranks: &[u32]) -> String {
    ranks.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The first and last few entries of a long list.
fn short_list(v: &[u32]) -> String {
    const SHOWN: usize = 6;
    if v.len() <= SHOWN {
        return format!("[{}]", ranks_text(v));
    }
    format!("[{},...,{}] ({} entries)", ranks_text(&v[..SHOWN - 1]), v[v.len() - 1], v.len())
}

/// The dry run as JSON: per batch the two step times and the schedule (every rank's, or `only`'s).
fn write_dry_run_json(schedules: &[Schedule], cm: &CostModel, only: Option<u32>, out: &mut dyn Write) -> Result<()> {
    let batches: Vec<serde_json::Value> = schedules
        .iter()
        .map(|s| {
            let mut s2 = s.clone();
            s2.ranks.retain(|r| only.is_none_or(|o| o == r.rank));
            serde_json::json!({
                "batch": s.batch,
                "predicted_step_s": s.predicted_step_s,
                "schedule_step_s": s.schedule_step_s(cm),
                "schedule": s2,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "batches": batches }))
        .map_err(|e| Error::internal(format!("writing the dry run as JSON: {e}")))?;
    writeln!(out, "{text}").map_err(io_out)
}

fn write_dry_run(plan: &Plan, path: &Path, schedules: &[Schedule], cm: &CostModel, only: Option<u32>, out: &mut dyn Write) -> std::io::Result<()> {
    let c = &plan.cluster;
    writeln!(
        out,
        "plan {}: strategy {}, model {} ({} layers), cluster {} x {} nodes ({} GPUs)",
        path.display(),
        plan.strategy,
        plan.model.name,
        plan.model.layers,
        c.name,
        c.nodes,
        c.gpus()
    )?;
    for s in schedules {
        writeln!(out)?;
        writeln!(
            out,
            "batch {}: {} micro-batches, predicted step {}, schedule step {}",
            s.batch,
            s.microbatches.len(),
            seconds(Some(s.predicted_step_s)),
            seconds(s.schedule_step_s(cm))
        )?;
        for mb in &s.microbatches {
            writeln!(out, "  micro-batch {}: predicted {}", mb.index, seconds(Some(mb.predicted_s)))?;
            for g in &mb.groups {
                writeln!(
                    out,
                    "    group {}: {} on ranks {}; {} documents, {} tokens; shard {} rows; predicted {}",
                    g.index,
                    g.shape,
                    ranks_text(&g.ranks),
                    g.documents,
                    thousands(g.tokens),
                    thousands(u64::from(g.varlen.shard_rows)),
                    seconds(Some(g.predicted_s))
                )?;
            }
        }
        for rs in s.ranks.iter().filter(|r| only.is_none_or(|o| o == r.rank)) {
            writeln!(out)?;
            writeln!(out, "rank {} (node {})", rs.rank, rs.node)?;
            for (m, mem) in rs.membership.iter().enumerate() {
                let g = &s.microbatches[m].groups[mem.group];
                let u = g.shape.ulysses;
                writeln!(
                    out,
                    "  micro-batch {m}: group {} ({}), local rank {} (slot {}, Ulysses index {})",
                    mem.group,
                    g.shape,
                    mem.local_rank,
                    mem.local_rank / u,
                    mem.local_rank % u
                )?;
            }
            for block in &rs.blocks {
                write_block(s, rs.rank, block, out)?;
            }
        }
    }
    Ok(())
}

fn write_block(s: &Schedule, rank: u32, block: &Block, out: &mut dyn Write) -> std::io::Result<()> {
    let mb = block.microbatch.map_or(String::new(), |m| format!(", micro-batch {m}"));
    writeln!(
        out,
        "  {}{mb}, x{}; predicted {} (ops in sequence)",
        block.phase.name(),
        block.repeat,
        seconds(block.predicted_serial_s())
    )?;
    writeln!(out, "    {:>3}  {:<7}  {:<28}  {:<10}  details", "#", "stream", "op", "predicted")?;
    let metas = block.microbatch.map(|m| {
        let mem = s.ranks[rank as usize].membership[m];
        &s.microbatches[m].groups[mem.group].varlen
    });
    for (i, op) in block.ops.iter().enumerate() {
        let mut details = describe(op, metas);
        if !op.waits.is_empty() {
            details.push_str(&format!("; waits for {}", ranks_text(&op.waits.iter().map(|&w| w as u32).collect::<Vec<_>>())));
        }
        writeln!(out, "    {i:>3}  {:<7}  {:<28}  {:<10}  {details}", op.stream.name(), op.kind.name(), seconds(op.predicted_s))?;
    }
    Ok(())
}

fn meta_text(m: &VarlenMeta) -> String {
    format!("{} rows, cu_seqlens {} padded {}", m.rows, short_list(&m.cu_seqlens()), short_list(&m.cu_seqlens_padded))
}

fn describe(op: &Op, varlen: Option<&crate::gpu::varlen::GroupVarlen>) -> String {
    let b = |n: u64| format!("{} bytes", thousands(n));
    match &op.kind {
        OpKind::Gemm { m, n, k, count, .. } => format!("m={m} n={n} k={k}{}", if *count > 1 { format!(" x{count}") } else { String::new() }),
        OpKind::AttnFwd(a) | OpKind::AttnBwd(a) => {
            let mut t = String::new();
            if a.skip {
                t.push_str("SKIPPED (every tile masked); ");
            }
            t.push_str(&format!(
                "heads {} q from {} / {} kv from {}; {} pairs, {} tiles ({} skipped)",
                a.heads.q_heads,
                a.heads.q_head0,
                a.heads.kv_heads,
                a.heads.kv_head0,
                thousands(a.pairs),
                thousands(a.tiles.live + a.tiles.skipped),
                thousands(a.tiles.skipped)
            ));
            if let Some(gv) = varlen {
                // Concatenating every slot is costly on large plans: only when the op reads it.
                let gathered = if a.k_meta == MetaRef::Gathered { gv.gathered() } else { VarlenMeta::concat(&[]) };
                t.push_str(&format!(
                    "; q {}; k (slot {}) {}",
                    meta_text(a.q_meta.resolve(gv, &gathered)),
                    a.origin,
                    meta_text(a.k_meta.resolve(gv, &gathered))
                ));
            }
            t
        }
        OpKind::BwdPreprocess { rows, heads, .. } => format!("{rows} rows x {heads} heads"),
        OpKind::Cast { elems, .. } | OpKind::SumReplicas { elems, .. } => format!("{} elements", thousands(*elems)),
        OpKind::Add { rows, elems, .. } => format!("{rows} rows, {} elements", thousands(*elems)),
        OpKind::AllToAll { peers, bytes, .. } | OpKind::AllGather { peers, bytes, .. } | OpKind::ReduceScatter { peers, bytes, .. } => {
            format!("ranks {}; {}", ranks_text(peers), b(*bytes))
        }
        OpKind::SendRecv { rows, send_to, recv_from, bytes, .. } => format!("to {send_to}, from {recv_from}; {rows} rows; {}", b(*bytes)),
        OpKind::DataParallel { peers, bytes, bucket_bytes, .. } => {
            format!("{} ranks; {} in buckets of {}", peers.len(), b(*bytes), b(*bucket_bytes))
        }
        OpKind::Memory { bytes, .. } => format!("{} read and written", b(*bytes)),
    }
}
