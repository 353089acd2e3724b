//! Closed forms of the cost model against values computed by hand in the comments.

use hsap::cluster::{Cluster, Collective};
use hsap::cost::validate::attention_shape;
use hsap::cost::{comm, Checkpointing, CostModel, Pass, Program, Scope, TrainConfig, Transfer};
use hsap::model::ModelShape;
use hsap::scheme::{GroupShape, RingVariant, Scheme};

fn model(m: ModelShape, cluster: &str, nodes: u32, train: TrainConfig) -> CostModel {
    let c = Cluster::resolve(cluster).unwrap().with_nodes(nodes).unwrap();
    CostModel::new(m, c, train).unwrap()
}

fn shape(scheme: Scheme, u: u32, r: u32, variant: RingVariant) -> GroupShape {
    GroupShape { scheme, ulysses: u, ring: r, variant }
}

fn fwd_only() -> TrainConfig {
    TrainConfig { backward: false, zero: 0, ..TrainConfig::default() }
}

fn transfers<'a>(p: &'a Program, prefix: &'a str) -> impl Iterator<Item = (&'a str, Transfer)> + 'a {
    p.stages.iter().filter(move |s| s.label.starts_with(prefix)).filter_map(|s| s.transfer.map(|t| (s.label.as_str(), t)))
}

#[test]
fn flops_of_packed_causal_attention() {
    // Documents of 1000 and 24 tokens packed on one GPU: 1000 x 1001 / 2 + 24 x 25 / 2 = 500,800
    // pairs (the 24,000 pairs across the two documents are masked), each 4 x 128 FLOPs for each
    // of 32 heads: 500,800 x 32 x 512 = 8,205,107,200 forward.
    let m = attention_shape("a", 32, 8, 128);
    let one = shape(Scheme::Ulysses, 1, 1, RingVariant::Zigzag);
    let cm = model(m.clone(), "dgx-a100-80g", 1, fwd_only());
    let p = cm.program_batch(&one, &[vec![1000, 24]], Scope::Attention);
    assert_eq!(p.flops_per_gpu, 8_205_107_200.0);
    assert_eq!(p.model_flops_per_gpu, 8_205_107_200.0);
    // One 1024-token document instead: 524,800 pairs, more than the packed pair.
    let whole = cm.program_batch(&one, &[vec![1024]], Scope::Attention);
    assert_eq!(whole.flops_per_gpu, 524_800.0 * 32.0 * 512.0);
    // Backward is 2.5x forward (FlashAttention's count): 3.5x with no recomputation; full
    // checkpointing runs the forward again: 4.5x executed, still 3.5x of model FLOPs.
    let none = TrainConfig { zero: 0, checkpointing: Checkpointing::None, ..TrainConfig::default() };
    let p = model(m.clone(), "dgx-a100-80g", 1, none).program_batch(&one, &[vec![1000, 24]], Scope::Attention);
    assert_eq!(p.flops_per_gpu, 3.5 * 8_205_107_200.0);
    let full = TrainConfig { zero: 0, checkpointing: Checkpointing::Full, ..TrainConfig::default() };
    let p = model(m.clone(), "dgx-a100-80g", 1, full).program_batch(&one, &[vec![1000, 24]], Scope::Attention);
    assert_eq!(p.flops_per_gpu, 4.5 * 8_205_107_200.0);
    assert_eq!(p.model_flops_per_gpu, 3.5 * 8_205_107_200.0);
    // Ulysses over 2 GPUs: each computes 16 of the 32 heads over every token: half.
    let u2 = shape(Scheme::Ulysses, 2, 1, RingVariant::Zigzag);
    let p = cm.program_batch(&u2, &[vec![1000, 24]], Scope::Attention);
    assert_eq!(p.flops_per_gpu, 8_205_107_200.0 / 2.0);
}

