// SwiGLU, embedding lookup, and casts.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + __expf(-x)); }

// h = silu(g) · u.
extern "C" __global__ void swiglu_forward(const bf16* __restrict__ g, const bf16* __restrict__ u,
                                          bf16* __restrict__ h, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gv = bf16_to_f32(g[i]);
        h[i] = f32_to_bf16(gv * sigmoidf_(gv) * bf16_to_f32(u[i]));
    }
}

// dg = dh·u·σ(g)(1 + g(1−σ(g))), du = dh·silu(g).
extern "C" __global__ void swiglu_backward(const bf16* __restrict__ g, const bf16* __restrict__ u,
                                           const bf16* __restrict__ dh, bf16* __restrict__ dg,
                                           bf16* __restrict__ du, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gv = bf16_to_f32(g[i]), uv = bf16_to_f32(u[i]), d = bf16_to_f32(dh[i]);
        float s = sigmoidf_(gv);
        du[i] = f32_to_bf16(d * gv * s);
        dg[i] = f32_to_bf16(d * uv * s * (1.0f + gv * (1.0f - s)));
    }
}

// out[t, :] = table[ids[t], :]; one block per token.
extern "C" __global__ void embedding_forward(const bf16* __restrict__ table, const int* __restrict__ ids, int d,
                                             bf16* __restrict__ out) {
    const bf16* src = table + (size_t)ids[blockIdx.x] * d;
    bf16* dst = out + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

// grad[ids[t], :] += dout[t, :] (f32 accumulation; tokens may repeat).
extern "C" __global__ void embedding_backward(const bf16* __restrict__ dout, const int* __restrict__ ids, int d,
                                              float* __restrict__ grad) {
    float* dst = grad + (size_t)ids[blockIdx.x] * d;
    const bf16* src = dout + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) atomicAdd(dst + i, bf16_to_f32(src[i]));
}

extern "C" __global__ void cast_f32_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        y[i] = f32_to_bf16(x[i]);
    }
}

extern "C" __global__ void cast_bf16_to_f32(const bf16* __restrict__ x, float* __restrict__ y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        y[i] = bf16_to_f32(x[i]);
    }
}

// y += x (bf16 residual stream).
extern "C" __global__ void add_bf16(bf16* __restrict__ y, const bf16* __restrict__ x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        y[i] = f32_to_bf16(bf16_to_f32(y[i]) + bf16_to_f32(x[i]));
    }
}

// y[r, c] += bias[c] for a [rows, cols] bf16 matrix (Qwen2's q/k/v biases).
extern "C" __global__ void add_bias_bf16(bf16* __restrict__ y, const bf16* __restrict__ bias, size_t n, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        y[i] = f32_to_bf16(bf16_to_f32(y[i]) + bf16_to_f32(bias[i % cols]));
    }
}

// dst[rows[t], :] = src[t, :]; one block per source row (the inverse of a gather by
// embedding_forward).
extern "C" __global__ void scatter_rows(const bf16* __restrict__ src, const int* __restrict__ rows, int d,
                                        bf16* __restrict__ dst) {
    bf16* to = dst + (size_t)rows[blockIdx.x] * d;
    const bf16* from = src + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) to[i] = from[i];
}

// Inverted dropout with a counter-based mask: element i is kept (and scaled by 1/(1−p)) when the
// hash of (seed, i) is at least p. The same seed gives the same mask, so the backward pass
// regenerates it instead of storing it. out may alias x.
__device__ __forceinline__ float dropout_keep(unsigned long long seed, size_t i, float p) {
    unsigned long long z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    float u = (float)(z >> 40) * (1.0f / 16777216.0f);
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}

extern "C" __global__ void dropout_bf16(const bf16* x, bf16* out, size_t n, float p, unsigned long long seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = f32_to_bf16(bf16_to_f32(x[i]) * dropout_keep(seed, i, p));
    }
}

// y += dropout(x) with the mask of `seed` (the backward of dropout, accumulated).
extern "C" __global__ void dropout_add_bf16(bf16* __restrict__ y, const bf16* __restrict__ x, size_t n, float p,
                                            unsigned long long seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        y[i] = f32_to_bf16(bf16_to_f32(y[i]) + bf16_to_f32(x[i]) * dropout_keep(seed, i, p));
    }
}
