//! The training engine end to end on tiny random models: memorizing a dataset, reproducibility,
//! adapters surviving a save/load round trip, Hugging Face directories, and bad input.

use std::ops::ControlFlow;
use std::path::Path;

use trex_model::train::{self, ComputeDevice, TokenizedExample, peft};
use trex_model::{BaseModel, Llama, LlamaConfig, LoraAdapter, Tokenizer, Weights, export_hf_dir};
use trex_sdk::types::{LoraTarget, TrainRecipe};

/// A word-level tokenizer over a tiny vocabulary, as a Hugging Face `tokenizer.json`.
fn write_tokenizer(dir: &Path, vocab: usize) {
    let mut json = trex_tests::word_level_tokenizer(vocab);
    json["decoder"] = serde_json::json!({"type": "WordPiece", "prefix": "##", "cleanup": true});
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let cfg = serde_json::json!({"eos_token": "w1", "bos_token": null, "chat_template": "{% for m in messages %}w2 {{ m.content }} {% endfor %}{% if add_generation_prompt %}w3 {% endif %}"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

fn tiny_dir(dir: &Path) -> std::path::PathBuf {
    let config = LlamaConfig::tiny();
    write_tokenizer(dir, config.vocab);
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let model_dir = dir.join("tiny");
    export_hf_dir(&model_dir, &config, &Weights::<f32>::random(&config, 5), &tokenizer).unwrap();
    model_dir
}

/// Eight short sequences whose completion (after a 3-token prompt) must be memorized.
fn dataset() -> Vec<TokenizedExample> {
    (0..8u32)
        .map(|i| {
            let tokens: Vec<u32> = vec![2, 10 + i, 3, 40 + i, 50 + (i * 7) % 40, 1];
            let targets = (0..tokens.len())
                .map(|p| if p >= 2 && p + 1 < tokens.len() { tokens[p + 1] as i64 } else { -1 })
                .collect();
            TokenizedExample { tokens, targets, truncated: false }
        })
        .collect()
}

fn recipe() -> TrainRecipe {
    TrainRecipe {
        lora_rank: 8,
        lora_alpha: 16.0,
        targets: LoraTarget::ALL.to_vec(),
        learning_rate: 3e-3,
        epochs: 60.0,
        batch_size: 4,
        warmup_ratio: 0.05,
        seed: 3,
        ..TrainRecipe::default()
    }
}

fn tiny_model() -> Llama<f32> {
    let config = LlamaConfig::tiny();
    Llama::new(config.clone(), Weights::random(&config, 5))
}

#[test]
fn tiny_model_memorizes_a_small_dataset() {
    let model = tiny_model();
    let r = recipe();
    let mut adapter = LoraAdapter::new(&model.config, 8, 16.0, 0.0, &r.targets, r.seed);
    let report =
        train::train(ComputeDevice::Cpu, &model, &mut adapter, &dataset(), &r, None, |_| ControlFlow::Continue(()))
            .unwrap();
    assert!(report.first_loss > 3.0, "starts far from the data: {}", report.first_loss);
    // Threshold: mean completion-token loss below 0.05 nats after 120 steps.
    assert!(
        report.final_loss < 0.05,
        "final loss {} (losses {:?})",
        report.final_loss,
        &report.losses[report.losses.len() - 5..]
    );
    // And greedy generation reproduces a memorized completion.
    let vocab = model.config.vocab;
    let logits = model.logits_all(&[2, 13, 3], Some(&adapter));
    let last = &logits[2 * vocab..3 * vocab];
    let argmax = (0..vocab).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
    assert_eq!(argmax, 43);
}

#[test]
fn training_is_reproducible_with_a_seed() {
    let model = tiny_model();
    let mut r = recipe();
    r.epochs = 3.0;
    r.lora_dropout = 0.1;
    let run = |seed: u64| {
        let mut r = r.clone();
        r.seed = seed;
        let mut a = LoraAdapter::new(&model.config, 8, 16.0, 0.1, &r.targets, seed);
        let rep = train::train(ComputeDevice::Cpu, &model, &mut a, &dataset(), &r, None, |_| ControlFlow::Continue(()))
            .unwrap();
        (a, rep.losses)
    };
    let (a1, l1) = run(3);
    let (a2, l2) = run(3);
    assert_eq!(l1, l2);
    assert_eq!(a1, a2);
    let (a3, _) = run(4);
    assert_ne!(a1, a3);
}

#[test]
fn adapter_save_load_gives_identical_logits_and_merge_matches() {
    let model = tiny_model();
    let r = recipe();
    let adapter = peft::random_adapter(&model.config, 4, &r.targets, 9);
    let dir = tempfile::tempdir().unwrap();
    peft::save_adapter(dir.path(), &adapter, "tiny").unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    let loaded = peft::load_adapter(dir.path(), &model.config).unwrap();
    assert_eq!(loaded, adapter);
    let tokens = [2, 11, 3, 41, 7];
    assert_eq!(model.logits_all(&tokens, Some(&loaded)), model.logits_all(&tokens, Some(&adapter)));
    let merged = Llama::new(model.config.clone(), peft::merge(&model.weights, &adapter));
    let a = model.logits_all(&tokens, Some(&adapter));
    let b = merged.logits_all(&tokens, None);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "merged model differs by {worst}");
}

#[test]
fn a_recipe_on_the_top_blocks_trains_only_them_and_saves_them_as_peft_names_them() {
    let model = tiny_model();
    let r = TrainRecipe { lora_layers: 1, epochs: 10.0, ..recipe() };
    let mut adapter = LoraAdapter::from_recipe(&model.config, &r);
    assert_eq!(adapter.adapted_layers(), vec![1], "the top one of two blocks");
    let report =
        train::train(ComputeDevice::Cpu, &model, &mut adapter, &dataset(), &r, None, |_| ControlFlow::Continue(()))
            .unwrap();
    assert!(report.final_loss < report.first_loss * 0.8, "{} → {}", report.first_loss, report.final_loss);
    assert!(adapter.layers[0].iter().all(Option::is_none));
    assert!(adapter.layers[1].iter().flatten().all(|p| p.b.iter().any(|x| *x != 0.0)), "every top target trained");

    let dir = tempfile::tempdir().unwrap();
    peft::save_adapter(dir.path(), &adapter, "tiny").unwrap();
    let cfg_path = dir.path().join("adapter_config.json");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([1]));
    assert_eq!(cfg["layers_pattern"], "layers");
    let loaded = peft::load_adapter(dir.path(), &model.config).unwrap();
    assert_eq!(loaded, adapter);
    // PEFT also writes a single index as a bare integer.
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["layers_to_transform"] = serde_json::json!(1);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    assert_eq!(peft::load_adapter(dir.path(), &model.config).unwrap(), adapter);
    // A block the model does not have is named.
    v["layers_to_transform"] = serde_json::json!([1, 7]);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = peft::load_adapter(dir.path(), &model.config).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("`layers_to_transform`") && e.contains('7'), "{e}");
    // An adapter on every block writes no block list.
    let all = LoraAdapter::from_recipe(&model.config, &recipe());
    peft::save_adapter(dir.path(), &all, "tiny").unwrap();
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(!text.contains("layers_to_transform"), "{text}");

    // More blocks than the model has is refused before any work, naming the field.
    let too_many = TrainRecipe { lora_layers: 3, ..recipe() };
    let mut a = LoraAdapter::from_recipe(&model.config, &too_many);
    let e =
        train::train(ComputeDevice::Cpu, &model, &mut a, &dataset(), &too_many, None, |_| ControlFlow::Continue(()))
            .unwrap_err()
            .to_string();
    assert!(e.contains("lora_layers 3") && e.contains("2 blocks"), "{e}");
}

