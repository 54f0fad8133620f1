//! Hugging Face model directories: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Arch, BaseModel, LayerWeights, LlamaConfig, ModelError, Tokenizer, Weights, expect_len};

/// Decode a safetensors tensor (F32, F16 or BF16) to `f32`.
pub(crate) fn tensor_to_f32(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<Vec<f32>, ModelError> {
    use safetensors::Dtype;
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => {
            return Err(ModelError::Unsupported {
                path: path.into(),
                message: format!("tensor `{name}` has dtype {other:?} (trex reads F32, F16 and BF16 safetensors)"),
            });
        }
    })
}

/// Every tensor of one or more safetensors files, by name, decoded to `f32`.
pub(crate) fn read_safetensors(files: &[PathBuf]) -> Result<BTreeMap<String, Vec<f32>>, ModelError> {
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| ModelError::Io { path: file.clone(), message: e.to_string() })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Corrupt {
            path: file.clone(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        for (name, view) in st.tensors() {
            let v = tensor_to_f32(file, &name, &view)?;
            out.insert(name, v);
        }
    }
    Ok(out)
}

fn config_from_json(path: &Path, v: &serde_json::Value) -> Result<LlamaConfig, ModelError> {
    let arch = v["architectures"].as_array().and_then(|a| a.first()).and_then(|a| a.as_str()).unwrap_or("");
    let arch = match arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => Arch::Llama,
        "Qwen2ForCausalLM" => Arch::Qwen2,
        other => {
            return Err(ModelError::Unsupported {
                path: path.into(),
                message: format!(
                    "architecture `{other}` (trex runs LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM)"
                ),
            });
        }
    };
    let num = |key: &str| -> Result<usize, ModelError> {
        v[key]
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| ModelError::Missing { path: path.into(), what: format!("integer field `{key}`") })
    };
    let hidden = num("hidden_size")?;
    let heads = num("num_attention_heads")?;
    let config = LlamaConfig {
        arch,
        hidden,
        intermediate: num("intermediate_size")?,
        layers: num("num_hidden_layers")?,
        heads,
        kv_heads: num("num_key_value_heads").unwrap_or(heads),
        head_dim: v["head_dim"].as_u64().map(|x| x as usize).unwrap_or(hidden / heads.max(1)),
        vocab: num("vocab_size")?,
        rms_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0),
        max_pos: num("max_position_embeddings").unwrap_or(4096),
        tie_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
    };
    match config.problem() {
        Some(message) => Err(ModelError::Corrupt { path: path.into(), message }),
        None => Ok(config),
    }
}

pub(super) fn load_dir(dir: &Path) -> Result<BaseModel, ModelError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::Io {
        path: config_path.clone(),
        message: format!("{e} (a Hugging Face model directory needs config.json)"),
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Corrupt { path: config_path.clone(), message: e.to_string() })?;
    let config = config_from_json(&config_path, &json)?;
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| ModelError::Io { path: index.clone(), message: e.to_string() })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Corrupt { path: index.clone(), message: e.to_string() })?;
        let mut shards: Vec<String> = v["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Missing { path: index.clone(), what: "`weight_map`".into() })?
            .values()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut tensors = read_safetensors(&files)?;
    let shard = files.first().cloned().unwrap_or_else(|| dir.to_path_buf());
    let mut take = |name: &str, dims: &[usize]| -> Result<Vec<f32>, ModelError> {
        let v = tensors
            .remove(name)
            .ok_or_else(|| ModelError::Missing { path: shard.clone(), what: format!("tensor `{name}`") })?;
        expect_len(&shard, name, v, dims)
    };
    let (d, f, hd) = (config.hidden, config.intermediate, config.head_dim);
    let (q, kv) = (config.heads * hd, config.kv_heads * hd);
    let mut layers = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        let p = format!("model.layers.{i}.");
        let qkv_bias = if config.arch == Arch::Qwen2 {
            Some([
                take(&format!("{p}self_attn.q_proj.bias"), &[q])?,
                take(&format!("{p}self_attn.k_proj.bias"), &[kv])?,
                take(&format!("{p}self_attn.v_proj.bias"), &[kv])?,
            ])
        } else {
            None
        };
        layers.push(LayerWeights {
            attn_norm: take(&format!("{p}input_layernorm.weight"), &[d])?,
            q: take(&format!("{p}self_attn.q_proj.weight"), &[q, d])?,
            k: take(&format!("{p}self_attn.k_proj.weight"), &[kv, d])?,
            v: take(&format!("{p}self_attn.v_proj.weight"), &[kv, d])?,
            o: take(&format!("{p}self_attn.o_proj.weight"), &[d, q])?,
            qkv_bias,
            mlp_norm: take(&format!("{p}post_attention_layernorm.weight"), &[d])?,
            gate: take(&format!("{p}mlp.gate_proj.weight"), &[f, d])?,
            up: take(&format!("{p}mlp.up_proj.weight"), &[f, d])?,
            down: take(&format!("{p}mlp.down_proj.weight"), &[d, f])?,
        });
    }
    let embed = take("model.embed_tokens.weight", &[config.vocab, d])?;
    let final_norm = take("model.norm.weight", &[d])?;
    let lm_head = if config.tie_embeddings { None } else { Some(take("lm_head.weight", &[config.vocab, d])?) };
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    Ok(BaseModel {
        config,
        weights: Weights { embed, layers, final_norm, lm_head },
        tokenizer,
        source: dir.to_path_buf(),
    })
}

