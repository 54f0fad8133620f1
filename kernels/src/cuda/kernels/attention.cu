// Causal grouped-query attention, forward and backward, flash-style: keys and values stream
// through shared memory in tiles of 32 with an online softmax, so no [seq, seq] matrix is ever
// stored. Batches are packed: sequence b holds tokens [cu[b], cu[b+1]) and attends only within
// itself; grid.z runs over sequences. Layouts: q, out, dq [tokens, heads, head_dim]; k, v, dk, dv
// [tokens, kv_heads, head_dim] (bf16); lse and delta [tokens, heads] (f32). Query head h reads
// key/value head h / (heads / kv_heads). head_dim ≤ 128. A block is ROWS warps; each warp owns
// one query row (forward, dq) or one key row (dk, dv), so no output needs atomics.

#define ROWS 8
#define TILE 32
#define MAX_D 128
#define PAD (MAX_D + 1)

// Stage rows [start, start + TILE) of head `h` of two [seq, n_heads, head_dim] tensors into
// shared tiles, zeros past the end. The whole block calls it, between barriers.
__device__ void stage_tiles(const bf16* __restrict__ x, const bf16* __restrict__ y, int start, int seq, int n_heads,
                            int h, int head_dim, float (*xs)[PAD], float (*ys)[PAD]) {
    for (int e = threadIdx.x; e < TILE * head_dim; e += blockDim.x) {
        int r = e / head_dim, d = e % head_dim;
        bool in = start + r < seq;
        size_t at = ((size_t)(start + r) * n_heads + h) * head_dim + d;
        xs[r][d] = in ? bf16_to_f32(x[at]) : 0.0f;
        ys[r][d] = in ? bf16_to_f32(y[at]) : 0.0f;
    }
}

// out = softmax(scale·q·kᵀ + causal mask)·v; lse[h, i] = log Σ_j exp(scale·q_i·k_j).
extern "C" __global__ void attention_forward(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                             const bf16* __restrict__ v, const int* __restrict__ cu, int heads,
                                             int kv_heads, int head_dim, float scale, bf16* __restrict__ out,
                                             float* __restrict__ lse) {
    int s0 = cu[blockIdx.z], seq = cu[blockIdx.z + 1] - s0;
    if ((int)(blockIdx.x * ROWS) >= seq) return;  // the whole block: past this sequence's end
    q += (size_t)s0 * heads * head_dim;
    k += (size_t)s0 * kv_heads * head_dim;
    v += (size_t)s0 * kv_heads * head_dim;
    out += (size_t)s0 * heads * head_dim;
    lse += (size_t)s0 * heads;
    __shared__ float qs[ROWS][MAX_D];
    __shared__ float ks[TILE][PAD];
    __shared__ float vs[TILE][PAD];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = blockIdx.y, hk = h / (heads / kv_heads);
    int i = blockIdx.x * ROWS + warp;
    bool active = i < seq;
    int per = head_dim / 32 + (head_dim % 32 ? 1 : 0);
    for (int d = lane; d < head_dim; d += 32) {
        qs[warp][d] = active ? bf16_to_f32(q[((size_t)i * heads + h) * head_dim + d]) : 0.0f;
    }
    float m = -INF, l = 0.0f, acc[MAX_D / 32];
    for (int c = 0; c < MAX_D / 32; c++) acc[c] = 0.0f;
    int last = min(seq - 1, (int)(blockIdx.x * ROWS + ROWS - 1));
    for (int start = 0; start <= last; start += TILE) {
        __syncthreads();
        stage_tiles(k, v, start, seq, kv_heads, hk, head_dim, ks, vs);
        __syncthreads();
        if (!active || start > i) continue;
        // Lane j scores key start + j.
        int j = start + lane;
        float s = -INF;
        if (j <= i) {
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += qs[warp][d] * ks[lane][d];
            s = dot * scale;
        }
        float nm = fmaxf(m, warp_max(s));
        float p = j <= i ? __expf(s - nm) : 0.0f;
        float alpha = __expf(m - nm);
        l = l * alpha + warp_sum(p);
        for (int c = 0; c < per; c++) acc[c] *= alpha;
        for (int jj = 0; jj < TILE; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            if (pj == 0.0f) continue;
            for (int c = 0; c < per; c++) {
                int d = lane + 32 * c;
                if (d < head_dim) acc[c] += pj * vs[jj][d];
            }
        }
        m = nm;
    }
    if (!active) return;
    float inv = 1.0f / l;
    for (int c = 0; c < per; c++) {
        int d = lane + 32 * c;
        if (d < head_dim) out[((size_t)i * heads + h) * head_dim + d] = f32_to_bf16(acc[c] * inv);
    }
    if (lane == 0) lse[(size_t)i * heads + h] = m + __logf(l);
}

