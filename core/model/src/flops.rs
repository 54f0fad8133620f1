//! FLOP counts of one LoRA training token: what benchmarks divide by to get achieved FLOP/s and
//! MFU. One formula, two conventions for attention.

use crate::LlamaConfig;

/// FLOPs of one training token with attention over `cols` key columns per query on average,
/// when the top `trained` blocks carry adapters: in those, forward and input-gradient products
/// of every frozen linear layer (2 + 2 FLOPs per weight), q·kᵀ and p·v forward and backward, and
/// LoRA on all seven targets at rank `rank`; in the blocks below, the forward pass only; and the
/// LM head on the fraction `with_loss` of positions that carry a loss.
fn per_token(config: &LlamaConfig, rank: usize, with_loss: f64, cols: f64, trained: usize) -> f64 {
    let (d, f) = (config.hidden as f64, config.intermediate as f64);
    let (q, kv) = ((config.heads * config.head_dim) as f64, (config.kv_heads * config.head_dim) as f64);
    let linear = d * q + 2.0 * d * kv + q * d + 3.0 * d * f;
    let lora_io = (q + d) + 2.0 * (kv + d) + (d + q) + 2.0 * (f + d) + (d + f);
    let attention = 12.0 * cols * q;
    let per_layer = 4.0 * linear + attention + 8.0 * rank as f64 * lora_io;
    let forward_only = 2.0 * linear + attention / 3.0;
    let trained = trained.min(config.layers);
    trained as f64 * per_layer
        + (config.layers - trained) as f64 * forward_only
        + 4.0 * config.vocab as f64 * d * with_loss
}

/// FLOPs of one training token as the CPU engine computes them at sequence length `seq`: the
/// blocked attention kernel computes, for each 64-row query block, every key column up to the
/// block's last row.
pub fn train_flops_per_token(config: &LlamaConfig, seq: usize, rank: usize, with_loss: f64) -> f64 {
    train_flops_per_token_top(config, seq, rank, with_loss, config.layers)
}

/// [`train_flops_per_token`] with adapters on the top `trained` blocks only: the blocks below
/// run forward and are not gone back through.
pub fn train_flops_per_token_top(config: &LlamaConfig, seq: usize, rank: usize, with_loss: f64, trained: usize) -> f64 {
    let block = 64;
    let computed: usize = (0..seq).step_by(block).map(|r0| (r0 + block).min(seq) * ((r0 + block).min(seq) - r0)).sum();
    per_token(config, rank, with_loss, computed as f64 / seq.max(1) as f64, trained)
}

/// Model FLOPs of one training token, the convention of MFU figures: causal attention counts
/// half the square.
pub fn model_flops_per_token(config: &LlamaConfig, seq: usize, rank: usize, with_loss: f64) -> f64 {
    per_token(config, rank, with_loss, (seq as f64 + 1.0) / 2.0, config.layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_conventions_differ_only_in_attention() {
        let c = LlamaConfig::smollm2_135m();
        // One 64-row block: the blocked kernel computes the full 64×64 square, the model count half.
        let (computed, model) = (train_flops_per_token(&c, 64, 16, 1.0), model_flops_per_token(&c, 64, 16, 1.0));
        let q = (c.heads * c.head_dim) as f64;
        let want = c.layers as f64 * 12.0 * q * (64.0 - 32.5);
        assert!((computed - model - want).abs() < 1e-6 * computed, "{computed} {model} {want}");
        // About 0.6 GFLOP per token for SmolLM2-135M at seq 512 with a loss everywhere.
        let t = model_flops_per_token(&c, 512, 16, 1.0);
        assert!((5.5e8..7.0e8).contains(&t), "{t}");
        // With the top 8 of 30 blocks trained, the 22 below cost their forward pass only:
        // between a third and a half of a trained block each.
        let (all, top) = (train_flops_per_token(&c, 512, 16, 1.0), train_flops_per_token_top(&c, 512, 16, 1.0, 8));
        let head = 4.0 * (c.vocab * c.hidden) as f64;
        let block = (all - head) / 30.0;
        let below = (top - head - 8.0 * block) / 22.0;
        assert!(below > block / 3.0 && below < block / 2.0, "{below} against {block}");
    }
}
