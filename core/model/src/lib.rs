//! trex's training engine: Llama-family decoders (Llama, SmolLM/SmolLM2, Qwen2-style with q/k/v
//! bias) with their configuration, weights, loading from GGUF files and Hugging Face
//! directories and the tokenizer ([`Tokenizer`]); LoRA adapters; the trainer ([`train`]: CPU and
//! CUDA engines); generation ([`generate`]); FLOP counts ([`flops`]); and writes that a kill cannot tear
//! ([`files`]).
//!
//! Architecture Invariant: nothing here depends on wasmtime, tokio or clap, and nothing prints;
//! callers get typed errors and progress callbacks.

pub mod files;
pub mod flops;
pub mod generate;
pub mod gguf;
pub mod grammar;
mod hf;
pub mod llama;
pub mod lora;
pub mod serving;
pub mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trex_kernels::Real;

pub use llama::{Batch, KvCache, Llama};
pub use lora::LoraAdapter;
pub use tokenizer::Tokenizer;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file cannot be read.
    #[error("{}: cannot read: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The file cannot be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is damaged or truncated.
    #[error("{}: corrupt model file: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Something trex does not support (architecture, quantization, version).
    #[error("{}: unsupported: {message}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What.
        message: String,
    },
    /// A required tensor or key is absent.
    #[error("{}: missing {what}", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A tensor's shape disagrees with the configuration.
    #[error("{}: tensor `{tensor}` has {got} elements but the configuration implies {want} ({hint})", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Elements found.
        got: usize,
        /// Elements expected.
        want: usize,
        /// Which dimensions were expected.
        hint: String,
    },
    /// The tokenizer cannot be built.
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The model's chat template failed to render the conversation.
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

/// Which variant of the Llama family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama, SmolLM, SmolLM2, Mistral-style without sliding window.
    Llama,
    /// Qwen2: Llama plus biases on the q, k and v projections.
    Qwen2,
}

/// The shape and constants of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Architecture variant.
    pub arch: Arch,
    /// Residual width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest context.
    pub max_pos: usize,
    /// The LM head shares the token embedding.
    pub tie_embeddings: bool,
}

