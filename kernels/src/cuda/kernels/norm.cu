// RMSNorm over rows of width d: y = x · inv_rms · w, inv_rms = 1/sqrt(mean(x²) + eps).
// One block per row.

extern "C" __global__ void rmsnorm_forward(const bf16* __restrict__ x, const bf16* __restrict__ w, float eps,
                                           int d, bf16* __restrict__ y, float* __restrict__ inv_rms) {
    const bf16* xr = x + (size_t)blockIdx.x * d;
    bf16* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = bf16_to_f32(xr[i]);
        ss += v * v;
    }
    float r = rsqrtf(block_sum(ss) / (float)d + eps);
    if (threadIdx.x == 0) inv_rms[blockIdx.x] = r;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        yr[i] = f32_to_bf16(bf16_to_f32(xr[i]) * r * bf16_to_f32(w[i]));
    }
}

// dx = r·w·dy − x·(Σ x·dy·w)·r³/d.
extern "C" __global__ void rmsnorm_backward(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                            const float* __restrict__ inv_rms, const bf16* __restrict__ dy, int d,
                                            bf16* __restrict__ dx) {
    size_t o = (size_t)blockIdx.x * d;
    float r = inv_rms[blockIdx.x];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        dot += bf16_to_f32(x[o + i]) * bf16_to_f32(dy[o + i]) * bf16_to_f32(w[i]);
    }
    float coef = block_sum(dot) * r * r * r / (float)d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float g = r * bf16_to_f32(w[i]) * bf16_to_f32(dy[o + i]) - bf16_to_f32(x[o + i]) * coef;
        dx[o + i] = f32_to_bf16(g);
    }
}