#[test]
fn ulysses_all_to_all_volume_with_replicated_kv_heads() {
    // Llama 3 8B (32 query heads, 8 KV heads of 128) over one 16,384-token sequence.
    let llama = ModelShape::resolve("llama3-8b").unwrap();
    // u = 8 inside a DGX H100: 2048 tokens per rank; Q = 2048 x 32 x 128 x 2 B = 16,777,216;
    // K and V = 2048 x 8 x 128 x 2 B = 4,194,304 each; the output back as much as Q.
    let cm = model(llama.clone(), "dgx-h100", 1, fwd_only());
    let p = cm.program(&shape(Scheme::Ulysses, 8, 1, RingVariant::Zigzag), &[16384]);
    let a2a: Vec<(&str, f64)> = transfers(&p, "ulysses all_to_all").map(|(l, t)| (l, t.bytes)).collect();
    assert_eq!(
        a2a,
        [
            ("ulysses all_to_all in q fwd", 16_777_216.0),
            ("ulysses all_to_all in k fwd", 4_194_304.0),
            ("ulysses all_to_all in v fwd", 4_194_304.0),
            ("ulysses all_to_all out out fwd", 16_777_216.0)
        ]
    );
    // u = 16 over two nodes: more ranks than KV heads, so K and V are replicated to 16 heads:
    // 1024 tokens x 16 x 128 x 2 B = 4,194,304 each (not 2,097,152), Q 1024 x 32 x 256 = 8,388,608.
    let cm = model(llama, "dgx-h100", 2, fwd_only());
    let p = cm.program(&shape(Scheme::Ulysses, 16, 1, RingVariant::Zigzag), &[16384]);
    let t: Vec<Transfer> = transfers(&p, "ulysses all_to_all in").map(|(_, t)| t).collect();
    assert_eq!(t.iter().map(|t| t.bytes).collect::<Vec<_>>(), [8_388_608.0, 4_194_304.0, 4_194_304.0]);
    assert!(t.iter().all(|t| t.ranks == 16 && t.nodes == 2 && t.collective == Collective::AllToAll));
}

#[test]
fn ring_steps_and_bytes() {
    // Llama 3 8B attention, one 8192-token sequence, zigzag ring of 4: 2048 tokens per slot.
    let llama = attention_shape("llama3-8b-attention", 32, 8, 128);
    let none = TrainConfig { zero: 0, checkpointing: Checkpointing::None, ..TrainConfig::default() };
    let cm = model(llama.clone(), "dgx-a100-80g", 1, none.clone());
    let p = cm.program_batch(&shape(Scheme::Ring, 1, 4, RingVariant::Zigzag), &[vec![8192]], Scope::Attention);
    let steps = |pass: &str| p.stages.iter().filter(|s| s.label.starts_with("ring step") && s.label.ends_with(pass)).count();
    assert_eq!((steps("fwd"), steps("bwd")), (4, 4));
    // Forward: K and V of 2048 tokens x 8 heads x 128 in bf16 = 8,388,608 bytes per hop, three hops.
    // Backward: step j sends the K, V block for step j + 1 (bf16) and the dK, dV of step j - 1
    // (fp32, 16,777,216 bytes): step 0 the block alone, steps 1 and 2 both, 2048 x 8 x 128 x
    // (2 + 2 + 4 + 4) = 25,165,824; the last step's dK, dV go home after it, exposed.
    let fwd: Vec<f64> = transfers(&p, "ring step").filter(|(l, _)| l.ends_with("fwd")).map(|(_, t)| t.bytes).collect();
    let bwd: Vec<f64> = transfers(&p, "ring step").filter(|(l, _)| l.ends_with("bwd")).map(|(_, t)| t.bytes).collect();
    assert_eq!(fwd, [8_388_608.0; 3]);
    assert_eq!(bwd, [8_388_608.0, 25_165_824.0, 25_165_824.0, 16_777_216.0]);
    let overlapped: Vec<bool> = p.stages.iter().filter(|s| s.label.starts_with("ring step") && s.label.ends_with("bwd")).map(|s| s.overlapped).collect();
    assert_eq!(overlapped, [true, true, true, false]);
    // Each hop at the measured A100 send/recv rate: 8,388,608 / 195 GB/s = 43.02 us, plus the
    // simple protocol's 8.4 + 3.4 us (LL128: 15.9 us + 46.76 us; LL: 7.2 us + 86.04 us: slower).
    let hop = p.stages.iter().find(|s| s.label == "ring step 0 fwd").unwrap();
    assert!((hop.transfer_s - (8_388_608.0 / 195e9 + 11.8e-6)).abs() < 1e-12, "{}", hop.transfer_s);
    assert!(hop.overlapped);
    // USP 2 x 4: the ring runs among ranks holding 4 of the 8 KV heads for all 2048 slot tokens.
    let p = model(llama, "dgx-a100-80g", 1, none).program_batch(&shape(Scheme::Usp, 2, 4, RingVariant::Zigzag), &[vec![8192]], Scope::Attention);
    let fwd: Vec<f64> = transfers(&p, "ring step").filter(|(l, _)| l.ends_with("fwd")).map(|(_, t)| t.bytes).collect();
    assert_eq!(fwd, [4_194_304.0; 3]);
}

