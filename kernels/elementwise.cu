// Small kernels the validation schedule needs around attention: random inputs, the f32 -> bf16
// cast before a tensor is sent, and the additions of the ring backward (gradients of key/value
// blocks travel around the ring and are summed on the way). Header-free for NVRTC.

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;

// splitmix64: a fixed, well-mixed function of (seed, index), so every rank draws different data.
__device__ __forceinline__ u64 mix(u64 x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Round to nearest even, as every bf16 conversion does (inputs here are finite).
__device__ __forceinline__ bf16_t float_to_bf16(float f) {
    const u32 u = __float_as_uint(f);
    return (bf16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Uniform values in [-1, 1) scaled by `scale`, as bf16: never all zeros, never denormal.
extern "C" __global__ void fill_random_bf16(bf16_t* __restrict__ x, u64 n, u64 seed, float scale) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float unit = (float)(mix(seed ^ mix(i)) >> 40) * (1.0f / 16777216.0f);
        x[i] = float_to_bf16((2.f * unit - 1.f) * scale);
    }
}

extern "C" __global__ void fill_random_f32(float* __restrict__ x, u64 n, u64 seed, float scale) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float unit = (float)(mix(seed ^ mix(i)) >> 40) * (1.0f / 16777216.0f);
        x[i] = (2.f * unit - 1.f) * scale;
    }
}

extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, bf16_t* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = float_to_bf16(x[i]);
}

// dst = a + b, with a null `a` read as zeros (the first hop of a travelling gradient). `dst` may
// be `a`.
extern "C" __global__ void add_f32(float* dst, const float* a, const float* __restrict__ b, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = (a ? a[i] : 0.f) + b[i];
}

// dst[row][head0 + h][e] += src[row][h][e] (bf16, summed in f32): one Ulysses peer's gradients of
// the key/value heads it holds, added into the shard's gradients (replicated heads get several).
extern "C" __global__ void add_heads_bf16(bf16_t* __restrict__ dst, const bf16_t* __restrict__ src, u64 rows,
                                          u32 heads_dst, u32 head0, u32 heads_src, u32 dim) {
    const u64 n = rows * heads_src * dim;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 row = i / ((u64)heads_src * dim);
        const u32 h = (i / dim) % heads_src, e = i % dim;
        bf16_t* d = dst + (row * heads_dst + head0 + h) * dim + e;
        *d = float_to_bf16(__uint_as_float(((u32)*d) << 16) + __uint_as_float(((u32)src[i]) << 16));
    }
}
