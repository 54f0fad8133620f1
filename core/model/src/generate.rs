//! Text generation for evaluation: batched prompts, KV cache, greedy or temperature/top-p
//! sampling, stop sequences, a cap on new tokens.

use trex_kernels::Real;

use crate::lora::SplitMix;
use crate::{KvCache, Llama, LoraAdapter, Tokenizer};

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 keeps every token).
    pub top_p: f32,
    /// Generation stops once the text contains any of these (the stop text is cut off).
    pub stop: Vec<String>,
    /// Seed for sampling.
    pub seed: u64,
    /// Prompts decoded together.
    pub batch_size: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0, top_p: 1.0, stop: Vec::new(), seed: 0, batch_size: 8 }
    }
}

/// One prompt's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text (stop text and end-of-sequence token removed).
    pub text: String,
    /// Tokens generated.
    pub tokens: usize,
    /// Why it stopped: `eos`, `stop`, or `length`.
    pub finish: &'static str,
}

fn pick<T: Real>(logits: &[T], config: &GenerationConfig, rng: &mut SplitMix) -> u32 {
    let greedy = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if config.temperature <= 0.0 {
        return greedy();
    }
    let t = config.temperature as f64;
    let max = logits.iter().map(|v| v.to_f64().unwrap_or(f64::NEG_INFINITY)).fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, v)| (i, ((v.to_f64().unwrap_or(f64::NEG_INFINITY) - max) / t).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= config.top_p as f64 {
            break;
        }
    }
    let mut u = rng.unit() * mass;
    for p in &probs[..kept] {
        if u < p.1 {
            return p.0 as u32;
        }
        u -= p.1;
    }
    probs[kept - 1].0 as u32
}

/// Generate a continuation for each prompt (already formatted, e.g. with the chat template).
pub fn generate<T: Real>(
    model: &Llama<T>,
    tokenizer: &Tokenizer,
    adapter: Option<&LoraAdapter<T>>,
    prompts: &[String],
    config: &GenerationConfig,
    mut on_done: impl FnMut(usize),
) -> Vec<Generation> {
    let mut results = Vec::with_capacity(prompts.len());
    let mut rng = SplitMix(config.seed);
    for chunk in prompts.chunks(config.batch_size.max(1)) {
        let encoded: Vec<Vec<u32>> = chunk.iter().map(|p| tokenizer.encode(p)).collect();
        let mut caches: Vec<KvCache<T>> = encoded.iter().map(|_| KvCache::new(&model.config)).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); chunk.len()];
        let mut done: Vec<Option<&'static str>> = vec![None; chunk.len()];
        let mut texts: Vec<String> = vec![String::new(); chunk.len()];
        // Prefill every prompt (empty prompts get the beginning-of-sequence token).
        let inputs: Vec<Vec<u32>> = encoded
            .iter()
            .map(|e| {
                if e.is_empty() {
                    vec![tokenizer.bos.or(tokenizer.eos.first().copied()).unwrap_or(0)]
                } else {
                    e.clone()
                }
            })
            .collect();
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut logits = model.forward_cached(&refs, &mut caches, adapter);
        let vocab = model.config.vocab;
        // rows[i]: the sequence whose logits are in row i.
        let mut rows: Vec<usize> = (0..chunk.len()).collect();
        for _ in 0..config.max_new_tokens {
            let mut next = Vec::new();
            for (&j, row) in rows.iter().zip(logits.chunks(vocab)) {
                let tok = pick(row, config, &mut rng);
                if tokenizer.eos.contains(&tok) {
                    done[j] = Some("eos");
                    continue;
                }
                generated[j].push(tok);
                texts[j] = tokenizer.decode(&generated[j], true);
                if let Some(pos) = config.stop.iter().filter_map(|s| texts[j].find(s.as_str())).min() {
                    texts[j].truncate(pos);
                    done[j] = Some("stop");
                    continue;
                }
                if caches[j].len() + 1 >= model.config.max_pos {
                    done[j] = Some("length");
                    continue;
                }
                next.push((j, tok));
            }
            if next.is_empty() {
                break;
            }
            let toks: Vec<[u32; 1]> = next.iter().map(|&(_, t)| [t]).collect();
            let refs: Vec<&[u32]> = toks.iter().map(|t| &t[..]).collect();
            // Move the caches of the sequences still running into one slice, in order.
            let mut active_caches: Vec<KvCache<T>> =
                next.iter().map(|&(j, _)| std::mem::replace(&mut caches[j], KvCache::new(&model.config))).collect();
            logits = model.forward_cached(&refs, &mut active_caches, adapter);
            for ((j, _), cache) in next.iter().zip(active_caches) {
                caches[*j] = cache;
            }
            rows = next.iter().map(|&(j, _)| j).collect();
        }
        for j in 0..chunk.len() {
            results.push(Generation {
                text: texts[j].clone(),
                tokens: generated[j].len(),
                finish: done[j].unwrap_or("length"),
            });
            on_done(results.len());
        }
    }
    results
}
