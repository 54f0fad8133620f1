// Cross-entropy fused with the LM head, in vocabulary chunks: the host computes one chunk of
// logits [rows, chunk] (f32) with cuBLAS, then these kernels fold it into a running
// log-sum-exp per row, so the [rows, vocab] logits never exist at once. A negative target
// ignores its row.

// Online log-sum-exp: (row_max, row_sum) absorb the chunk; target_logit is set when the target
// falls inside [offset, offset + chunk). One block per row.
extern "C" __global__ void ce_chunk_lse(const float* __restrict__ logits, int chunk, int offset,
                                        const int* __restrict__ targets, float* __restrict__ row_max,
                                        float* __restrict__ row_sum, float* __restrict__ target_logit) {
    int r = blockIdx.x;
    int t = targets[r];
    if (t < 0) return;
    const float* row = logits + (size_t)r * chunk;
    __shared__ float smax[32];
    __shared__ float block_max;
    float m = -INF;
    for (int i = threadIdx.x; i < chunk; i += blockDim.x) m = fmaxf(m, row[i]);
    m = warp_max(m);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) smax[warp] = m;
    __syncthreads();
    if (warp == 0) {
        float x = lane < (int)(blockDim.x >> 5) ? smax[lane] : -INF;
        x = warp_max(x);
        if (lane == 0) block_max = x;
    }
    __syncthreads();
    float cm = block_max;
    float s = 0.0f;
    for (int i = threadIdx.x; i < chunk; i += blockDim.x) s += __expf(row[i] - cm);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        float old_max = row_max[r], old_sum = row_sum[r];
        float nm = fmaxf(old_max, cm);
        row_sum[r] = old_sum * __expf(old_max - nm) + s * __expf(cm - nm);
        row_max[r] = nm;
        if (t >= offset && t < offset + chunk) target_logit[r] = row[t - offset];
    }
}

// loss[r] = lse − target logit (0 for ignored rows); lse kept for the backward.
extern "C" __global__ void ce_finish(const float* __restrict__ row_max, const float* __restrict__ row_sum,
                                     const float* __restrict__ target_logit, const int* __restrict__ targets,
                                     int rows, float* __restrict__ lse, float* __restrict__ loss) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    if (targets[r] < 0) {
        lse[r] = 0.0f;
        loss[r] = 0.0f;
        return;
    }
    float l = row_max[r] + __logf(row_sum[r]);
    lse[r] = l;
    loss[r] = l - target_logit[r];
}

// dlogits = scale · (softmax − onehot) for one chunk, written in bf16 for the two GEMMs that
// follow (dh += dlogits·W_chunk, and nothing for the frozen head). Ignored rows get zeros.
extern "C" __global__ void ce_chunk_grad(const float* __restrict__ logits, int rows, int chunk, int offset,
                                         const int* __restrict__ targets, const float* __restrict__ lse, float scale,
                                         bf16* __restrict__ dlogits) {
    size_t n = (size_t)rows * chunk;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(i / chunk), c = (int)(i % chunk);
        int t = targets[r];
        float d = 0.0f;
        if (t >= 0) {
            d = __expf(logits[i] - lse[r]);
            if (t == offset + c) d -= 1.0f;
            d *= scale;
        }
        dlogits[i] = f32_to_bf16(d);
    }
}
