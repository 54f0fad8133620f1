//! Adapters on disk in Hugging Face PEFT layout (`adapter_config.json` +
//! `adapter_model.safetensors`), and merging an adapter into the base weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use trex_sdk::types::LoraTarget;

use crate::lora::{LoraPair, target_dims, target_index};
use crate::{LlamaConfig, LoraAdapter, ModelError, Weights};

/// Why an adapter could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// File-system failure.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A file of the adapter cannot be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The adapter does not fit the model or is malformed.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl AdapterError {
    /// Whether the error comes from a full disk or a spent quota.
    pub fn out_of_space(&self) -> bool {
        matches!(self, AdapterError::Write { source, .. } if crate::out_of_space(source))
    }
}

fn module_path(layer: usize, t: LoraTarget) -> String {
    let block = match t {
        LoraTarget::QProj | LoraTarget::KProj | LoraTarget::VProj | LoraTarget::OProj => "self_attn",
        _ => "mlp",
    };
    format!("base_model.model.model.layers.{layer}.{block}.{}", t.module_name())
}

fn target_from_name(name: &str) -> Option<LoraTarget> {
    LoraTarget::ALL.into_iter().find(|t| t.module_name() == name)
}

/// Write `adapter` to `dir` in PEFT layout. The folder is written whole under a temporary name
/// and renamed into place ([`crate::files::write_folder_atomically`]), so a kill in the middle
/// leaves the folder that was there before, or none, never half an adapter.
pub fn save_adapter(dir: &Path, adapter: &LoraAdapter<f32>, base_model: &str) -> Result<(), AdapterError> {
    let io = |path: &Path, source: std::io::Error| AdapterError::Write { path: path.into(), source };
    // Errors name each file by the name it is written for, not by its temporary one.
    crate::files::write_folder_atomically(dir, io, |tmp| write_adapter_files(tmp, dir, adapter, base_model))
}

/// The files of a PEFT adapter, written into `tmp`; errors name them as they will be in `dir`.
fn write_adapter_files(
    tmp: &Path,
    dir: &Path,
    adapter: &LoraAdapter<f32>,
    base_model: &str,
) -> Result<(), AdapterError> {
    let io = |name: &str, source: std::io::Error| AdapterError::Write { path: dir.join(name), source };
    let mut config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": adapter.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": false,
        "use_dora": false,
    });
    // Adapters on some blocks only say which, as PEFT does.
    let adapted = adapter.adapted_layers();
    if adapted.len() < adapter.layers.len() {
        config["layers_to_transform"] = serde_json::json!(adapted);
        config["layers_pattern"] = serde_json::json!("layers");
    }
    let cfg_name = "adapter_config.json";
    std::fs::write(tmp.join(cfg_name), serde_json::to_string_pretty(&config).expect("json"))
        .map_err(|e| io(cfg_name, e))?;
    let mut tensors: Vec<(String, &[f32], Vec<usize>)> = Vec::new();
    for (l, layer) in adapter.layers.iter().enumerate() {
        for &t in &adapter.targets {
            let Some(pair) = &layer[target_index(t)] else { continue };
            let r = adapter.rank;
            let (out, inp) = (pair.b.len() / r, pair.a.len() / r);
            tensors.push((format!("{}.lora_A.weight", module_path(l, t)), &pair.a, vec![r, inp]));
            tensors.push((format!("{}.lora_B.weight", module_path(l, t)), &pair.b, vec![out, r]));
        }
    }
    let name = "adapter_model.safetensors";
    crate::hf::write_safetensors(&tmp.join(name), &tensors).map_err(|e| io(name, e))
}