#[test]
fn hugging_face_directory_round_trip_and_training_from_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_dir(dir.path());
    let base = BaseModel::load(&model_dir).unwrap();
    assert_eq!(base.config, LlamaConfig::tiny());
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, "{\"prompt\": \"w10 w11\", \"response\": \"w40 w41\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"w12\"}, {\"role\": \"assistant\", \"content\": \"w42\"}]}\n").unwrap();
    let examples = train::data::load_jsonl(&data, &base.tokenizer).unwrap();
    let tokenized = train::data::tokenize(&examples, &base.tokenizer, 64);
    // chat template "w2 <content> w3 " then the completion and eos (w1): loss on the completion and eos only.
    assert_eq!(tokenized[0].tokens, vec![2, 10, 11, 3, 40, 41, 1]);
    assert_eq!(tokenized[0].target_count(), 3);
    let model = Llama::new(base.config.clone(), base.weights);
    let mut adapter = LoraAdapter::new(&model.config, 4, 8.0, 0.0, &[LoraTarget::QProj], 0);
    let report = train::train(
        ComputeDevice::Cpu,
        &model,
        &mut adapter,
        &tokenized,
        &TrainRecipe { epochs: 2.0, ..TrainRecipe::default() },
        None,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(report.steps, 2);
    // Truncation keeps the completion.
    let short = train::data::tokenize(&examples, &base.tokenizer, 4);
    assert!(short[0].truncated && short[0].tokens.len() == 4 && short[0].target_count() == 3, "{:?}", short[0]);
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_dir(dir.path());
    let err = |p: &Path| BaseModel::load(p).unwrap_err().to_string();

    // Truncated safetensors.
    let st = model_dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&model_dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    std::fs::write(&st, &bytes).unwrap();

    // Shapes that disagree with config.json.
    let cfg_path = model_dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 80")).unwrap();
    let e = err(&model_dir);
    assert!(e.contains("mlp.gate_proj.weight") && e.contains("[80, 32]"), "{e}");
    // Unknown architecture.
    std::fs::write(&cfg_path, cfg.replace("LlamaForCausalLM", "GPTNeoXForCausalLM")).unwrap();
    assert!(err(&model_dir).contains("architecture `GPTNeoXForCausalLM`"));
    std::fs::write(&cfg_path, &cfg).unwrap();

    // GGUF with an unsupported quantization type.
    let gguf = dir.path().join("q6k.gguf");
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'w');
    b.extend(1u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(14u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    std::fs::write(&gguf, b).unwrap();
    let e = err(&gguf);
    assert!(e.contains("q6k.gguf") && e.contains("Q6_K"), "{e}");

    // Empty dataset and a record without the needed fields.
    let base = BaseModel::load(&model_dir).unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "\n").unwrap();
    let e = train::data::load_jsonl(&data, &base.tokenizer).unwrap_err().to_string();
    assert!(e.contains("d.jsonl") && e.contains("empty"), "{e}");
    std::fs::write(&data, "{\"prompt\": \"w3\", \"response\": \"w4\"}\n{\"question\": \"w5\"}\n").unwrap();
    let e = train::data::load_jsonl(&data, &base.tokenizer).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("`prompt`"), "{e}");

    // A recipe with an unknown target module.
    let e = serde_json::from_str::<TrainRecipe>(r#"{"targets": ["qkv_proj"]}"#).unwrap_err().to_string();
    assert!(e.contains("qkv_proj"), "{e}");
    // An adapter naming an unknown module.
    let adir = dir.path().join("adapter");
    let model = Llama::new(base.config.clone(), base.weights);
    peft::save_adapter(&adir, &LoraAdapter::new(&model.config, 2, 4.0, 0.0, &[LoraTarget::QProj], 0), "tiny").unwrap();
    let cfg = std::fs::read_to_string(adir.join("adapter_config.json")).unwrap();
    std::fs::write(adir.join("adapter_config.json"), cfg.replace("q_proj", "query_key_value")).unwrap();
    let e = peft::load_adapter(&adir, &model.config).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("unknown target module `query_key_value`"), "{e}");
    // A recipe that cannot train.
    let e = train::check_recipe(&TrainRecipe { targets: vec![], ..TrainRecipe::default() }).unwrap_err().to_string();
    assert!(e.contains("targets is empty"), "{e}");
}