#[test]
fn zero_memory_through_the_cost_model() {
    // Llama 3 8B, tp 2 on 16 GPUs: each TP rank holds half the parameters, ZeRO-3 shards them
    // over the 8 data-parallel ranks: 16 B x 8,029,995,008 / 2 / 8 = 8,029,995,008 bytes, plus
    // two gathered layers of 218,103,808 / 2 parameters in bf16 = 436,207,616.
    let llama = ModelShape::resolve("llama3-8b").unwrap();
    let cm = model(llama.clone(), "dgx-a100-80g", 2, TrainConfig { zero: 3, tp: 2, ..TrainConfig::default() });
    assert_eq!(cm.static_memory_bytes(16), 8_029_995_008.0 + 436_207_616.0);
    // ZeRO-1 on 16 GPUs without tp: 2 + 2 + 12 / 16 = 4.75 B per parameter.
    let cm = model(llama, "dgx-a100-80g", 2, TrainConfig { zero: 1, ..TrainConfig::default() });
    assert_eq!(cm.static_memory_bytes(16), 4.75 * 8_029_995_008.0);
}

#[test]
fn thd_padding_is_charged_to_compute_memory_and_traffic() {
    // Zigzag over 4 slots pads each document to a multiple of 8: 1000 stays, 10 becomes 16 (2 per
    // chunk), so each slot holds 250 + 4 = 254 tokens, of which 1.5 on average are padding.
    let llama = ModelShape::resolve("llama3-8b").unwrap();
    let cm = model(llama, "dgx-a100-80g", 1, TrainConfig { zero: 0, ..TrainConfig::default() });
    let zig = cm.program(&shape(Scheme::Ring, 1, 4, RingVariant::Zigzag), &[1000, 10]);
    assert_eq!(zig.tokens_per_gpu, 254.0);
    // The ring carries the padded slot: 254 x 2 x 8 heads x 128 x 2 B = 1,040,384 bytes forward.
    let hop = transfers(&zig, "ring step").next().unwrap().1;
    assert_eq!(hop.bytes, 1_040_384.0);
    // Kept activations follow the padded tokens: full checkpointing keeps 2 h = 8192 bytes per
    // token per layer: 254 x 32 x 8192 = 66,584,576, plus the working layer 254 x 139,392.
    assert_eq!(zig.memory.activations_bytes, 254.0 * 32.0 * 8192.0 + 254.0 * 139_392.0);
    // The basic layout pads only the end: 1010 / 4 -> 253 tokens per slot.
    let basic = cm.program(&shape(Scheme::Ring, 1, 4, RingVariant::Basic), &[1000, 10]);
    assert_eq!(basic.tokens_per_gpu, 253.0);
}

