//! `hsap-tune predict`: what a setup costs, without a cluster. Prices a scenario file (model,
//! cluster, strategy, batch) with the cost model, or prints the model's comparison with the
//! published measurements it is validated against.

use super::io_out;
use crate::cost::scenario::{predict_file_with_stack, Prediction};
use crate::cost::validate;
use crate::error::Result;
use crate::units::{gib, ms, percent};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Scenario file (TOML, or JSON by its .json extension): scope, passes, dtype, [model],
    /// [cluster], [strategy], [batch]. See docs/examples/.
    #[arg(long, value_name = "FILE", required_unless_present = "reference", conflicts_with = "reference")]
    pub scenario: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The software stack, in place of the scenario's [stack]: a preset of models/stacks/ or a
    /// stack TOML.
    #[arg(long, value_name = "NAME|FILE", conflicts_with = "reference")]
    pub stack: Option<String>,
    /// Instead of a scenario, compare the model with a published measurement table.
    #[arg(long, value_enum, value_name = "TABLE")]
    pub reference: Option<ReferenceTable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReferenceTable {
    /// USP's ulysses x ring benchmark on 8x A100 (reference/usp_8xA100_nvlink_fwd_iters_per_s.csv).
    Usp,
    /// The FlashAttention-2/3 kernel tables on one GPU.
    Fa,
    /// FlexSP's effective all-to-all bandwidth by SP degree.
    Alltoall,
    /// ring-flash-attention's efficiency against single-GPU FlashAttention.
    Ring,
}

pub fn predict(args: &PredictArgs, out: &mut dyn Write, _err: &mut dyn Write) -> Result<()> {
    if let Some(table) = args.reference {
        return reference(table, args.json, out);
    }
    let Some(path) = &args.scenario else {
        return Err(crate::error::Error::invalid("predict needs --scenario FILE or --reference TABLE", "see hsap-tune predict --help"));
    };
    let prediction = predict_file_with_stack(path, args.stack.as_deref())?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &prediction).map_err(|e| io_out(e.into()))?;
        return writeln!(out).map_err(io_out);
    }
    write_table(&prediction, out).map_err(io_out)
}

