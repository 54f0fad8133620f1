//! Augmentation and the filters that need the host: rule-based variants (tool-call argument
//! order, variable renaming, unit spellings), the charset/language filter, token-length
//! filtering with the host's tokenizer, and LLM generation and judging through a scripted
//! OpenAI-compatible server (and without any LLM).

use std::sync::Arc;

use serde_json::{Value, json};
use trex_plugin_host::llm::{OpenAiClient, OpenAiConfig, TokenMeter};
use trex_plugin_host::{CallEnv, HostConfig, PluginHost};
use trex_tests::llm_server::{self, Reply};

use crate::test_config;

async fn host_with(dir: &std::path::Path, tweak: impl FnOnce(&mut HostConfig)) -> PluginHost {
    let plugins = trex_tests::standard_plugins(dir);
    let mut config = test_config(dir.join("scratch"));
    tweak(&mut config);
    let host = PluginHost::discover(&plugins, config).await.unwrap();
    assert!(host.failures().is_empty(), "{:?}", host.failures());
    host
}

fn parse(records: &[String]) -> Vec<Value> {
    records.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn augment_permutes_tool_call_arguments_without_changing_the_calls() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(dir.path(), |_| {}).await;
    let call = r#"[{"name": "area", "arguments": {"base": 10, "height": 5, "unit": "cm"}}]"#;
    let records = vec![
        json!({"id": "q1", "completion": call, "tags": ["t"]}).to_string(),
        json!({"id": "q2", "completion": r#"{"f": {"x": 1}}"#}).to_string(),
        json!({"id": "q3", "completion": "not json"}).to_string(),
    ];
    let config = json!({"rule": "permute-arguments", "copies": 8, "seed": 3});
    let run = host.run_data_tool("augment", &config, records.clone(), &CallEnv::default()).await.unwrap();
    let out = parse(&run.records);
    assert_eq!(run.records[0], records[0], "the original comes first, untouched");
    let variants: Vec<&Value> = out.iter().filter(|r| r["augmented"] == "permute-arguments").collect();
    // Three arguments have 6 orders; the original's is not repeated, so at most 5 variants.
    assert!((2..=5).contains(&variants.len()), "{} variants", variants.len());
    let original: Value = serde_json::from_str(call).unwrap();
    let mut orders = std::collections::HashSet::new();
    for v in &variants {
        let text = v["completion"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(text).unwrap(), original, "same calls: {text}");
        let order: Vec<usize> = ["\"base\"", "\"height\"", "\"unit\""].iter().map(|k| text.find(k).unwrap()).collect();
        assert_ne!(
            order,
            {
                let mut o = order.clone();
                o.sort();
                o
            },
            "differs from the original order: {text}"
        );
        assert!(orders.insert(text.to_string()), "variants are distinct");
        assert_eq!(v["tags"], json!(["t", "augmented"]));
        assert!(v["id"].as_str().unwrap().starts_with("q1~permute-arguments"));
    }
    // One argument cannot be permuted; a record whose calls are not JSON is a bad record.
    assert!(out.iter().any(|r| r["id"] == "q2"));
    assert!(!out.iter().any(|r| r["id"] == "q3"));
    assert_eq!(run.metrics["not-applicable"], 1.0);
    assert_eq!(run.dropped["bad-record: `completion` is not JSON"], 1);
    // Same seed, same data.
    let again = host.run_data_tool("augment", &config, records.clone(), &CallEnv::default()).await.unwrap();
    assert_eq!(again.records, run.records);
    let strict = json!({"rule": "permute-arguments", "on_bad_record": "fail"});
    let err = host.run_data_tool("augment", &strict, records, &CallEnv::default()).await.unwrap_err().to_string();
    assert!(err.contains("not JSON"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn augment_renames_variables_and_swaps_units_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(dir.path(), |_| {}).await;
    let record =
        json!({"id": "e", "prompt": "Solve 2x + y = 7 for x, given y = 3; x2 is unrelated.", "response": "x = 2"});
    let config = json!({"rule": "rename-variables", "variables": ["x", "y"], "copies": 3, "keep_original": false});
    let run = host.run_data_tool("augment", &config, vec![record.to_string()], &CallEnv::default()).await.unwrap();
    assert_eq!(run.dropped["replaced-by-variants"], 1);
    for v in parse(&run.records) {
        let (prompt, response) = (v["prompt"].as_str().unwrap(), v["response"].as_str().unwrap());
        let new_x = response.split(' ').next().unwrap();
        assert_ne!(new_x, "x");
        assert_eq!(
            prompt,
            format!(
                "Solve 2{new_x} + {y} = 7 for {new_x}, given {y} = 3; x2 is unrelated.",
                y = {
                    let after = prompt.split("given ").nth(1).unwrap();
                    after.split(' ').next().unwrap()
                }
            )
        );
        assert!(!prompt.contains(" y ") && prompt.contains("x2"), "{prompt}");
    }

    let records = vec![
        json!({"id": "u1", "prompt": "How many min are in 67 h?", "response": "4020 min"}).to_string(),
        json!({"id": "u2", "prompt": "It's 5 km; what's that in m?", "response": "5000 m"}).to_string(),
        json!({"id": "u3", "prompt": "no units here"}).to_string(),
    ];
    let config = json!({"rule": "swap-units", "copies": 6, "seed": 1});
    let run = host.run_data_tool("augment", &config, records, &CallEnv::default()).await.unwrap();
    let out = parse(&run.records);
    let u1: Vec<&Value> = out.iter().filter(|r| r["id"].as_str().unwrap().starts_with("u1~")).collect();
    assert!(!u1.is_empty());
    for v in &u1 {
        let p = v["prompt"].as_str().unwrap();
        assert!(p.starts_with("How many ") && p.contains(" are in 67 "), "{p}");
        assert!(p.contains("min") || p.contains("minutes"), "{p}");
        assert!(p.ends_with(" h?") || p.ends_with(" hr?") || p.ends_with(" hours?"), "{p}");
        assert_eq!(v["response"], "4020 min", "the answer side is not rewritten by default");
    }
    for v in out.iter().filter(|r| r["id"].as_str().unwrap().starts_with("u2~")) {
        let p = v["prompt"].as_str().unwrap();
        assert!(p.starts_with("It's 5 ") && p.contains("; what's that in "), "`s` in `It's` is not seconds: {p}");
    }
    assert_eq!(run.metrics["not-applicable"], 1.0);
    for (config, field) in [
        (json!({"rule": "rename-variables"}), "variables"),
        (json!({"rule": "swap-units", "units": [["km"]]}), "units"),
        (json!({"rule": "swap-units", "copies": 0}), "copies"),
        (json!({"rule": "shuffle"}), "rule"),
    ] {
        let err = host.validate_config("augment", &config).await.unwrap_err().to_string();
        assert!(err.contains(field), "{config}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_lang_keeps_the_wanted_scripts_and_languages() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(dir.path(), |_| {}).await;
    let texts = [
        ("en", "What is the capital of the country that has the most people?"),
        ("fr", "Quelle est la capitale du pays qui a le plus de habitants dans le monde ?"),
        ("de", "Wie viele Einwohner hat die Stadt und wo liegt sie auf der Karte?"),
        ("ru", "Какая столица у страны с самым большим населением?"),
        ("zh", "人口最多的国家的首都是哪里？"),
        ("short", "5 km = ? m"),
        ("symbols", "#### ---- !!!! 1234 ==== ????"),
        ("mojibake", "The cafÃ© is open â€™til late"),
    ];
    let records: Vec<String> = texts.iter().map(|(id, t)| json!({"id": id, "text": t}).to_string()).collect();
    let ids = |run: &trex_plugin_host::DataToolRun| -> Vec<String> {
        parse(&run.records).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    let config = json!({"scripts": ["latin"], "languages": ["en", "de"], "min_letter_ratio": 0.3});
    let run = host.run_data_tool("filter-lang", &config, records.clone(), &CallEnv::default()).await.unwrap();
    assert_eq!(ids(&run), ["en", "de", "short"], "a text too short to tell is kept");
    assert_eq!(run.dropped["wrong-language"], 1);
    assert_eq!(run.dropped["wrong-script"], 2);
    assert_eq!(run.dropped["too-few-letters"], 1);
    assert_eq!(run.dropped["mojibake"], 1);
    let config = json!({"languages": ["ru", "zh"], "drop_unknown": true, "min_words": 1});
    let run = host.run_data_tool("filter-lang", &config, records, &CallEnv::default()).await.unwrap();
    assert_eq!(ids(&run), ["ru", "zh"]);
    let err = host.validate_config("filter-lang", &json!({"languages": ["xx"]})).await.unwrap_err().to_string();
    assert!(err.contains("languages") && err.contains("xx"), "{err}");
}

/// A word-level tokenizer: `Whitespace` splits `a, b` into three tokens (two words).
fn word_tokenizer(dir: &std::path::Path) -> trex_model::Tokenizer {
    let vocab: serde_json::Map<String, Value> =
        ["<unk>", "a", "b", ","].iter().enumerate().map(|(i, w)| (w.to_string(), json!(i))).collect();
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    trex_model::Tokenizer::from_file(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_length_counts_tokens_with_the_host_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Arc::new(trex_lab::run::ModelTokens(word_tokenizer(dir.path())));
    let host = host_with(dir.path(), |c| c.tokenizer = Some(tokenizer)).await;
    // 600 records so that counting spans more than one host call.
    let records: Vec<String> =
        (0..600).map(|i| json!({"text": if i % 3 == 0 { "a, b, a" } else { "a b" }}).to_string()).collect();
    let config = json!({"unit": "tokens", "min": 3, "max": 10});
    let run = host.run_data_tool("filter-length", &config, records.clone(), &CallEnv::default()).await.unwrap();
    assert_eq!(run.records_out, 200, "`a, b, a` is 5 tokens, `a b` is 2");
    assert_eq!(run.dropped["too-short"], 400);
    assert_eq!(run.metrics["mean-length-kept"], 5.0);
    let words = json!({"unit": "words", "min": 3, "max": 10});
    let run = host.run_data_tool("filter-length", &words, records.clone(), &CallEnv::default()).await.unwrap();
    assert_eq!(run.records_out, 200, "three words");
    // Without a tokenizer the step fails and says how to provide one.
    let bare = host_with(&dir.path().join("bare"), |_| {}).await;
    let err = bare.run_data_tool("filter-length", &config, records, &CallEnv::default()).await.unwrap_err().to_string();
    assert!(err.contains("no tokenizer") && err.contains("--tokenizer"), "{err}");
}

pub(crate) fn llm_client(base_url: &str) -> Arc<OpenAiClient> {
    let config = OpenAiConfig {
        base_url: base_url.into(),
        model: "scripted-model".into(),
        api_key_env: None,
        timeout_s: 5.0,
        max_retries: 0,
        backoff_ms: 10,
        json_schema: true,
    };
    Arc::new(OpenAiClient::new(config, Arc::new(TokenMeter::new(None))).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_data_generates_and_judges_through_the_host_llm() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = vec![
        json!({"id": "s1", "prompt": "2 km = ? m", "response": "2000 m", "tags": ["km-to-m"]}).to_string(),
        json!({"id": "s2", "prompt": "3 kg = ? g", "response": "3000 g"}).to_string(),
    ];
    let generated = json!({"examples": [
        {"prompt": "7 km = ? m", "response": "7000 m"},
        {"prompt": "2 km = ? m", "response": "2000 m"},
        {"prompt": "9 km = ? m"},
    ]});
    let server = llm_server::start(vec![
        llm_server::completion(&generated.to_string(), 50, 40),
        llm_server::completion("Sure! Here you go.", 50, 5),
    ]);
    let client = llm_client(&server.base_url);
    let host = host_with(dir.path(), |c| c.llm = Some(client)).await;
    let config = json!({"mode": "generate", "per_seed": 3, "instructions": "Unit conversion."});
    let run = host.run_data_tool("llm-data", &config, seeds.clone(), &CallEnv::default()).await.unwrap();
    let out = parse(&run.records);
    assert_eq!(out.len(), 3, "both seeds and one valid new example");
    assert_eq!(out[1]["prompt"], "7 km = ? m");
    assert_eq!(out[1]["id"], "s1~llm0");
    assert_eq!(out[1]["tags"], json!(["km-to-m", "synthetic-llm"]));
    assert_eq!(run.dropped["copies-its-seed"], 1);
    assert_eq!(run.dropped["bad-llm-example"], 1);
    assert_eq!(run.metrics["bad-replies"], 1.0, "the prose reply for the second seed");
    let requests = server.requests.lock().unwrap().clone();
    let prompt = requests[0].body["messages"][1]["content"].as_str().unwrap().to_string();
    assert!(prompt.contains("Unit conversion.") && prompt.contains("2 km = ? m"), "{prompt}");
    assert!(requests[0].body.to_string().contains("json_schema"));

    let server = llm_server::start(vec![
        llm_server::completion(r#"{"score": 5, "reason": "correct"}"#, 30, 8),
        llm_server::completion(r#"{"score": 1, "reason": "wrong unit"}"#, 30, 8),
    ]);
    let client = llm_client(&server.base_url);
    let host = host_with(&dir.path().join("judge"), |c| c.llm = Some(client)).await;
    let config = json!({"mode": "judge", "min_score": 3});
    let run = host.run_data_tool("llm-data", &config, seeds.clone(), &CallEnv::default()).await.unwrap();
    let out = parse(&run.records);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0]["id"].clone(), out[0]["judge_score"].clone()), (json!("s1"), json!(5.0)));
    assert_eq!(run.dropped["judged-low"], 1);
    // A server error is a failed step, not silently unjudged data.
    let server = llm_server::start(vec![Reply::Status(500, "boom".into())]);
    let client = llm_client(&server.base_url);
    let host = host_with(&dir.path().join("down"), |c| c.llm = Some(client)).await;
    let err = host.run_data_tool("llm-data", &config, seeds.clone(), &CallEnv::default()).await.unwrap_err();
    assert!(err.to_string().contains("LLM call failed"), "{err}");

    // Without an LLM the records pass through and the run says it skipped.
    let host = host_with(&dir.path().join("none"), |_| {}).await;
    let run = host.run_data_tool("llm-data", &config, seeds.clone(), &CallEnv::default()).await.unwrap();
    assert_eq!(run.records, seeds);
    assert_eq!(run.metrics["llm-skipped"], 1.0);
    assert_eq!(run.metrics["llm-calls"], 1.0, "it stops asking after the first refusal");
    let err = host.validate_config("llm-data", &json!({"mode": "judge", "min_score": 9})).await.unwrap_err();
    assert!(err.to_string().contains("min_score"), "{err}");
}