#[test]
fn causal_imbalance_of_the_basic_layout() {
    // One 8192-token sequence over 4 slots of 2048: slot 3 computes its own diagonal,
    // 2048 x 2049 / 2 = 2,098,176 pairs, and three full blocks, 3 x 2048^2 = 12,582,912: 14,681,088
    // against a mean of 8192 x 8193 / 2 / 4 = 8,389,632 (1.75x). Zigzag gives every slot the mean:
    // chunks i and 7 - i of 1024 tokens, (i + 7 - i) x 1024^2 + 1024 x 1025 = 8,389,632 pairs.
    let m = attention_shape("a", 32, 8, 128);
    let cm = model(m, "dgx-a100-80g", 1, fwd_only());
    let attention_s = |variant, len| {
        let p = cm.program_batch(&shape(Scheme::Ring, 1, 4, variant), &[vec![len]], Scope::Attention);
        let cost = p.cost(&cm.cluster);
        (p.flops_per_gpu, cost.idle_s, cost.time_s)
    };
    let (basic_flops, basic_idle, basic_time) = attention_s(RingVariant::Basic, 8192);
    let (zig_flops, zig_idle, zig_time) = attention_s(RingVariant::Zigzag, 8192);
    assert_eq!(basic_flops, 14_681_088.0 * 32.0 * 512.0);
    assert_eq!(zig_flops, 8_389_632.0 * 32.0 * 512.0);
    assert!(basic_idle > 0.3 * basic_time, "basic idles {basic_idle} of {basic_time}");
    // Zigzag's steps hold equal pairs but differ in thread blocks (a full query block against half
    // the keys, or half the queries against all keys) and in the rows their merge rewrites.
    assert!(zig_idle < 0.15 * zig_time && zig_idle < 0.25 * basic_idle, "zigzag idles {zig_idle} of {zig_time}");
    // Where the kernels dwarf their fixed costs (128K tokens), the time follows the pairs: 1.75x.
    let ratio = attention_s(RingVariant::Basic, 131_072).2 / attention_s(RingVariant::Zigzag, 131_072).2;
    assert!((1.6..1.85).contains(&ratio), "basic / zigzag = {ratio}");
}

#[test]
fn sequence_aware_layout_moves_only_split_documents() {
    // One 100,000-token document and three short ones over a ring of 4: the sequence-aware layout
    // splits only the long one (25,000 tokens per slot; 100,000 is a multiple of 8, no padding),
    // so each hop carries 25,000 x 2 x 8 x 128 x 2 B = 102,400,000 bytes; zigzag carries the
    // short documents' chunks too.
    let m = attention_shape("a", 32, 8, 128);
    let cm = model(m, "dgx-a100-80g", 1, fwd_only());
    let hsap_shape = shape(Scheme::Hsap, 1, 4, RingVariant::Zigzag);
    let zig_shape = shape(Scheme::Ring, 1, 4, RingVariant::Zigzag);
    let docs = vec![100_000, 500, 300, 200];
    let hsap = cm.program_batch(&hsap_shape, &[docs.clone()], Scope::Attention);
    let zig = cm.program_batch(&zig_shape, &[docs], Scope::Attention);
    assert_eq!(transfers(&hsap, "ring step").next().unwrap().1.bytes, 102_400_000.0);
    // 100,000 / 4 + (500 + 300 + 200 padded to 504 + 304 + 200) / 4 = 25,252 tokens per slot.
    assert_eq!(transfers(&zig, "ring step").next().unwrap().1.bytes, 25_252.0 * 4096.0);
    // Short documents cut 8 ways run on tiles mostly masked: 200 documents of 300 tokens zigzagged
    // over a ring of 8 are chunks of 19 tokens; kept whole they fill 3 x 4 / 2 = 6 tiles each.
    let mut many = vec![65_536];
    many.extend(std::iter::repeat(300).take(200));
    let h8 = cm.program_batch(&shape(Scheme::Hsap, 1, 8, RingVariant::Zigzag), &[many.clone()], Scope::Attention);
    let z8 = cm.program_batch(&shape(Scheme::Ring, 1, 8, RingVariant::Zigzag), &[many], Scope::Attention);
    assert!(h8.time_s() < 0.9 * z8.time_s(), "hsap {} vs zigzag {}", h8.time_s(), z8.time_s());
}