impl LlamaConfig {
    /// Why this configuration cannot be a real model, if it cannot: every size positive and
    /// within what any released model of this family uses (a file claiming 2^40 layers is
    /// refused before anything is allocated for them; found by fuzzing).
    pub fn problem(&self) -> Option<String> {
        let limits = [
            ("hidden size", self.hidden, 1 << 16),
            ("intermediate size", self.intermediate, 1 << 18),
            ("layer count", self.layers, 1 << 10),
            ("attention heads", self.heads, 1 << 10),
            ("key/value heads", self.kv_heads, 1 << 10),
            ("head dimension", self.head_dim, 1 << 12),
            ("vocabulary size", self.vocab, 1 << 22),
            ("context length", self.max_pos, 1 << 24),
        ];
        for (what, value, max) in limits {
            if value == 0 || value > max {
                return Some(format!("{what} {value} is out of range (1 to {max})"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Some(format!("{} attention heads cannot share {} key/value heads", self.heads, self.kv_heads));
        }
        None
    }

    /// Parameters of the base model.
    pub fn parameters(&self) -> usize {
        let (d, f) = (self.hidden, self.intermediate);
        let kv = self.kv_heads * self.head_dim;
        let q = self.heads * self.head_dim;
        let bias = if self.arch == Arch::Qwen2 { q + 2 * kv } else { 0 };
        let per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d + bias;
        self.vocab * d * if self.tie_embeddings { 1 } else { 2 } + self.layers * per_layer + d
    }

    /// A small random-weight configuration for tests.
    pub fn tiny() -> Self {
        Self {
            arch: Arch::Llama,
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            vocab: 96,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            max_pos: 256,
            tie_embeddings: true,
        }
    }

    /// The SmolLM2-135M shape (for benchmarks with random weights).
    pub fn smollm2_135m() -> Self {
        Self {
            arch: Arch::Llama,
            hidden: 576,
            intermediate: 1536,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            vocab: 49152,
            rms_eps: 1e-5,
            rope_theta: 100_000.0,
            max_pos: 8192,
            tie_embeddings: true,
        }
    }
}

/// One decoder block's weights; matrices are `[out, in]` row-major (Hugging Face layout).
#[derive(Debug, Clone)]
pub struct LayerWeights<T> {
    /// RMSNorm before attention.
    pub attn_norm: Vec<T>,
    /// `q_proj` [heads·head_dim, hidden].
    pub q: Vec<T>,
    /// `k_proj` [kv_heads·head_dim, hidden].
    pub k: Vec<T>,
    /// `v_proj` [kv_heads·head_dim, hidden].
    pub v: Vec<T>,
    /// `o_proj` [hidden, heads·head_dim].
    pub o: Vec<T>,
    /// q/k/v biases (Qwen2).
    pub qkv_bias: Option<[Vec<T>; 3]>,
    /// RMSNorm before the MLP.
    pub mlp_norm: Vec<T>,
    /// `gate_proj` [intermediate, hidden].
    pub gate: Vec<T>,
    /// `up_proj` [intermediate, hidden].
    pub up: Vec<T>,
    /// `down_proj` [hidden, intermediate].
    pub down: Vec<T>,
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub struct Weights<T> {
    /// Token embedding [vocab, hidden].
    pub embed: Vec<T>,
    /// Decoder blocks.
    pub layers: Vec<LayerWeights<T>>,
    /// Final RMSNorm.
    pub final_norm: Vec<T>,
    /// LM head [vocab, hidden], or `None` when tied to `embed`.
    pub lm_head: Option<Vec<T>>,
}

impl<T: Real> Weights<T> {
    /// Random weights (bell-shaped, std 1/sqrt(fan-in); embeddings std 1), seeded: for tests
    /// and speed benchmarks.
    pub fn random(config: &LlamaConfig, seed: u64) -> Self {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |scale: f64| -> T {
            // xorshift64*, then a sum of uniforms for a bell shape.
            let mut acc = 0.0;
            for _ in 0..3 {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let u = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
                acc += u - 0.5;
            }
            T::from_f64(acc * scale * 2.0).expect("finite")
        };
        let (d, f) = (config.hidden, config.intermediate);
        let q = config.heads * config.head_dim;
        let kv = config.kv_heads * config.head_dim;
        let mut mat = |n: usize, fan_in: usize| (0..n).map(|_| next(1.0 / (fan_in as f64).sqrt())).collect::<Vec<T>>();
        let ones = |n: usize| vec![T::one(); n];
        // Unit-scale embeddings: with a frozen, tied, normalized head, small embeddings would cap
        // the logits (and so how confident a trained adapter can make the model).
        let embed = mat(config.vocab * d, 1);
        let layers = (0..config.layers)
            .map(|_| LayerWeights {
                attn_norm: ones(d),
                q: mat(q * d, d),
                k: mat(kv * d, d),
                v: mat(kv * d, d),
                o: mat(d * q, q),
                qkv_bias: (config.arch == Arch::Qwen2).then(|| [mat(q, d), mat(kv, d), mat(kv, d)]),
                mlp_norm: ones(d),
                gate: mat(f * d, d),
                up: mat(f * d, d),
                down: mat(d * f, f),
            })
            .collect();
        let lm_head = (!config.tie_embeddings).then(|| mat(config.vocab * d, 1));
        Self { embed, layers, final_norm: ones(d), lm_head }
    }

    /// The same weights in another float type.
    pub fn cast<U: Real>(&self) -> Weights<U> {
        let c = |v: &Vec<T>| {
            v.iter().map(|x| U::from_f64(x.to_f64().expect("finite")).expect("finite")).collect::<Vec<U>>()
        };
        Weights {
            embed: c(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    attn_norm: c(&l.attn_norm),
                    q: c(&l.q),
                    k: c(&l.k),
                    v: c(&l.v),
                    o: c(&l.o),
                    qkv_bias: l.qkv_bias.as_ref().map(|[a, b, d]| [c(a), c(b), c(d)]),
                    mlp_norm: c(&l.mlp_norm),
                    gate: c(&l.gate),
                    up: c(&l.up),
                    down: c(&l.down),
                })
                .collect(),
            final_norm: c(&self.final_norm),
            lm_head: self.lm_head.as_ref().map(c),
        }
    }
}

/// A loaded base model: configuration, `f32` weights, tokenizer and chat template.
#[derive(Debug)]
pub struct BaseModel {
    /// Shape and constants.
    pub config: LlamaConfig,
    /// Weights.
    pub weights: Weights<f32>,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
    /// Where it came from.
    pub source: PathBuf,
}

impl BaseModel {
    /// Load a GGUF file, or a Hugging Face directory (`config.json`, `*.safetensors`,
    /// `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        if path.is_dir() {
            hf::load_dir(path)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            load_gguf(path)
        } else if !path.exists() {
            Err(ModelError::Io {
                path: path.into(),
                message: "no such file or directory (pass a .gguf file or a Hugging Face model directory)".into(),
            })
        } else {
            Err(ModelError::Unsupported {
                path: path.into(),
                message: "expected a .gguf file or a directory with config.json and *.safetensors".into(),
            })
        }
    }
}

/// Every tensor of a safetensors file, decoded to `f32`.
pub fn read_safetensors_file(path: &Path) -> Result<std::collections::BTreeMap<String, Vec<f32>>, ModelError> {
    hf::read_safetensors(&[path.to_path_buf()])
}

/// Write `f32` tensors (name, values, shape) to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, &[f32], Vec<usize>)]) -> Result<(), ModelError> {
    hf::write_safetensors(path, tensors).map_err(|source| ModelError::Write { path: path.into(), source })
}