#[test]
fn generation_stops_at_eos_stop_text_or_length_and_sampling_is_seeded() {
    use trex_model::generate::{GenerationConfig, generate};
    let dir = tempfile::tempdir().unwrap();
    let base = BaseModel::load(&tiny_dir(dir.path())).unwrap();
    let model = Llama::new(base.config.clone(), base.weights);
    let prompts: Vec<String> = vec!["w5 w6".into(), "w7".into(), "w8 w9 w10".into()];
    let mut tok = base.tokenizer.clone();
    tok.eos.clear();
    let greedy = GenerationConfig { max_new_tokens: 6, batch_size: 2, ..GenerationConfig::default() };
    let out = generate(&model, &tok, None, &prompts, &greedy, |_| {});
    assert!(out.iter().all(|g| g.tokens == 6 && g.finish == "length"), "{out:?}");
    // Batched and one-by-one greedy decoding agree.
    let single = generate(&model, &tok, None, &prompts, &GenerationConfig { batch_size: 1, ..greedy.clone() }, |_| {});
    assert_eq!(out, single);
    // A stop text cuts the output.
    let first_word = out[0].text.split_whitespace().nth(1).unwrap().to_string();
    let stopped = generate(
        &model,
        &tok,
        None,
        &prompts[..1],
        &GenerationConfig { stop: vec![first_word.clone()], ..greedy.clone() },
        |_| {},
    );
    assert_eq!(stopped[0].finish, "stop");
    assert!(!stopped[0].text.contains(&first_word));
    // The end-of-sequence token ends generation.
    let mut eos_tok = tok.clone();
    let first_id = tok.token_id(out[0].text.split_whitespace().next().unwrap()).unwrap();
    eos_tok.eos = vec![first_id];
    let ended = generate(&model, &eos_tok, None, &prompts[..1], &greedy, |_| {});
    assert_eq!((ended[0].finish, ended[0].tokens), ("eos", 0));
    // Sampling is reproducible with a seed and differs across seeds.
    let sample = |seed| {
        let cfg = GenerationConfig { temperature: 1.5, top_p: 0.95, seed, max_new_tokens: 12, ..greedy.clone() };
        generate(&model, &tok, None, &prompts, &cfg, |_| {})
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));
}

