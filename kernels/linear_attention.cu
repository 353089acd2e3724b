// Linear attention over packed varlen buffers (THD layout), chunk by chunk: for one segment and
// one head per block, each chunk's intra-chunk block under the causal mask, its product with the
// memory state before the chunk, and the state update (docs/cost-model.md section 2b). With
// decay l per head (1 for basic linear attention, lightning attention's per-head constant), for
// row i of a chunk of n rows and the state M (key_dim x value_dim) before it:
//   o_i = sum_{j <= i} l^(i-j) (q_i . k_j) v_j  +  l^(i+1) q_i M
//   M  <- l^n M + sum_j l^(n-1-j) k_j^T v_j
//
// Its CPU mirror is src/gpu/linear_attention.rs: same walk, same order of operations. Change
// both together; tests/gpu_reference_linear.rs checks the mirror (and the LASP exchanges built
// on it) against f64 causal linear attention. This kernel has not been run on a GPU yet: the
// validator's schedules have no linear-attention ops (validate refuses linear and hybrid plans).
//
// Compiled at run time by NVRTC, which ships no headers: bf16 is handled as raw 16-bit words.
// Required define: HEAD_DIM (key and value sizes of a head). MAX_CHUNK bounds the run-time
// `chunk` (one thread per chunk row); VALUE_SPLIT is the value columns one block keeps.
//
// Varlen, as kernels/attention.cu: segment k occupies rows cu[k] .. cu[k] + len[k] of real tokens
// of one document; pos[row] is a row's position in its document. A segment starts from a zero
// state when its first row is its document's first token, and from state_in (the state the
// LASP exchange delivered) when it continues a document from another rank: document starts
// reset the state. state_out receives every segment's state after its last row (a rank's local
// state, what LASP sends).

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<key and value size of a head>"
#endif
#ifndef MAX_CHUNK
#define MAX_CHUNK 64
#endif
#ifndef VALUE_SPLIT
#define VALUE_SPLIT (HEAD_DIM >= 256 ? 8 : 16)
#endif
#define KEY_DIM HEAD_DIM
#define VALUE_DIM HEAD_DIM

static_assert(VALUE_DIM % VALUE_SPLIT == 0, "VALUE_SPLIT must divide the value size");
static_assert(MAX_CHUNK % 32 == 0 && MAX_CHUNK <= 1024, "a block is MAX_CHUNK threads, whole warps");
static_assert(MAX_CHUNK * KEY_DIM * 2 + MAX_CHUNK * VALUE_SPLIT * 2 + KEY_DIM * VALUE_SPLIT * 4 <= 48 * 1024,
              "the chunk's keys, its value columns and the state slice must fit in static shared memory");

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;

#define NO_POS 0xffffffffu