fn write_table(p: &Prediction, out: &mut dyn Write) -> std::io::Result<()> {
    let s = &p.scenario;
    writeln!(
        out,
        "scenario     {} {} {} | {} on {} ({} GPUs, {} node{})",
        s.scope.name(), s.passes.name(), s.dtype.name(), s.model, s.cluster, s.gpus, s.nodes, if s.nodes == 1 { "" } else { "s" }
    )?;
    let pipeline = if s.pp > 1 {
        format!(" x pp {} ({}, {} chunk{})", s.pp, s.pp_schedule.name(), s.pp_virtual, if s.pp_virtual == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    writeln!(
        out,
        "strategy     {} x tp {}{pipeline} x dp {} | ZeRO {} | checkpointing {} | {} | stack {}",
        s.group, s.tp, s.dp, s.zero, s.checkpointing.name(), s.attention_kernel.name(), s.stack
    )?;
    writeln!(
        out,
        "batch        {} sequence{}, {} tokens, {} micro-batch{} per replica",
        s.sequences,
        if s.sequences == 1 { "" } else { "s" },
        super::thousands(s.tokens),
        s.microbatches,
        if s.microbatches == 1 { "" } else { "es" }
    )?;
    match (p.time_s_low, p.time_s_high) {
        (Some(low), Some(high)) => writeln!(
            out,
            "time         {} ({} to {}: the stack's development-set error bar)",
            ms(p.time_s),
            ms(low),
            ms(high)
        )?,
        _ => writeln!(out, "time         {}", ms(p.time_s))?,
    }
    writeln!(
        out,
        "throughput   {:.1} TFLOP/s per GPU executed, {:.1} model TFLOP/s per GPU (Megatron's count), MFU {:.1}%",
        p.tflops_per_gpu,
        p.model_tflops_per_gpu,
        100.0 * p.mfu
    )?;
    let fit = if p.fits_in_memory {
        "fits".to_string()
    } else {
        format!("DOES NOT FIT: {} over", gib(p.over_memory_bytes))
    };
    writeln!(
        out,
        "memory       {} of {} per GPU ({fit}): states {}, activations {}, logits {}, buffers {}",
        gib(p.memory_bytes_per_gpu),
        gib(p.memory_limit_bytes),
        gib(p.memory.model_states_bytes),
        gib(p.memory.activations_bytes),
        gib(p.memory.logits_bytes),
        gib(p.memory.buffers_bytes)
    )?;
    let b = &p.breakdown;
    writeln!(out, "breakdown (average GPU)   total        on the critical path")?;
    writeln!(out, "  {:<22} {:<12} {}", "compute", ms(b.compute_s), ms(b.compute_s))?;
    for c in &b.collectives {
        writeln!(out, "  {:<22} {:<12} {}", c.collective.name(), ms(c.total_s), ms(c.exposed_s))?;
    }
    if b.data_parallel_total_s > 0.0 || b.optimizer_s > 0.0 {
        let sync = b.data_parallel_exposed_s - b.optimizer_s;
        writeln!(out, "  {:<22} {:<12} {}", "data-parallel sync", ms(b.data_parallel_total_s), ms(sync))?;
        writeln!(out, "  {:<22} {:<12} {}", "optimizer", ms(b.optimizer_s), ms(b.optimizer_s))?;
    }
    writeln!(out, "  {:<22} {:<12} {}", "idle (imbalance)", ms(b.idle_s), ms(b.idle_s))?;
    if b.pipeline_bubble_s > 0.0 || b.pipeline_p2p_s > 0.0 {
        writeln!(out, "  {:<22} {:<12} (in idle; stage transfers {})", "pipeline bubble", ms(b.pipeline_bubble_s), ms(b.pipeline_p2p_s))?;
    }
    if b.stack_fitted_s != 0.0 {
        writeln!(out, "  {:<22} {:<12} {} (the stack's fitted time factor: included in the terms above)", "stack, fitted", ms(b.stack_fitted_s), ms(b.stack_fitted_s))?;
    }
    writeln!(out, "  {:<22} {} of communication hidden behind compute", "overlap", ms(b.overlap_s))?;
    write_uncalibrated(p.uncalibrated.as_deref(), out)?;
    write_priced_by(&p.priced_by, out)
}

/// A preset with derived figures says so, and why.
pub(crate) fn write_uncalibrated(why: Option<&str>, out: &mut dyn Write) -> std::io::Result<()> {
    match why {
        Some(why) => writeln!(out, "{:<13}{why}", "UNCALIBRATED"),
        None => Ok(()),
    }
}

/// The calibrated cluster's figures behind a prediction (`cost::sources`), one per line.
pub(crate) fn write_priced_by(lines: &[String], out: &mut dyn Write) -> std::io::Result<()> {
    for (i, line) in lines.iter().enumerate() {
        writeln!(out, "{:<13}{line}", if i == 0 { "priced by" } else { "" })?;
    }
    Ok(())
}

fn reference(table: ReferenceTable, json: bool, out: &mut dyn Write) -> Result<()> {
    macro_rules! emit {
        ($rows:expr, $table:expr) => {{
            let rows = $rows;
            if json {
                serde_json::to_writer_pretty(&mut *out, &rows).map_err(|e| io_out(e.into()))?;
                return writeln!(out).map_err(io_out);
            }
            $table(&rows, &mut *out).map_err(io_out)
        }};
    }
    match table {
        ReferenceTable::Usp => emit!(validate::usp()?, usp_table),
        ReferenceTable::Fa => emit!(validate::fa()?, fa_table),
        ReferenceTable::Alltoall => emit!(validate::flexsp_alltoall()?, alltoall_table),
        ReferenceTable::Ring => emit!(validate::ring_flash_attn()?, ring_table),
    }
}

fn usp_table(rows: &[validate::UspCheck], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "USP attention forward, 8x A100 (reference/usp_8xA100_nvlink_fwd_iters_per_s.csv)")?;
    writeln!(out, "line  seqlen heads/kv  hd  u r variant           measured predicted time error unexplained")?;
    for c in rows {
        writeln!(
            out,
            "{:>4} {:>7} {:>5}/{:<3} {:>3}  {} {} {:<16} {:>8.3} {:>9.3} {:>+9.1}% {:>+8.2} ms",
            c.line, c.seqlen, c.heads, c.kv_heads, c.head_dim, c.ulysses, c.ring, c.variant,
            c.measured_iters_per_s, c.predicted_iters_per_s, 100.0 * c.time_error, c.unexplained_ms
        )?;
    }
    let long: Vec<f64> = rows.iter().filter(|c| c.seqlen >= 131_072).map(|c| c.time_error).collect();
    writeln!(
        out,
        "median |time error|: {} over {} cells, {} over the {} cells at 128K",
        median_pct(rows.iter().map(|c| c.time_error)),
        rows.len(),
        median_pct(long.iter().copied()),
        long.len()
    )?;
    writeln!(out, "\nsplit the model ranks fastest, per row group and variant column")?;
    for r in validate::usp_rankings(rows) {
        writeln!(
            out,
            "{:>7} {:>3}x{:<3} g{} {:<16} model {:?} measured best {:?}: pick measured {:.1}% slower",
            r.seqlen, r.heads, r.head_dim, r.group_num, r.variant, r.model_pick, r.measured_best, 100.0 * r.shortfall
        )?;
    }
    Ok(())
}

fn fa_table(rows: &[validate::FaCheck], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "FlashAttention kernel tables on one GPU (TFLOP/s)")?;
    for c in rows {
        writeln!(
            out,
            "{:?} line {:>2} {:<17} causal={:<5} d={:<3} L={:<5} measured {:>5.0} predicted {:>6.1} error {:>+5.1}%",
            c.table, c.line, c.implementation, c.causal, c.head_dim, c.seqlen, c.measured_tflops, c.predicted_tflops, 100.0 * c.error
        )?;
    }
    writeln!(out, "median |error|: {} over {} cells", median_pct(rows.iter().map(|c| c.error)), rows.len())
}

/// The median |error| of a table as a percentage, `-` for no cells.
fn median_pct(errors: impl Iterator<Item = f64>) -> String {
    validate::median_abs(errors).map_or("-".into(), percent)
}

fn alltoall_table(rows: &[validate::AlltoallCheck], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "FlexSP effective all-to-all bandwidth, a100-40g-ib400 (4K-token sequence, hidden 4096)")?;
    for c in rows {
        writeln!(
            out,
            "sp {:>2} ({} node(s)) {:>9.0} B/rank: measured {:>6.2} GB/s, predicted {:>6.2} GB/s, error {:>+5.1}%",
            c.sp_degree, c.nodes, c.bytes_per_rank, c.measured_gb_per_s, c.predicted_gb_per_s, 100.0 * c.error
        )?;
    }
    Ok(())
}

fn ring_table(rows: &[validate::EfficiencyCheck], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "ring-flash-attention efficiency vs single-GPU FlashAttention / 8 (8x A100, Llama-3-8B attention)")?;
    for c in rows {
        writeln!(out, "{:<50} measured {:.3} predicted {:.3} error {:>+5.1}%", c.item, c.measured, c.predicted, 100.0 * c.error)?;
    }
    Ok(())
}
