// Rotary position embedding, in place on x [tokens, heads, head_dim]; token t sits at position
// positions[t] when `positions` is not null (packed batches restart at 0 per sequence), else at
// start_pos + t. cos/sin are [max_pos, head_dim/2] (f32). `interleaved`: dimension 2i pairs with
// 2i+1, else i pairs with i + head_dim/2. `sign` = +1 rotates forward, −1 is the backward.
// One thread per rotated pair.

extern "C" __global__ void rope(bf16* __restrict__ x, const float* __restrict__ cos_t,
                                const float* __restrict__ sin_t, int tokens, int heads, int head_dim,
                                int start_pos, const int* __restrict__ positions, int interleaved,
                                float sign) {
    int half = head_dim / 2;
    size_t n = (size_t)tokens * heads * half;
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < n; p += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(p % half);
        size_t row = p / half;  // token * heads + head
        int t = (int)(row / heads);
        size_t base = row * head_dim;
        size_t a = base + (interleaved ? 2 * i : i);
        size_t b = base + (interleaved ? 2 * i + 1 : i + half);
        int pos = positions ? positions[t] : start_pos + t;
        float c = cos_t[(size_t)pos * half + i];
        float s = sign * sin_t[(size_t)pos * half + i];
        float xa = bf16_to_f32(x[a]), xb = bf16_to_f32(x[b]);
        x[a] = f32_to_bf16(xa * c - xb * s);
        x[b] = f32_to_bf16(xb * c + xa * s);
    }
}