#[test]
fn continuous_batching_and_the_shared_prefix_give_the_answers_of_one_by_one_decoding() {
    use trex_model::generate::{GenerationConfig, generate, shared_prefix_len};
    let dir = tempfile::tempdir().unwrap();
    let base = BaseModel::load(&tiny_dir(dir.path())).unwrap();
    let model = Llama::new(base.config.clone(), base.weights);
    let mut tok = base.tokenizer.clone();
    tok.eos.clear();
    // A system-prompt-like prefix of 12 words, then prompts of different lengths.
    let system = (20..32).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let prompts: Vec<String> = ["w5", "w7 w8", "w9 w10 w11", "w12", "w13 w14", "w15 w16 w17 w18", "w19"]
        .iter()
        .map(|p| format!("{system} {p}"))
        .collect();
    let encoded: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p)).collect();
    assert!(shared_prefix_len(&encoded) >= 12, "the prefix is shared: {}", shared_prefix_len(&encoded));
    // Different lengths of answer: a stop text ends some early, so sequences leave and join.
    let one = GenerationConfig { max_new_tokens: 7, batch_size: 1, share_prefix: false, ..GenerationConfig::default() };
    let reference = generate(&model, &tok, None, &prompts, &one, |_| {});
    let stop = reference[2].text.split_whitespace().nth(2).unwrap().to_string();
    let one = GenerationConfig { stop: vec![stop], ..one };
    let reference = generate(&model, &tok, None, &prompts, &one, |_| {});
    assert!(
        reference.iter().any(|g| g.finish == "stop") && reference.iter().any(|g| g.finish == "length"),
        "{reference:?}"
    );
    for batch in [1, 3, 16] {
        for share_prefix in [false, true] {
            let mut done = Vec::new();
            let out = generate(
                &model,
                &tok,
                None,
                &prompts,
                &GenerationConfig { batch_size: batch, share_prefix, ..one.clone() },
                |n| done.push(n),
            );
            assert_eq!(out, reference, "batch {batch}, shared prefix {share_prefix}");
            assert_eq!(done, (1..=prompts.len()).collect::<Vec<_>>(), "one call per finished prompt");
        }
    }
    // Sampling is per sequence: the batch size does not change a sampled answer.
    let sampled = |batch| {
        let cfg = GenerationConfig { temperature: 1.2, seed: 9, batch_size: batch, ..one.clone() };
        generate(&model, &tok, None, &prompts, &cfg, |_| {})
    };
    assert_eq!(sampled(1), sampled(4));
    // The prefix leaves every prompt a token of its own, and one prompt shares nothing.
    assert_eq!(shared_prefix_len(&[vec![1, 2, 3], vec![1, 2, 3]]), 2);
    assert_eq!(shared_prefix_len(&[vec![1, 2, 3], vec![1, 2]]), 1);
    assert_eq!(shared_prefix_len(&[vec![1, 2, 3]]), 0);
    assert_eq!(shared_prefix_len(&[vec![4, 2, 3], vec![1, 2, 3]]), 0);
}