#[test]
fn gradient_synchronisation_and_optimizer() {
    // ZeRO-0, Llama 3 8B on 2 DGX A100 nodes: all-reduce of 2 x 8,029,995,008 bytes over 16 ranks.
    // The network bounds it: 16,059,990,016 x 2 x 15/16 / (8 NICs x 24 GB/s) = 0.156844 s, plus
    // 8.4 + 30 steps x 14 us = 428.4 us of latency. The optimizer reads and writes 28 bytes per
    // parameter of the unsharded model and gradient clipping 12 more: 321.2 GB / (2039 GB/s x
    // 0.88) = 0.179010 s.
    let llama = ModelShape::resolve("llama3-8b").unwrap();
    let cm = model(llama, "dgx-a100-80g", 2, TrainConfig { zero: 0, ..TrainConfig::default() });
    let sync = cm.grad_sync(16, 0.1);
    let allreduce = 16_059_990_016.0 * 1.875 / 192e9 + 428.4e-6;
    let optimizer = 8_029_995_008.0 * 40.0 / (2039e9 * 0.88);
    assert!((sync.time_s - allreduce).abs() < 1e-9, "{} vs {allreduce}", sync.time_s);
    assert!((sync.optimizer_s - optimizer).abs() < 1e-9);
    assert!((sync.exposed_s - (allreduce - 0.1 + optimizer)).abs() < 1e-9);
    // A backward longer than the all-reduce hides it entirely.
    assert!((cm.grad_sync(16, 1.0).exposed_s - optimizer).abs() < 1e-12);
    let t = Transfer::new(Collective::AllReduce, 16, 2, 16_059_990_016.0);
    assert!((comm::time_s(&cm.cluster, &t) - allreduce).abs() < 1e-9);
}

#[test]
fn isolated_cost_adds_up() {
    // time = mean compute + exposed communication + idle, for every scheme.
    let llama = ModelShape::resolve("llama3-8b").unwrap();
    let cm = model(llama, "dgx-h100", 2, TrainConfig::default());
    let docs = [40_000, 9_000, 700, 300, 12_000, 5];
    for s in [
        shape(Scheme::Ulysses, 8, 1, RingVariant::Zigzag),
        shape(Scheme::Ring, 1, 16, RingVariant::Basic),
        shape(Scheme::Allgather, 1, 8, RingVariant::Zigzag),
        shape(Scheme::Usp, 8, 2, RingVariant::Stripe),
        shape(Scheme::DoubleRing, 2, 8, RingVariant::Zigzag),
        shape(Scheme::Hsap, 8, 2, RingVariant::Zigzag),
    ] {
        let c = cm.group(&s, &docs);
        let sum = c.compute_s + c.exposed_comm_s() + c.idle_s;
        assert!((sum - c.time_s).abs() <= 1e-9 * c.time_s, "{s}: {sum} vs {}", c.time_s);
        assert!(c.time_s > 0.0 && c.memory_bytes > 0.0, "{s}");
        let p = cm.program(&s, &docs);
        assert!(p.stages.iter().any(|st| st.pass == Pass::Bwd), "{s}");
    }
}