/// Read a PEFT adapter for a model of shape `config`.
pub fn load_adapter(dir: &Path, config: &LlamaConfig) -> Result<LoraAdapter<f32>, AdapterError> {
    let cfg_path = dir.join("adapter_config.json");
    let invalid = |path: &Path, message: String| AdapterError::Invalid { path: path.into(), message };
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| AdapterError::Io {
        path: cfg_path.clone(),
        message: format!("{e} (an adapter folder holds adapter_config.json)"),
    })?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(&cfg_path, e.to_string()))?;
    if cfg["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(invalid(&cfg_path, format!("peft_type `{}`: trex reads LORA adapters", cfg["peft_type"])));
    }
    for flag in ["use_dora", "use_rslora"] {
        if cfg[flag].as_bool() == Some(true) {
            return Err(invalid(&cfg_path, format!("`{flag}` adapters are not supported")));
        }
    }
    let rank = cfg["r"].as_u64().filter(|&r| r > 0 && r <= config.hidden as u64).ok_or_else(|| {
        invalid(&cfg_path, format!("field `r` must be an integer from 1 to the model's width, {}", config.hidden))
    })? as usize;
    let alpha = cfg["lora_alpha"].as_f64().unwrap_or(rank as f64);
    let dropout = cfg["lora_dropout"].as_f64().unwrap_or(0.0);
    let mut targets = Vec::new();
    let modules: Vec<String> = match &cfg["target_modules"] {
        serde_json::Value::Array(a) => a.iter().filter_map(|m| m.as_str().map(String::from)).collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => return Err(invalid(&cfg_path, "field `target_modules` is missing".into())),
    };
    for m in &modules {
        let t = target_from_name(m).ok_or_else(|| {
            invalid(&cfg_path, format!("unknown target module `{m}` (trex adapts q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"))
        })?;
        // A module named twice is one target (found by fuzzing: it was counted twice).
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let path = dir.join("adapter_model.safetensors");
    let tensors: BTreeMap<String, Vec<f32>> = crate::read_safetensors_file(&path).map_err(|e| match e {
        ModelError::Io { path, message } => AdapterError::Io { path, message },
        ModelError::Corrupt { path, message } => {
            AdapterError::Invalid { path, message: format!("damaged or truncated: {message}") }
        }
        other => AdapterError::Invalid { path: path.clone(), message: other.to_string() },
    })?;
    // PEFT's `layers_to_transform`: the blocks that hold adapters (one index or a list; absent:
    // every block).
    let layers = config.layers;
    let adapted: Vec<bool> = match &cfg["layers_to_transform"] {
        serde_json::Value::Null => vec![true; layers],
        v => {
            let list: Vec<&serde_json::Value> = match v {
                serde_json::Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            let mut adapted = vec![false; layers];
            for item in list {
                let l = item.as_u64().filter(|&l| (l as usize) < layers).ok_or_else(|| {
                    invalid(
                        &cfg_path,
                        format!(
                            "field `layers_to_transform`: {item} is not a block index of this model (0 to {})",
                            layers.saturating_sub(1)
                        ),
                    )
                })?;
                adapted[l as usize] = true;
            }
            adapted
        }
    };
    let mut adapter = LoraAdapter::<f32>::new(config, rank, alpha, dropout, &targets, 0);
    let mut used = 0;
    for (l, layer) in adapter.layers.iter_mut().enumerate() {
        if !adapted[l] {
            *layer = Default::default();
            continue;
        }
        for &t in &targets {
            let (out, inp) = target_dims(config, t);
            let base = module_path(l, t);
            let mut get = |suffix: &str, len: usize| -> Result<Vec<f32>, AdapterError> {
                let name = format!("{base}.{suffix}");
                let v = tensors
                    .get(&name)
                    .or_else(|| tensors.get(&format!("{base}.{}", suffix.replace(".weight", ".default.weight"))))
                    .ok_or_else(|| invalid(&path, format!("missing tensor `{name}`")))?;
                if v.len() != len {
                    return Err(invalid(
                        &path,
                        format!("tensor `{name}` has {} elements, the model needs {len}", v.len()),
                    ));
                }
                used += 1;
                Ok(v.clone())
            };
            let a = get("lora_A.weight", rank * inp)?;
            let b = get("lora_B.weight", out * rank)?;
            layer[target_index(t)] = Some(LoraPair { a, b });
        }
    }
    if used != tensors.len() {
        let extra: Vec<&String> = tensors.keys().filter(|k| !k.contains(".lora_")).take(3).collect();
        return Err(invalid(
            &path,
            format!("{} tensors do not belong to a LoRA target of this model (e.g. {extra:?})", tensors.len() - used),
        ));
    }
    Ok(adapter)
}

/// Parse a comma-separated list of PEFT module names.
pub fn parse_targets(list: &str) -> Result<Vec<LoraTarget>, super::TrainError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|m| {
            target_from_name(m).ok_or_else(|| {
                super::TrainError::Recipe(format!(
                    "unknown target module `{m}` (use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                ))
            })
        })
        .collect()
}

/// A seeded adapter whose `B` is non-zero too (so it changes the model): for tests and goldens.
pub fn random_adapter(config: &LlamaConfig, rank: usize, targets: &[LoraTarget], seed: u64) -> LoraAdapter<f32> {
    let mut adapter = LoraAdapter::<f32>::new(config, rank, 2.0 * rank as f64, 0.0, targets, seed);
    let mut rng = crate::lora::SplitMix(seed.wrapping_add(1));
    for layer in &mut adapter.layers {
        for pair in layer.iter_mut().flatten() {
            pair.b.iter_mut().for_each(|x| *x = ((rng.unit() - 0.5) * 0.02) as f32);
        }
    }
    adapter
}

/// `W + (alpha/rank)·B·A` for every adapted weight: a plain model that needs no adapter.
pub fn merge(weights: &Weights<f32>, adapter: &LoraAdapter<f32>) -> Weights<f32> {
    use trex_kernels::cpu::{Trans, matmul};
    let mut merged = weights.clone();
    let scale = adapter.scale();
    for (layer, slots) in merged.layers.iter_mut().zip(&adapter.layers) {
        for t in LoraTarget::ALL {
            let Some(pair) = &slots[target_index(t)] else { continue };
            let w = match t {
                LoraTarget::QProj => &mut layer.q,
                LoraTarget::KProj => &mut layer.k,
                LoraTarget::VProj => &mut layer.v,
                LoraTarget::OProj => &mut layer.o,
                LoraTarget::GateProj => &mut layer.gate,
                LoraTarget::UpProj => &mut layer.up,
                LoraTarget::DownProj => &mut layer.down,
            };
            let r = adapter.rank;
            let (out, inp) = (pair.b.len() / r, pair.a.len() / r);
            matmul(Trans::N, Trans::N, out, inp, r, scale, &pair.b, &pair.a, 1.0, w);
        }
    }
    merged
}