// delta[t, h] = Σ_d dout[t, h, d] · out[t, h, d] over every packed token; one warp per row.
extern "C" __global__ void attention_backward_delta(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                                    int tokens, int heads, int head_dim, float* __restrict__ delta) {
    int row = blockIdx.x * ROWS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= tokens * heads) return;
    size_t o = (size_t)row * head_dim;
    float s = 0.0f;
    for (int d = lane; d < head_dim; d += 32) s += bf16_to_f32(out[o + d]) * bf16_to_f32(dout[o + d]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// dq_i = scale · Σ_{j≤i} p_ij (dp_ij − delta_i) k_j, with p recomputed from lse.
extern "C" __global__ void attention_backward_dq(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                 const bf16* __restrict__ v, const bf16* __restrict__ dout,
                                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                                 const int* __restrict__ cu, int heads, int kv_heads, int head_dim,
                                                 float scale, bf16* __restrict__ dq) {
    int s0 = cu[blockIdx.z], seq = cu[blockIdx.z + 1] - s0;
    if ((int)(blockIdx.x * ROWS) >= seq) return;
    q += (size_t)s0 * heads * head_dim;
    dout += (size_t)s0 * heads * head_dim;
    dq += (size_t)s0 * heads * head_dim;
    k += (size_t)s0 * kv_heads * head_dim;
    v += (size_t)s0 * kv_heads * head_dim;
    lse += (size_t)s0 * heads;
    delta += (size_t)s0 * heads;
    __shared__ float qs[ROWS][MAX_D];
    __shared__ float dos[ROWS][MAX_D];
    __shared__ float ks[TILE][PAD];
    __shared__ float vs[TILE][PAD];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = blockIdx.y, hk = h / (heads / kv_heads);
    int i = blockIdx.x * ROWS + warp;
    bool active = i < seq;
    int per = head_dim / 32 + (head_dim % 32 ? 1 : 0);
    for (int d = lane; d < head_dim; d += 32) {
        size_t at = ((size_t)i * heads + h) * head_dim + d;
        qs[warp][d] = active ? bf16_to_f32(q[at]) : 0.0f;
        dos[warp][d] = active ? bf16_to_f32(dout[at]) : 0.0f;
    }
    float row_lse = active ? lse[(size_t)i * heads + h] : 0.0f;
    float row_delta = active ? delta[(size_t)i * heads + h] : 0.0f;
    float acc[MAX_D / 32];
    for (int c = 0; c < MAX_D / 32; c++) acc[c] = 0.0f;
    int last = min(seq - 1, (int)(blockIdx.x * ROWS + ROWS - 1));
    for (int start = 0; start <= last; start += TILE) {
        __syncthreads();
        stage_tiles(k, v, start, seq, kv_heads, hk, head_dim, ks, vs);
        __syncthreads();
        if (!active || start > i) continue;
        int j = start + lane;
        float ds = 0.0f;
        if (j <= i) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < head_dim; d++) {
                s += qs[warp][d] * ks[lane][d];
                dp += dos[warp][d] * vs[lane][d];
            }
            float p = __expf(s * scale - row_lse);
            ds = p * (dp - row_delta);
        }
        for (int jj = 0; jj < TILE; jj++) {
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            if (dsj == 0.0f) continue;
            for (int c = 0; c < per; c++) {
                int d = lane + 32 * c;
                if (d < head_dim) acc[c] += dsj * ks[jj][d];
            }
        }
    }
    if (!active) return;
    for (int c = 0; c < per; c++) {
        int d = lane + 32 * c;
        if (d < head_dim) dq[((size_t)i * heads + h) * head_dim + d] = f32_to_bf16(acc[c] * scale);
    }
}

