// Fused AdamW over every LoRA parameter at once: the parameters, gradients and both moments live
// in flat f32 arenas, so one launch updates them all. `grad_scale` folds in loss scaling and
// gradient clipping; bc1/bc2 are the bias corrections 1 − β^t. When `p_bf16` is not null the
// updated weight is also written in bf16 for the next forward.

extern "C" __global__ void adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                 float* __restrict__ v, bf16* __restrict__ p_bf16, size_t n, float lr, float beta1,
                                 float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float w = p[i] * (1.0f - lr * weight_decay);
        w -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        p[i] = w;
        if (p_bf16) p_bf16[i] = f32_to_bf16(w);
    }
}

// Σ g² over the arena, for gradient-norm clipping (atomic per block).
extern "C" __global__ void sum_squares(const float* __restrict__ g, size_t n, float* __restrict__ out) {
    float s = 0.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        s += g[i] * g[i];
    }
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(out, s);
}