__device__ __forceinline__ float bf16_to_float(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

// Grid: (segments, heads, VALUE_DIM / VALUE_SPLIT); block: MAX_CHUNK threads, thread i computing
// row i of each chunk. Requires 1 <= chunk <= MAX_CHUNK. q and k are [rows, heads, KEY_DIM], v and
// o [rows, heads, VALUE_DIM]; state_in and state_out [segments, heads, KEY_DIM, VALUE_DIM], either
// may be null; decay [heads].
extern "C" __global__ void __launch_bounds__(MAX_CHUNK) linear_attn_fwd_varlen(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
    float* __restrict__ o, const float* __restrict__ state_in, float* __restrict__ state_out,
    const float* __restrict__ decay, const u32* __restrict__ cu, const u32* __restrict__ len,
    const u32* __restrict__ pos, u32 heads, u32 chunk) {
    const u32 seg = blockIdx.x, h = blockIdx.y, col0 = blockIdx.z * VALUE_SPLIT;
    const u32 tid = threadIdx.x;
    const u32 base = cu[seg], rows = len[seg];
    const float l = decay[h];

    __shared__ bf16_t ks[MAX_CHUNK][KEY_DIM];
    __shared__ bf16_t vs[MAX_CHUNK][VALUE_SPLIT];
    __shared__ float m[KEY_DIM][VALUE_SPLIT];

    const u64 state0 = ((u64)seg * heads + h) * KEY_DIM * VALUE_DIM;
    const bool continues = state_in != nullptr && rows > 0 && pos[base] != NO_POS && pos[base] > 0;
    for (u32 idx = tid; idx < KEY_DIM * VALUE_SPLIT; idx += MAX_CHUNK) {
        const u32 e = idx / VALUE_SPLIT, c = idx % VALUE_SPLIT;
        m[e][c] = continues ? state_in[state0 + (u64)e * VALUE_DIM + col0 + c] : 0.f;
    }

    for (u32 r0 = 0; r0 < rows; r0 += chunk) {
        const u32 n = min(chunk, rows - r0);
        __syncthreads();  // the state is written and the previous chunk's tiles are no longer read
        for (u32 idx = tid; idx < n * KEY_DIM; idx += MAX_CHUNK) {
            const u32 j = idx / KEY_DIM, e = idx % KEY_DIM;
            ks[j][e] = k[((u64)(base + r0 + j) * heads + h) * KEY_DIM + e];
        }
        for (u32 idx = tid; idx < n * VALUE_SPLIT; idx += MAX_CHUNK) {
            const u32 j = idx / VALUE_SPLIT, c = idx % VALUE_SPLIT;
            vs[j][c] = v[((u64)(base + r0 + j) * heads + h) * VALUE_DIM + col0 + c];
        }
        __syncthreads();

        if (tid < n) {
            const bf16_t* qr = q + ((u64)(base + r0 + tid) * heads + h) * KEY_DIM;
            float acc[VALUE_SPLIT];
#pragma unroll
            for (int c = 0; c < VALUE_SPLIT; ++c) acc[c] = 0.f;
            // The intra-chunk block: keys at or before this row.
            for (u32 j = 0; j <= tid; ++j) {
                float s = 0.f;
                for (int e = 0; e < KEY_DIM; ++e) s += bf16_to_float(qr[e]) * bf16_to_float(ks[j][e]);
                s *= powf(l, (float)(tid - j));
#pragma unroll
                for (int c = 0; c < VALUE_SPLIT; ++c) acc[c] += s * bf16_to_float(vs[j][c]);
            }
            // The inter-chunk product: the state before the chunk, decayed to this row.
            const float w = powf(l, (float)(tid + 1));
            for (int e = 0; e < KEY_DIM; ++e) {
                const float qe = bf16_to_float(qr[e]) * w;
#pragma unroll
                for (int c = 0; c < VALUE_SPLIT; ++c) acc[c] += qe * m[e][c];
            }
            float* orow = o + ((u64)(base + r0 + tid) * heads + h) * VALUE_DIM + col0;
#pragma unroll
            for (int c = 0; c < VALUE_SPLIT; ++c) orow[c] = acc[c];
        }
        __syncthreads();  // every row has read the state before the chunk

        // The state update: the chunk's keys and values added to the decayed state.
        const float carry = powf(l, (float)n);
        for (u32 idx = tid; idx < KEY_DIM * VALUE_SPLIT; idx += MAX_CHUNK) {
            const u32 e = idx / VALUE_SPLIT, c = idx % VALUE_SPLIT;
            float s = m[e][c] * carry;
            for (u32 j = 0; j < n; ++j) s += powf(l, (float)(n - 1 - j)) * bf16_to_float(ks[j][e]) * bf16_to_float(vs[j][c]);
            m[e][c] = s;
        }
    }
    if (state_out == nullptr) return;
    __syncthreads();
    for (u32 idx = tid; idx < KEY_DIM * VALUE_SPLIT; idx += MAX_CHUNK) {
        const u32 e = idx / VALUE_SPLIT, c = idx % VALUE_SPLIT;
        state_out[state0 + (u64)e * VALUE_DIM + col0 + c] = m[e][c];
    }
}
