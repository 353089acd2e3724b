// Document-masked causal attention over packed varlen buffers (THD layout): forward, and the
// backward as three kernels (preprocess, dQ, dK/dV) that need no atomics.
//
// Its CPU mirror is src/gpu/attention.rs: same grid, same tiles, same skipping, same online
// softmax, same butterfly sums. Change both together; tests/gpu_reference.rs checks the mirror
// against f64 attention and the CUDA executor checks this file against the mirror on a GPU.
//
// Compiled at run time by NVRTC, which ships no headers: bf16 is handled as raw 16-bit words.
// Required define: HEAD_DIM. Tiles: BLOCK_M, BLOCK_N, THREADS_PER_ROW (defaults match the mirror).
//
// A buffer's metadata (src/gpu/varlen.rs): segment k occupies rows cu[k] .. cu[k+1] (the padded
// cu_seqlens), of which the first len[k] are real tokens of document doc[k]; pos[row] is a
// row's position in its document. A query attends the keys of its document at positions at or
// before its own; padding rows are never read.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dimension>"
#endif
#ifndef BLOCK_M
#define BLOCK_M 64
#endif
#ifndef BLOCK_N
#define BLOCK_N 32
#endif
#ifndef THREADS_PER_ROW
#define THREADS_PER_ROW 4
#endif

#define DPT (HEAD_DIM / THREADS_PER_ROW)
#define THREADS (BLOCK_M * THREADS_PER_ROW)

static_assert(HEAD_DIM % THREADS_PER_ROW == 0, "HEAD_DIM must split evenly over THREADS_PER_ROW");
static_assert(THREADS_PER_ROW <= 32 && (THREADS_PER_ROW & (THREADS_PER_ROW - 1)) == 0,
              "THREADS_PER_ROW must be a power of two within a warp");
static_assert(THREADS <= 1024 && THREADS % 32 == 0, "a block is BLOCK_M x THREADS_PER_ROW threads");
static_assert(BLOCK_N <= THREADS, "a key tile's rows are loaded one per thread");

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;

#define NEG_INF (__int_as_float(0xff800000))
#define NO_POS 0xffffffffu