#[test]
fn degenerate_batches_are_priced_without_nan() {
    // Empty groups, one-token documents and documents shorter than the ring: finite, non-negative.
    let llama = ModelShape::resolve("llama3-8b").unwrap();
    let cm = model(llama, "dgx-h100", 2, TrainConfig::default());
    for s in [
        shape(Scheme::Ulysses, 8, 1, RingVariant::Zigzag),
        shape(Scheme::Ring, 1, 16, RingVariant::Stripe),
        shape(Scheme::Allgather, 1, 16, RingVariant::Zigzag),
        shape(Scheme::Usp, 4, 4, RingVariant::Basic),
        shape(Scheme::DoubleRing, 2, 8, RingVariant::Zigzag),
        shape(Scheme::Hsap, 8, 2, RingVariant::Zigzag),
    ] {
        for docs in [vec![], vec![1], vec![3, 0, 5], vec![1; 100]] {
            let c = cm.group(&s, &docs);
            let values = [c.time_s, c.compute_s, c.idle_s, c.memory_bytes, c.flops_per_gpu, c.model_flops_per_gpu];
            assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{s} {docs:?}: {c:?}");
        }
        let d = cm.doc_linear(&s, 1);
        assert!(d.doc_s.is_finite() && d.doc_s >= 0.0, "{s}: {d:?}");
    }
}

#[test]
fn gqa_backward_adds_flash_attention_2s_group_reduction_and_no_flops() {
    use hsap::cost::AttentionKernel;
    // 32 query heads, 8 KV heads of 128, one 8192-token sequence on one A100, attention scope.
    // FlashAttention-2's backward writes dK and dV per query head (dk_expanded, dv_expanded) and
    // sums each group of 4 into its KV head (at::sum_out, csrc/flash_attn/flash_api.cpp): two
    // reductions of 8192 x (32 + 8) x 128 x 2 B = 83,886,080 bytes each, 2 x 83.9 MB / (2039e9 x
    // 0.88) = 93.5 us. The kernel itself runs per query head, as for 32 KV heads.
    let one = shape(Scheme::Ulysses, 1, 1, RingVariant::Zigzag);
    let train = |kernel| TrainConfig { zero: 0, attention_kernel: Some(kernel), ..TrainConfig::default() };
    let bwd_on = |cluster: &str, kv: u32, kernel| {
        let cm = model(attention_shape("gqa", 32, kv, 128), cluster, 1, train(kernel));
        let p = cm.program_batch(&one, &[vec![8192]], Scope::Attention);
        let s = p.stages.iter().find(|s| s.label == "attention bwd").unwrap();
        (s.compute_s, p.flops_per_gpu)
    };
    let (gqa_s, gqa_flops) = bwd_on("dgx-a100-80g", 8, AttentionKernel::Fa2);
    let (mha_s, mha_flops) = bwd_on("dgx-a100-80g", 32, AttentionKernel::Fa2);
    let expected = 2.0 * 8192.0 * 40.0 * 128.0 * 2.0 / (2039e9 * 0.88);
    assert!(((gqa_s - mha_s) - expected).abs() < 1e-12, "{} vs {expected}", gqa_s - mha_s);
    assert!((expected - 93.5e-6).abs() < 0.1e-6);
    assert_eq!(gqa_flops, mha_flops);
    // cuDNN and FlashAttention-3 (Hopper) reduce over the group inside their kernels: nothing
    // added; FlashAttention-2 on the same H100 adds its reduction at H100's bandwidth.
    for kernel in [AttentionKernel::Cudnn, AttentionKernel::Fa3] {
        assert_eq!(bwd_on("dgx-h100", 8, kernel).0, bwd_on("dgx-h100", 32, kernel).0, "{kernel:?}");
    }
    let h100 = Cluster::resolve("dgx-h100").unwrap();
    let on_h100 = 2.0 * 8192.0 * 40.0 * 128.0 * 2.0 / (h100.gpu.hbm_gb_per_s * 1e9 * h100.gpu.hbm_efficiency.unwrap());
    let fa2_added = bwd_on("dgx-h100", 8, AttentionKernel::Fa2).0 - bwd_on("dgx-h100", 32, AttentionKernel::Fa2).0;
    assert!((fa2_added - on_h100).abs() < 1e-12, "{fa2_added} vs {on_h100}");
    // Ulysses over 8 GPUs replicates the 8 KV heads to one per rank beside 4 query heads: each
    // rank reduces 8192 x (4 + 1) x 128 x 2 B twice.
    let u8 = shape(Scheme::Ulysses, 8, 1, RingVariant::Zigzag);
    let cm = |kv| model(attention_shape("gqa", 32, kv, 128), "dgx-a100-80g", 1, train(AttentionKernel::Fa2));
    let stage = |kv| {
        let p = cm(kv).program_batch(&u8, &[vec![8192]], Scope::Attention);
        p.stages.iter().find(|s| s.label == "attention bwd").unwrap().compute_s
    };
    let per_rank = 2.0 * 8192.0 * 5.0 * 128.0 * 2.0 / (2039e9 * 0.88);
    assert!(((stage(8) - stage(32)) - per_rank).abs() < 1e-12);
}