pub(super) fn export_dir(
    dir: &Path,
    config: &LlamaConfig,
    weights: &Weights<f32>,
    tokenizer: &Tokenizer,
) -> Result<(), ModelError> {
    let io = |path: &Path, source: std::io::Error| ModelError::Write { path: path.into(), source };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let arch = match config.arch {
        Arch::Llama => "LlamaForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
    };
    let cfg = serde_json::json!({
        "architectures": [arch],
        "model_type": if config.arch == Arch::Qwen2 { "qwen2" } else { "llama" },
        "hidden_size": config.hidden,
        "intermediate_size": config.intermediate,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab,
        "rms_norm_eps": config.rms_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_pos,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.bos,
        "eos_token_id": tokenizer.eos.first(),
    });
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).expect("json")).map_err(|e| io(&path, e))?;
    let mut tensors: Vec<(String, &[f32], Vec<usize>)> = Vec::new();
    let (d, f) = (config.hidden, config.intermediate);
    let (q, kv) = (config.heads * config.head_dim, config.kv_heads * config.head_dim);
    tensors.push(("model.embed_tokens.weight".into(), &weights.embed, vec![config.vocab, d]));
    for (i, l) in weights.layers.iter().enumerate() {
        let p = format!("model.layers.{i}.");
        tensors.push((format!("{p}input_layernorm.weight"), &l.attn_norm, vec![d]));
        tensors.push((format!("{p}self_attn.q_proj.weight"), &l.q, vec![q, d]));
        tensors.push((format!("{p}self_attn.k_proj.weight"), &l.k, vec![kv, d]));
        tensors.push((format!("{p}self_attn.v_proj.weight"), &l.v, vec![kv, d]));
        tensors.push((format!("{p}self_attn.o_proj.weight"), &l.o, vec![d, q]));
        if let Some([bq, bk, bv]) = &l.qkv_bias {
            tensors.push((format!("{p}self_attn.q_proj.bias"), bq, vec![q]));
            tensors.push((format!("{p}self_attn.k_proj.bias"), bk, vec![kv]));
            tensors.push((format!("{p}self_attn.v_proj.bias"), bv, vec![kv]));
        }
        tensors.push((format!("{p}post_attention_layernorm.weight"), &l.mlp_norm, vec![d]));
        tensors.push((format!("{p}mlp.gate_proj.weight"), &l.gate, vec![f, d]));
        tensors.push((format!("{p}mlp.up_proj.weight"), &l.up, vec![f, d]));
        tensors.push((format!("{p}mlp.down_proj.weight"), &l.down, vec![d, f]));
    }
    tensors.push(("model.norm.weight".into(), &weights.final_norm, vec![d]));
    if let Some(head) = &weights.lm_head {
        tensors.push(("lm_head.weight".into(), head, vec![config.vocab, d]));
    }
    let path = dir.join("model.safetensors");
    write_safetensors(&path, &tensors).map_err(|e| io(&path, e))?;
    tokenizer.save(dir)
}

/// Write `f32` tensors (name, values, shape) to a safetensors file, tagged `format: pt` so that
/// PyTorch-side loaders accept it. A tensor whose values do not fill its shape is refused as
/// `InvalidInput`.
pub(crate) fn write_safetensors(path: &Path, tensors: &[(String, &[f32], Vec<usize>)]) -> std::io::Result<()> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let invalid = |e: safetensors::SafeTensorError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, _, shape), b)| {
            Ok((name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(invalid)?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let file = safetensors::serialize(views, Some(meta)).map_err(invalid)?;
    std::fs::write(path, file)
}
