//! Text generation for evaluation: continuous batching over a KV cache, a shared prompt prefix
//! prefilled once, greedy or temperature/top-p sampling, stop sequences, a cap on new tokens.
//!
//! Up to `batch_size` sequences decode together. A sequence that finishes leaves the batch at
//! once and the next waiting prompt joins it (its prefill runs in the same forward pass as the
//! others' decoding), so the batch stays full until the prompts run out. When every prompt
//! starts with the same tokens (a system prompt, a function list), those are run through the
//! model once and each sequence starts from a copy of that cache. Each sequence samples with its
//! own random stream, so its answer does not depend on which others share its batch.

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
    /// Sequences decoded together (the continuous batch's size).
    pub batch_size: usize,
    /// Prefill the prompts' common leading tokens once and start every sequence from a copy of
    /// that cache (the answers are the same either way).
    pub share_prefix: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            stop: Vec::new(),
            seed: 0,
            batch_size: 32,
            share_prefix: true,
        }
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

/// The next token: the most likely one at temperature 0, else a sample from the smallest set of
/// most likely tokens whose probability reaches `top_p`.
pub(crate) fn pick<T: Real>(logits: &[T], temperature: f32, top_p: f32, rng: &mut SplitMix) -> u32 {
    let greedy = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if temperature <= 0.0 {
        return greedy();
    }
    let t = temperature as f64;
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
        if mass >= top_p as f64 {
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

/// Shared prefixes shorter than this are not worth a separate prefill.
const MIN_SHARED_PREFIX: usize = 8;
/// Prompt tokens prefilled in one forward pass at most, besides the running sequences' decode
/// tokens (bounds activation memory when many long prompts join at once).
const MAX_PREFILL_TOKENS: usize = 4096;

/// The number of leading tokens every prompt shares, leaving each at least one token of its own
/// (its last position's logits start the answer).
pub fn shared_prefix_len(prompts: &[Vec<u32>]) -> usize {
    let Some((first, rest)) = prompts.split_first() else { return 0 };
    if rest.is_empty() {
        return 0;
    }
    let mut len = first.len().saturating_sub(1);
    for p in rest {
        len = len.min(p.len().saturating_sub(1));
        len = first[..len].iter().zip(p).take_while(|(a, b)| a == b).count();
    }
    len
}

/// A sequence in the batch.
struct Running {
    /// Its prompt's index.
    index: usize,
    /// Tokens to run through the model next: the rest of its prompt, then one token per step.
    feed: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    rng: SplitMix,
}

/// Generate a continuation for each prompt (already formatted, e.g. with the chat template).
///
/// `on_done(n)` is called each time a prompt finishes, with the number finished so far. The
/// results are in the prompts' order.
pub fn generate<T: Real>(
    model: &Llama<T>,
    tokenizer: &Tokenizer,
    adapter: Option<&LoraAdapter<T>>,
    prompts: &[String],
    config: &GenerationConfig,
    mut on_done: impl FnMut(usize),
) -> Vec<Generation> {
    let empty = || Generation { text: String::new(), tokens: 0, finish: "length" };
    if config.max_new_tokens == 0 {
        let out = vec![empty(); prompts.len()];
        (1..=out.len()).for_each(&mut on_done);
        return out;
    }
    // Empty prompts get the beginning-of-sequence token.
    let start = tokenizer.bos.or(tokenizer.eos.first().copied()).unwrap_or(0);
    let encoded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let e = tokenizer.encode(p);
            if e.is_empty() { vec![start] } else { e }
        })
        .collect();
    let shared = if config.share_prefix { shared_prefix_len(&encoded) } else { 0 };
    let template = (shared >= MIN_SHARED_PREFIX).then(|| {
        let mut cache = KvCache::new(&model.config);
        model.forward_cached(&[&encoded[0][..shared]], std::slice::from_mut(&mut cache), adapter);
        cache
    });
    let skip = if template.is_some() { shared } else { 0 };
    let slots = config.batch_size.max(1);
    let vocab = model.config.vocab;
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut finished = 0;
    // The next prompt to join the batch.
    let mut next = 0;
    let mut running: Vec<Running> = Vec::new();
    let mut caches: Vec<KvCache<T>> = Vec::new();
    loop {
        // Fill the free slots, keeping one step's prefill bounded (one prompt always joins).
        let mut prefill = 0;
        while running.len() < slots && next < prompts.len() {
            let feed = encoded[next][skip..].to_vec();
            if prefill > 0 && prefill + feed.len() > MAX_PREFILL_TOKENS {
                break;
            }
            prefill += feed.len();
            caches.push(template.clone().unwrap_or_else(|| KvCache::new(&model.config)));
            let rng = SplitMix(config.seed ^ (next as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            running.push(Running { index: next, feed, generated: Vec::new(), text: String::new(), rng });
            next += 1;
        }
        if running.is_empty() {
            break;
        }
        let feeds: Vec<&[u32]> = running.iter().map(|r| r.feed.as_slice()).collect();
        let logits = model.forward_cached(&feeds, &mut caches, adapter);
        // Each sequence picks its next token; the finished ones leave.
        let mut kept = Vec::with_capacity(running.len());
        let mut kept_caches = Vec::with_capacity(running.len());
        for ((mut r, row), cache) in running.drain(..).zip(logits.chunks(vocab)).zip(caches.drain(..)) {
            let tok = pick(row, config.temperature, config.top_p, &mut r.rng);
            let finish = if tokenizer.eos.contains(&tok) {
                Some("eos")
            } else {
                r.generated.push(tok);
                r.text = tokenizer.decode(&r.generated, true);
                if let Some(pos) = config.stop.iter().filter_map(|s| r.text.find(s.as_str())).min() {
                    r.text.truncate(pos);
                    Some("stop")
                } else if r.generated.len() >= config.max_new_tokens || cache.len() + 1 >= model.config.max_pos {
                    // The cap on new tokens, or a full context (the next token would not fit).
                    Some("length")
                } else {
                    None
                }
            };
            match finish {
                Some(finish) => {
                    results[r.index] = Some(Generation { text: r.text, tokens: r.generated.len(), finish });
                    finished += 1;
                    on_done(finished);
                }
                None => {
                    r.feed = vec![tok];
                    kept.push(r);
                    kept_caches.push(cache);
                }
            }
        }
        running = kept;
        caches = kept_caches;
    }
    results.into_iter().map(|g| g.unwrap_or_else(empty)).collect()
}