#[test]
fn a_64_gpu_group_on_an_nvl72_rack_prices_its_all_to_all_at_nvlink_speed() {
    // Llama 3 8B, one 65,536-token document on u16 x r4 over 64 GPUs: 16 trays of four GPUs, all
    // in the GB200 NVL72 rack's one NVLink domain. Each rank holds 65,536 / 64 = 1,024 tokens and
    // sends Q for all 32 heads: 1,024 x 32 x 128 x 2 B = 8,388,608 bytes, 15/16 of it to the other
    // ranks over NVLink 5 at the preset's 740 GB/s (nccl.b200_nvlink_busbw_derived), with the
    // simple protocol's 8.4 + 3.4 us (one step): 11.8 us + 10.628 us = 22.43 us.
    let llama = ModelShape::resolve("llama3-8b").unwrap();
    let usp = shape(Scheme::Usp, 16, 4, RingVariant::Zigzag);
    let cm = model(llama.clone(), "gb200-nvl72", 16, fwd_only());
    assert_eq!(cm.cluster.gpus_per_domain(), 64);
    let p = cm.program(&usp, &[65536]);
    let q = p.stages.iter().find(|s| s.label == "ulysses all_to_all in q fwd").unwrap();
    let t = q.transfer.unwrap();
    assert_eq!((t.ranks, t.nodes, t.level, t.bytes), (16, 1, hsap::cluster::LinkLevel::Intra, 8_388_608.0));
    let closed = 11.8e-6 + 8_388_608.0 * 15.0 / 16.0 / 740e9;
    assert!((comm::time_s(&cm.cluster, &t) - closed).abs() < 1e-12, "{} vs {closed}", comm::time_s(&cm.cluster, &t));
    // The ring's hops between the four slots stay on NVLink too.
    assert!(p.stages.iter().filter_map(|s| s.transfer).all(|t| t.level == hsap::cluster::LinkLevel::Intra || t.collective != Collective::SendRecv));
    // Were each tray its own domain (a node of four, NICs between them), the same all-to-all would
    // cross trays: 12 of its 16 ranks elsewhere, 12/16 of the bytes through one 48.5 GB/s NIC per
    // GPU (nccl.ndr400_per_nic_effective), 8.4 + 14 us: 22.4 us + 129.7 us, 6.8x the rack's price.
    let mut trays = Cluster::resolve("gb200-nvl72").unwrap().with_nodes(16).unwrap();
    trays.nodes_per_domain = None;
    let islands = CostModel::new(llama, trays, fwd_only()).unwrap();
    let p = islands.program(&usp, &[65536]);
    let t = p.stages.iter().find(|s| s.label == "ulysses all_to_all in q fwd").unwrap().transfer.unwrap();
    assert_eq!((t.nodes, t.level), (4, hsap::cluster::LinkLevel::Inter));
    let network = 22.4e-6 + 8_388_608.0 * 12.0 / 16.0 / 48.5e9;
    assert!((comm::time_s(&islands.cluster, &t) - network).abs() < 1e-12, "{} vs {network}", comm::time_s(&islands.cluster, &t));
}