// For key row j of key/value head hk, summed over the query heads that share it and the query
// rows i ≥ j: dv_j = Σ p_ij dout_i, dk_j = scale · Σ p_ij (dp_ij − delta_i) q_i.
extern "C" __global__ void attention_backward_dkv(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                  const bf16* __restrict__ v, const bf16* __restrict__ dout,
                                                  const float* __restrict__ lse, const float* __restrict__ delta,
                                                  const int* __restrict__ cu, int heads, int kv_heads, int head_dim,
                                                  float scale, bf16* __restrict__ dk, bf16* __restrict__ dv) {
    int s0 = cu[blockIdx.z], seq = cu[blockIdx.z + 1] - s0;
    if ((int)(blockIdx.x * ROWS) >= seq) return;
    q += (size_t)s0 * heads * head_dim;
    dout += (size_t)s0 * heads * head_dim;
    k += (size_t)s0 * kv_heads * head_dim;
    v += (size_t)s0 * kv_heads * head_dim;
    dk += (size_t)s0 * kv_heads * head_dim;
    dv += (size_t)s0 * kv_heads * head_dim;
    lse += (size_t)s0 * heads;
    delta += (size_t)s0 * heads;
    __shared__ float kr[ROWS][MAX_D];
    __shared__ float vr[ROWS][MAX_D];
    __shared__ float qs[TILE][PAD];
    __shared__ float dos[TILE][PAD];
    __shared__ float lses[TILE];
    __shared__ float deltas[TILE];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int hk = blockIdx.y, group = heads / kv_heads;
    int j = blockIdx.x * ROWS + warp;
    bool active = j < seq;
    int per = head_dim / 32 + (head_dim % 32 ? 1 : 0);
    for (int d = lane; d < head_dim; d += 32) {
        size_t at = ((size_t)j * kv_heads + hk) * head_dim + d;
        kr[warp][d] = active ? bf16_to_f32(k[at]) : 0.0f;
        vr[warp][d] = active ? bf16_to_f32(v[at]) : 0.0f;
    }
    float dk_acc[MAX_D / 32], dv_acc[MAX_D / 32];
    for (int c = 0; c < MAX_D / 32; c++) dk_acc[c] = dv_acc[c] = 0.0f;
    int first = blockIdx.x * ROWS;
    for (int g = 0; g < group; g++) {
        int h = hk * group + g;
        for (int start = first - first % TILE; start < seq; start += TILE) {
            __syncthreads();
            stage_tiles(q, dout, start, seq, heads, h, head_dim, qs, dos);
            for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
                bool in = start + r < seq;
                lses[r] = in ? lse[(size_t)(start + r) * heads + h] : 0.0f;
                deltas[r] = in ? delta[(size_t)(start + r) * heads + h] : 0.0f;
            }
            __syncthreads();
            if (!active) continue;
            // Lane r takes query row start + r.
            int i = start + lane;
            float p = 0.0f, ds = 0.0f;
            if (i < seq && i >= j) {
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < head_dim; d++) {
                    s += qs[lane][d] * kr[warp][d];
                    dp += dos[lane][d] * vr[warp][d];
                }
                p = __expf(s * scale - lses[lane]);
                ds = p * (dp - deltas[lane]);
            }
            for (int r = 0; r < TILE; r++) {
                float pr = __shfl_sync(0xffffffffu, p, r);
                float dsr = __shfl_sync(0xffffffffu, ds, r);
                if (pr == 0.0f && dsr == 0.0f) continue;
                for (int c = 0; c < per; c++) {
                    int d = lane + 32 * c;
                    if (d < head_dim) {
                        dv_acc[c] += pr * dos[r][d];
                        dk_acc[c] += dsr * qs[r][d];
                    }
                }
            }
        }
    }
    if (!active) return;
    for (int c = 0; c < per; c++) {
        int d = lane + 32 * c;
        if (d < head_dim) {
            size_t at = ((size_t)j * kv_heads + hk) * head_dim + d;
            dk[at] = f32_to_bf16(dk_acc[c] * scale);
            dv[at] = f32_to_bf16(dv_acc[c]);
        }
    }
}