#[test]
fn sharded_safetensors_load_like_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_dir(dir.path());
    let whole = BaseModel::load(&model_dir).unwrap();
    // Split model.safetensors into two shards plus an index, as Hugging Face does.
    let tensors = trex_model::read_safetensors_file(&model_dir.join("model.safetensors")).unwrap();
    let names: Vec<&String> = tensors.keys().collect();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = part
            .iter()
            .map(|n| {
                ((*n).clone(), tensors[*n].iter().flat_map(|x| x.to_le_bytes()).collect(), vec![tensors[*n].len()])
            })
            .collect();
        let views: Vec<_> = bytes
            .iter()
            .map(|(n, b, s)| {
                (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &model_dir.join(shard)).unwrap();
        for n in part.iter() {
            map.insert((*n).clone(), serde_json::Value::from(shard));
        }
    }
    std::fs::remove_file(model_dir.join("model.safetensors")).unwrap();
    std::fs::write(
        model_dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let sharded = BaseModel::load(&model_dir).unwrap();
    assert_eq!(sharded.weights.layers[1].down, whole.weights.layers[1].down);
    assert_eq!(sharded.weights.embed, whole.weights.embed);
}

#[test]
fn checkpoints_are_written_and_training_continues_from_a_parent() {
    let model = tiny_model();
    let mut r = recipe();
    r.epochs = 20.0;
    let dir = tempfile::tempdir().unwrap();
    let cp = train::Checkpointing { dir: dir.path().to_path_buf(), every: 15, base_model: "tiny".into() };
    let mut parent = LoraAdapter::new(&model.config, 8, 16.0, 0.0, &r.targets, r.seed);
    let first =
        train::train(ComputeDevice::Cpu, &model, &mut parent, &dataset(), &r, Some(&cp), |_| ControlFlow::Continue(()))
            .unwrap();
    assert_eq!(first.steps, 40);
    assert!(!dir.path().join("checkpoint-40").exists(), "the final adapter is the caller's to save");
    for step in [15, 30] {
        assert!(dir.path().join(format!("checkpoint-{step}/adapter_model.safetensors")).is_file(), "checkpoint {step}");
    }
    let mut child = peft::load_adapter(&dir.path().join("checkpoint-30"), &model.config).unwrap();
    let cont =
        train::train(ComputeDevice::Cpu, &model, &mut child, &dataset(), &r, None, |_| ControlFlow::Continue(()))
            .unwrap();
    assert!(
        cont.first_loss < first.first_loss / 2.0,
        "the child starts where the parent got to: {} vs {}",
        cont.first_loss,
        first.first_loss
    );
}

#[test]
fn a_run_its_caller_stops_ends_at_that_step_with_the_adapter_that_step_left() {
    let model = tiny_model();
    let mut r = recipe();
    r.epochs = 5.0;
    let run = |stop_after: usize| {
        let mut a = LoraAdapter::new(&model.config, 8, 16.0, 0.0, &r.targets, r.seed);
        let mut seen = Vec::new();
        let report = train::train(ComputeDevice::Cpu, &model, &mut a, &dataset(), &r, None, |s| {
            seen.push((s.step, s.total_steps));
            if s.step == stop_after { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
        (a, report, seen)
    };
    let (full, whole, _) = run(usize::MAX);
    let (stopped, part, seen) = run(3);
    assert_eq!((whole.steps, whole.planned_steps), (10, 10));
    assert_eq!((part.steps, part.planned_steps, part.losses.len()), (3, 10, 3), "{part:?}");
    assert_eq!(seen, vec![(1, 10), (2, 10), (3, 10)], "no step runs after the break");
    assert_eq!(&whole.losses[..3], &part.losses[..], "the same first steps");
    assert!(part.tokens < whole.tokens);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    full.for_each(|x| a.extend_from_slice(x));
    stopped.for_each(|x| b.extend_from_slice(x));
    assert_ne!(a, b, "the stopped adapter is the one its third step left, not the finished one");
}

#[test]
fn a_continued_run_trains_on_the_batches_that_come_next_in_the_stream() {
    // With a learning rate too small to move the adapter, each step's loss depends only on the
    // examples in its batch: the losses show which batches a run saw.
    let model = tiny_model();
    let mut r = recipe();
    r.learning_rate = 1e-7;
    r.warmup_ratio = 0.0;
    let losses = |epochs: f32, start_epoch: f32| {
        let mut r = r.clone();
        r.epochs = epochs;
        let mut a = LoraAdapter::new(&model.config, 8, 16.0, 0.0, &r.targets, r.seed);
        train::train_from(ComputeDevice::Cpu, &model, &mut a, &dataset(), &r, start_epoch, None, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .losses
    };
    let two_epochs = losses(2.0, 0.0);
    let first = losses(1.0, 0.0);
    let next = losses(1.0, 1.0);
    assert_eq!(two_epochs.len(), 4, "8 examples in batches of 4: two steps an epoch");
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    assert!(close(&first, &two_epochs[..2]), "{first:?} vs {two_epochs:?}");
    assert!(close(&next, &two_epochs[2..]), "the continued run sees the second epoch: {next:?} vs {two_epochs:?}");
    assert!(!close(&next, &first), "and not the first epoch's batches again: {next:?} vs {first:?}");
}