__device__ __forceinline__ float bf16_to_float(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

// The sum of one value from each of the THREADS_PER_ROW lanes of a row, added pairwise
// (xor 1, then xor 2, ...): every lane ends with the same total.
__device__ __forceinline__ float lane_sum(float x) {
#pragma unroll
    for (int off = 1; off < THREADS_PER_ROW; off <<= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

// The largest position among the real rows of a tile (the block's shared word starts at 0).
__device__ __forceinline__ u32 tile_max(u32* shared, bool lead, u32 pos) {
    if (threadIdx.x == 0) *shared = 0;
    __syncthreads();
    if (lead) atomicMax(shared, pos);
    __syncthreads();
    return *shared;
}

// Grid: (query tiles of the longest segment, query segments, local query heads).
extern "C" __global__ void __launch_bounds__(THREADS) attn_fwd_varlen(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
    float* __restrict__ o, float* __restrict__ lse,
    const u32* __restrict__ cu_q, const u32* __restrict__ len_q, const u32* __restrict__ doc_q,
    const u32* __restrict__ pos_q, u32 rows_q,
    const u32* __restrict__ cu_k, const u32* __restrict__ len_k, const u32* __restrict__ doc_k,
    const u32* __restrict__ pos_k, u32 segs_k,
    u32 heads_q, u32 heads_kv, u32 q_head0, u32 kv_head0, u32 group, float scale, int first) {
    const u32 seg = blockIdx.y, h = blockIdx.z;
    const u32 len = len_q[seg];
    const u32 row0 = blockIdx.x * BLOCK_M;
    if (row0 >= len) return;
    const u32 tid = threadIdx.x, part = tid % THREADS_PER_ROW;
    const u32 qi = row0 + tid / THREADS_PER_ROW;
    const bool active = qi < len;
    const u32 qrow = cu_q[seg] + (active ? qi : row0);
    const u32 doc = doc_q[seg];
    const u32 hk = (q_head0 + h) / group - kv_head0;

    __shared__ bf16_t ks[BLOCK_N][HEAD_DIM];
    __shared__ bf16_t vs[BLOCK_N][HEAD_DIM];
    __shared__ u32 kp[BLOCK_N];
    __shared__ u32 qmax_s, kmin_s;

    float qv[DPT], acc[DPT];
    const u32 my_pos = active ? pos_q[qrow] : 0;
    const bf16_t* qr = q + ((u64)qrow * heads_q + h) * HEAD_DIM + part * DPT;
#pragma unroll
    for (int e = 0; e < DPT; ++e) {
        qv[e] = active ? bf16_to_float(qr[e]) : 0.f;
        acc[e] = 0.f;
    }
    const u32 qmax = tile_max(&qmax_s, active && part == 0, my_pos);
    float m = NEG_INF, l = 0.f;

    for (u32 s = 0; s < segs_k; ++s) {
        if (doc_k[s] != doc) continue;
        const u32 klen = len_k[s], kbase = cu_k[s];
        for (u32 c0 = 0; c0 < klen; c0 += BLOCK_N) {
            const u32 n = min((u32)BLOCK_N, klen - c0);
            __syncthreads();  // the previous tile is no longer read
            if (tid == 0) kmin_s = NO_POS;
            for (u32 idx = tid; idx < n * HEAD_DIM; idx += THREADS) {
                const u32 j = idx / HEAD_DIM, e = idx % HEAD_DIM;
                const u64 g = ((u64)(kbase + c0 + j) * heads_kv + hk) * HEAD_DIM + e;
                ks[j][e] = k[g];
                vs[j][e] = v[g];
            }
            if (tid < n) kp[tid] = pos_k[kbase + c0 + tid];
            __syncthreads();
            if (tid < n) atomicMin(&kmin_s, kp[tid]);
            __syncthreads();
            if (kmin_s > qmax) continue;  // every key after every query: masked by causality

            float sc[BLOCK_N];
            float tmax = NEG_INF;
#pragma unroll
            for (int j = 0; j < BLOCK_N; ++j) {
                float p = 0.f;
#pragma unroll
                for (int e = 0; e < DPT; ++e) p += qv[e] * bf16_to_float(ks[j][part * DPT + e]);
                const float s_ = lane_sum(p) * scale;
                const bool ok = active && (u32)j < n && kp[j] <= my_pos;
                sc[j] = ok ? s_ : NEG_INF;
                tmax = fmaxf(tmax, sc[j]);
            }
            if (tmax != NEG_INF) {
                const float m_new = fmaxf(m, tmax);
                const float corr = expf(m - m_new);
                l *= corr;
#pragma unroll
                for (int e = 0; e < DPT; ++e) acc[e] *= corr;
#pragma unroll
                for (int j = 0; j < BLOCK_N; ++j) {
                    if (sc[j] == NEG_INF) continue;
                    const float p = expf(sc[j] - m_new);
                    l += p;
#pragma unroll
                    for (int e = 0; e < DPT; ++e) acc[e] += p * bf16_to_float(vs[j][part * DPT + e]);
                }
                m = m_new;
            }
        }
    }

    // Merge into the running output of earlier ring steps (or start it).
    const bool has = active && m != NEG_INF;
    const u64 li = (u64)h * rows_q + qrow;
    float lse_out = NEG_INF;
    if (has) {
        const float lse_new = m + logf(l);
        const float lse_old = first ? NEG_INF : lse[li];
        const float mx = fmaxf(lse_old, lse_new);
        const float w_old = lse_old == NEG_INF ? 0.f : expf(lse_old - mx);
        const float w_new = expf(lse_new - mx);
        const float total = w_old + w_new;
        float* out = o + ((u64)qrow * heads_q + h) * HEAD_DIM + part * DPT;
#pragma unroll
        for (int e = 0; e < DPT; ++e) {
            const float old = w_old == 0.f ? 0.f : out[e] * w_old;
            out[e] = (old + acc[e] / l * w_new) / total;
        }
        lse_out = mx + logf(total);
    } else if (active && first) {
        float* out = o + ((u64)qrow * heads_q + h) * HEAD_DIM + part * DPT;
#pragma unroll
        for (int e = 0; e < DPT; ++e) out[e] = 0.f;
    }
    __syncwarp();  // every lane of the row has read the old log-sum-exp
    if (active && part == 0 && (has || first)) lse[li] = lse_out;
}

// delta[h][row] = sum over the head dimension of dO * O. Grid: rows x heads threads.
extern "C" __global__ void attn_bwd_preprocess(const bf16_t* __restrict__ d_o, const float* __restrict__ o,
                                               float* __restrict__ delta, u32 rows, u32 heads) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * heads) return;
    const u32 row = idx / heads, h = idx % heads;
    const u64 at = ((u64)row * heads + h) * HEAD_DIM;
    float s = 0.f;
    for (int e = 0; e < HEAD_DIM; ++e) s += bf16_to_float(d_o[at + e]) * o[at + e];
    delta[(u64)h * rows + row] = s;
}

// dQ for one query tile and head, streaming its document's key tiles.
// Grid: (query tiles of the longest segment, query segments, local query heads).
extern "C" __global__ void __launch_bounds__(THREADS) attn_bwd_dq(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
    const bf16_t* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
    float* __restrict__ dq,
    const u32* __restrict__ cu_q, const u32* __restrict__ len_q, const u32* __restrict__ doc_q,
    const u32* __restrict__ pos_q, u32 rows_q,
    const u32* __restrict__ cu_k, const u32* __restrict__ len_k, const u32* __restrict__ doc_k,
    const u32* __restrict__ pos_k, u32 segs_k,
    u32 heads_q, u32 heads_kv, u32 q_head0, u32 kv_head0, u32 group, float scale, int accumulate) {
    const u32 seg = blockIdx.y, h = blockIdx.z;
    const u32 len = len_q[seg];
    const u32 row0 = blockIdx.x * BLOCK_M;
    if (row0 >= len) return;
    const u32 tid = threadIdx.x, part = tid % THREADS_PER_ROW;
    const u32 qi = row0 + tid / THREADS_PER_ROW;
    const bool active = qi < len;
    const u32 qrow = cu_q[seg] + (active ? qi : row0);
    const u32 doc = doc_q[seg];
    const u32 hk = (q_head0 + h) / group - kv_head0;

    __shared__ bf16_t ks[BLOCK_N][HEAD_DIM];
    __shared__ bf16_t vs[BLOCK_N][HEAD_DIM];
    __shared__ u32 kp[BLOCK_N];
    __shared__ u32 qmax_s, kmin_s;

    float qv[DPT], dov[DPT], acc[DPT];
    const u64 at = ((u64)qrow * heads_q + h) * HEAD_DIM + part * DPT;
#pragma unroll
    for (int e = 0; e < DPT; ++e) {
        qv[e] = active ? bf16_to_float(q[at + e]) : 0.f;
        dov[e] = active ? bf16_to_float(d_o[at + e]) : 0.f;
        acc[e] = 0.f;
    }
    const u32 my_pos = active ? pos_q[qrow] : 0;
    const float my_lse = active ? lse[(u64)h * rows_q + qrow] : 0.f;
    const float my_delta = active ? delta[(u64)h * rows_q + qrow] : 0.f;
    const u32 qmax = tile_max(&qmax_s, active && part == 0, my_pos);

    for (u32 s = 0; s < segs_k; ++s) {
        if (doc_k[s] != doc) continue;
        const u32 klen = len_k[s], kbase = cu_k[s];
        for (u32 c0 = 0; c0 < klen; c0 += BLOCK_N) {
            const u32 n = min((u32)BLOCK_N, klen - c0);
            __syncthreads();
            if (tid == 0) kmin_s = NO_POS;
            for (u32 idx = tid; idx < n * HEAD_DIM; idx += THREADS) {
                const u32 j = idx / HEAD_DIM, e = idx % HEAD_DIM;
                const u64 g = ((u64)(kbase + c0 + j) * heads_kv + hk) * HEAD_DIM + e;
                ks[j][e] = k[g];
                vs[j][e] = v[g];
            }
            if (tid < n) kp[tid] = pos_k[kbase + c0 + tid];
            __syncthreads();
            if (tid < n) atomicMin(&kmin_s, kp[tid]);
            __syncthreads();
            if (kmin_s > qmax) continue;
#pragma unroll 4
            for (int j = 0; j < BLOCK_N; ++j) {
                float ps = 0.f, pd = 0.f;
#pragma unroll
                for (int e = 0; e < DPT; ++e) {
                    ps += qv[e] * bf16_to_float(ks[j][part * DPT + e]);
                    pd += dov[e] * bf16_to_float(vs[j][part * DPT + e]);
                }
                const float s_ = lane_sum(ps) * scale;
                const float dp = lane_sum(pd);
                const bool ok = active && (u32)j < n && kp[j] <= my_pos;
                if (!ok) continue;
                const float p = expf(s_ - my_lse);
                const float ds = p * (dp - my_delta);
#pragma unroll
                for (int e = 0; e < DPT; ++e) acc[e] += ds * bf16_to_float(ks[j][part * DPT + e]);
            }
        }
    }
    if (!active) return;
    float* out = dq + at;
#pragma unroll
    for (int e = 0; e < DPT; ++e) out[e] = accumulate ? out[e] + acc[e] * scale : acc[e] * scale;
}

// dK and dV for one key tile and local key/value head, streaming the query tiles of its document
// for every local query head that reads this key/value head.
// Grid: (key tiles of the longest segment, key segments, local key/value heads).
extern "C" __global__ void __launch_bounds__(THREADS) attn_bwd_dkdv(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
    const bf16_t* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
    float* __restrict__ dk, float* __restrict__ dv,
    const u32* __restrict__ cu_q, const u32* __restrict__ len_q, const u32* __restrict__ doc_q,
    const u32* __restrict__ pos_q, u32 rows_q, u32 segs_q,
    const u32* __restrict__ cu_k, const u32* __restrict__ len_k, const u32* __restrict__ doc_k,
    const u32* __restrict__ pos_k,
    u32 heads_q, u32 heads_kv, u32 q_head0, u32 kv_head0, u32 group, float scale, int accumulate) {
    const u32 seg = blockIdx.y, hk = blockIdx.z;
    const u32 len = len_k[seg];
    const u32 row0 = blockIdx.x * BLOCK_M;
    if (row0 >= len) return;
    const u32 tid = threadIdx.x, part = tid % THREADS_PER_ROW;
    const u32 kj = row0 + tid / THREADS_PER_ROW;
    const bool active = kj < len;
    const u32 krow = cu_k[seg] + (active ? kj : row0);
    const u32 doc = doc_k[seg];

    __shared__ bf16_t qs[BLOCK_N][HEAD_DIM];
    __shared__ bf16_t dos[BLOCK_N][HEAD_DIM];
    __shared__ u32 qp[BLOCK_N];
    __shared__ float lse_s[BLOCK_N], delta_s[BLOCK_N];
    __shared__ u32 kmin_s, qmax_s;

    float kv[DPT], vv[DPT], acc_k[DPT], acc_v[DPT];
    const u64 at = ((u64)krow * heads_kv + hk) * HEAD_DIM + part * DPT;
#pragma unroll
    for (int e = 0; e < DPT; ++e) {
        kv[e] = active ? bf16_to_float(k[at + e]) : 0.f;
        vv[e] = active ? bf16_to_float(v[at + e]) : 0.f;
        acc_k[e] = 0.f;
        acc_v[e] = 0.f;
    }
    const u32 my_pos = active ? pos_k[krow] : NO_POS;
    if (tid == 0) kmin_s = NO_POS;
    __syncthreads();
    if (active && part == 0) atomicMin(&kmin_s, my_pos);
    __syncthreads();
    const u32 kmin = kmin_s;

    for (u32 hq = 0; hq < heads_q; ++hq) {
        if ((q_head0 + hq) / group - kv_head0 != hk) continue;
        for (u32 s = 0; s < segs_q; ++s) {
            if (doc_q[s] != doc) continue;
            const u32 qlen = len_q[s], qbase = cu_q[s];
            for (u32 c0 = 0; c0 < qlen; c0 += BLOCK_N) {
                const u32 n = min((u32)BLOCK_N, qlen - c0);
                __syncthreads();
                if (tid == 0) qmax_s = 0;
                for (u32 idx = tid; idx < n * HEAD_DIM; idx += THREADS) {
                    const u32 i = idx / HEAD_DIM, e = idx % HEAD_DIM;
                    const u64 g = ((u64)(qbase + c0 + i) * heads_q + hq) * HEAD_DIM + e;
                    qs[i][e] = q[g];
                    dos[i][e] = d_o[g];
                }
                if (tid < n) {
                    const u32 row = qbase + c0 + tid;
                    qp[tid] = pos_q[row];
                    lse_s[tid] = lse[(u64)hq * rows_q + row];
                    delta_s[tid] = delta[(u64)hq * rows_q + row];
                }
                __syncthreads();
                if (tid < n) atomicMax(&qmax_s, qp[tid]);
                __syncthreads();
                if (kmin > qmax_s) continue;  // every key of this tile after every query
#pragma unroll 4
                for (int i = 0; i < BLOCK_N; ++i) {
                    float ps = 0.f, pd = 0.f;
#pragma unroll
                    for (int e = 0; e < DPT; ++e) {
                        ps += kv[e] * bf16_to_float(qs[i][part * DPT + e]);
                        pd += vv[e] * bf16_to_float(dos[i][part * DPT + e]);
                    }
                    const float s_ = lane_sum(ps) * scale;
                    const float dp = lane_sum(pd);
                    const bool ok = active && (u32)i < n && my_pos <= qp[i];
                    if (!ok) continue;
                    const float p = expf(s_ - lse_s[i]);
                    const float ds = p * (dp - delta_s[i]);
#pragma unroll
                    for (int e = 0; e < DPT; ++e) {
                        acc_v[e] += p * bf16_to_float(dos[i][part * DPT + e]);
                        acc_k[e] += ds * bf16_to_float(qs[i][part * DPT + e]);
                    }
                }
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int e = 0; e < DPT; ++e) {
        dk[at + e] = accumulate ? dk[at + e] + acc_k[e] * scale : acc_k[e] * scale;
        dv[at + e] = accumulate ? dv[at + e] + acc_v[e] : acc_v[e];
    }
}