/// Whether an I/O error means the disk is full or a quota is spent (ENOSPC, EDQUOT): a cause
/// that no other experiment would avoid.
pub fn out_of_space(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Write a model as a Hugging Face directory (`config.json`, `model.safetensors`,
/// `tokenizer.json`, `tokenizer_config.json`) that transformers can load.
pub fn export_hf_dir(
    dir: &Path,
    config: &LlamaConfig,
    weights: &Weights<f32>,
    tokenizer: &Tokenizer,
) -> Result<(), ModelError> {
    hf::export_dir(dir, config, weights, tokenizer)
}

/// Check a loaded tensor's size against the configuration.
fn expect_len(path: &Path, tensor: &str, v: Vec<f32>, dims: &[usize]) -> Result<Vec<f32>, ModelError> {
    let want: usize = dims.iter().product();
    if v.len() != want {
        return Err(ModelError::Shape {
            path: path.into(),
            tensor: tensor.into(),
            got: v.len(),
            want,
            hint: format!("{dims:?}"),
        });
    }
    Ok(v)
}

/// llama.cpp's converter reorders the rows of q/k projections for its interleaved RoPE:
/// within each head, HF row `s·(d/2) + i` is stored at row `2i + s`. Undo it so the weights
/// (and LoRA adapters trained on them) are in Hugging Face layout, used with half-split RoPE.
pub fn unpermute_qk(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let hf_row = h * head_dim + s * half + i;
                let gguf_row = h * head_dim + 2 * i + s;
                out[hf_row * cols..(hf_row + 1) * cols].copy_from_slice(&w[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

fn load_gguf(path: &Path) -> Result<BaseModel, ModelError> {
    use gguf::Value;
    let file = gguf::GgufFile::open(path)?;
    let arch = file.meta("general.architecture")?.as_str().unwrap_or_default().to_string();
    let kind = match arch.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(ModelError::Unsupported {
                path: path.into(),
                message: format!("architecture `{other}` (trex runs llama and qwen2 GGUF files)"),
            });
        }
    };
    let num = |key: &str| -> Result<usize, ModelError> {
        file.meta(&format!("{arch}.{key}"))?.as_u64().map(|v| v as usize).ok_or_else(|| ModelError::Corrupt {
            path: path.into(),
            message: format!("metadata `{arch}.{key}` is not an integer"),
        })
    };
    let hidden = num("embedding_length")?;
    let heads = num("attention.head_count")?;
    let kv_heads = file
        .metadata
        .get(&format!("{arch}.attention.head_count_kv"))
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .unwrap_or(heads);
    let vocab = match file.metadata.get(&format!("{arch}.vocab_size")).and_then(Value::as_u64) {
        Some(v) => v as usize,
        None => match file.meta("tokenizer.ggml.tokens")? {
            Value::Array(a) => a.len(),
            _ => 0,
        },
    };
    let config = LlamaConfig {
        arch: kind,
        hidden,
        intermediate: num("feed_forward_length")?,
        layers: num("block_count")?,
        heads,
        kv_heads,
        head_dim: hidden / heads.max(1),
        vocab,
        rms_eps: file
            .metadata
            .get(&format!("{arch}.attention.layer_norm_rms_epsilon"))
            .and_then(Value::as_f64)
            .unwrap_or(1e-5),
        rope_theta: file.metadata.get(&format!("{arch}.rope.freq_base")).and_then(Value::as_f64).unwrap_or(10_000.0),
        max_pos: num("context_length").unwrap_or(4096),
        tie_embeddings: !file.tensors.contains_key("output.weight"),
    };
    if let Some(message) = config.problem() {
        return Err(ModelError::Corrupt { path: path.into(), message });
    }
    let (d, f, hd) = (config.hidden, config.intermediate, config.head_dim);
    let (q, kv) = (config.heads * hd, config.kv_heads * hd);
    let t = |name: &str, dims: &[usize]| expect_len(path, name, file.tensor_f32(name)?, dims);
    let mut layers = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        let n = |s: &str| format!("blk.{i}.{s}");
        let qw = t(&n("attn_q.weight"), &[q, d])?;
        let kw = t(&n("attn_k.weight"), &[kv, d])?;
        // llama.cpp permutes q/k rows for llama; qwen2 GGUFs keep the HF order.
        let (qw, kw) = if kind == Arch::Llama {
            (unpermute_qk(&qw, config.heads, hd, d), unpermute_qk(&kw, config.kv_heads, hd, d))
        } else {
            (qw, kw)
        };
        let qkv_bias = if kind == Arch::Qwen2 {
            Some([t(&n("attn_q.bias"), &[q])?, t(&n("attn_k.bias"), &[kv])?, t(&n("attn_v.bias"), &[kv])?])
        } else {
            None
        };
        layers.push(LayerWeights {
            attn_norm: t(&n("attn_norm.weight"), &[d])?,
            q: qw,
            k: kw,
            v: t(&n("attn_v.weight"), &[kv, d])?,
            o: t(&n("attn_output.weight"), &[d, q])?,
            qkv_bias,
            mlp_norm: t(&n("ffn_norm.weight"), &[d])?,
            gate: t(&n("ffn_gate.weight"), &[f, d])?,
            up: t(&n("ffn_up.weight"), &[f, d])?,
            down: t(&n("ffn_down.weight"), &[d, f])?,
        });
    }
    let weights = Weights {
        embed: t("token_embd.weight", &[config.vocab, d])?,
        layers,
        final_norm: t("output_norm.weight", &[d])?,
        lm_head: if config.tie_embeddings { None } else { Some(t("output.weight", &[config.vocab, d])?) },
    };
    let tokenizer = tokenizer::from_gguf(&file)?;
    Ok(BaseModel { config, weights, tokenizer, source: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let (heads, hd, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        // llama.cpp: reshape(heads, 2, hd/2, cols).swapaxes(1, 2)
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + s * (hd / 2) + i;
                    let dst = h * hd + i * 2 + s;
                    gguf[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_qk(&gguf, heads, hd, cols), hf);
    }

    #[test]
    fn smollm2_shape_has_the_published_parameter_count() {
        assert_eq!(LlamaConfig::smollm2_135m().parameters(), 134_515_008);
    }
}
