//! Data-tool plugins on fixtures: near-duplicate recall and precision, text cleaning, and
//! config errors that name the field before any record is touched.

use serde_json::json;
use trex_core::plugin::{CallEnv, PluginHost};
use trex_sdk::rng::SplitMix64;

use crate::test_config;

async fn host() -> (tempfile::TempDir, PluginHost) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let host = PluginHost::discover(&plugins, test_config(dir.path().join("scratch"))).await.unwrap();
    assert!(host.failures().is_empty(), "{:?}", host.failures());
    (dir, host)
}

/// A synthetic fixture (generated here, seeded): 60 distinct 30-word texts, each followed later
/// by a near-duplicate (one word replaced, Jaccard of word 3-shingles ≈ 0.8), plus 60 more
/// distinct texts. Returns the records and which of them are the planted duplicates.
fn fixture() -> (Vec<String>, Vec<bool>) {
    let mut rng = SplitMix64(11);
    let vocab: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    let text = |rng: &mut SplitMix64| (0..30).map(|_| vocab[rng.below(2000) as usize].clone()).collect::<Vec<_>>();
    let originals: Vec<Vec<String>> = (0..60).map(|_| text(&mut rng)).collect();
    let mut records = Vec::new();
    let mut is_dup = Vec::new();
    for o in &originals {
        records.push(json!({"text": o.join(" ")}).to_string());
        is_dup.push(false);
    }
    for o in &originals {
        let mut d = o.clone();
        let at = 5 + rng.below(20) as usize;
        d[at] = "CHANGED".into();
        records.push(json!({"text": d.join(" ")}).to_string());
        is_dup.push(true);
        records.push(json!({"text": text(&mut rng).join(" ")}).to_string());
        is_dup.push(false);
    }
    (records, is_dup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_near_recall_and_precision_on_planted_duplicates() {
    let (_dir, host) = host().await;
    let (records, is_dup) = fixture();
    let run = host
        .run_data_tool("dedup-near", &json!({"threshold": 0.7}), records.clone(), &CallEnv::default())
        .await
        .unwrap();
    let kept: std::collections::HashSet<&String> = run.records.iter().collect();
    let dropped: Vec<usize> = (0..records.len()).filter(|&i| !kept.contains(&records[i])).collect();
    let true_pos = dropped.iter().filter(|&&i| is_dup[i]).count();
    let recall = true_pos as f64 / is_dup.iter().filter(|&&d| d).count() as f64;
    let precision = true_pos as f64 / dropped.len().max(1) as f64;
    assert!(recall >= 0.95, "recall {recall}");
    assert!(precision >= 0.99, "precision {precision}");
    assert_eq!(run.dropped["near-duplicate"], dropped.len() as u64);
    // A strict threshold keeps the one-word variants.
    let strict =
        host.run_data_tool("dedup-near", &json!({"threshold": 0.95}), records, &CallEnv::default()).await.unwrap();
    assert_eq!(strict.records_out, strict.records_in);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_near_refuses_inconsistent_banding() {
    let (_dir, host) = host().await;
    let err = host
        .run_data_tool(
            "dedup-near",
            &json!({"permutations": 100, "bands": 16}),
            vec![json!({"text": "a"}).to_string()],
            &CallEnv::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("dedup-near") && err.contains("field `bands`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_text_normalizes_scrubs_and_filters() {
    let (_dir, host) = host().await;
    let input = vec![
        json!({"text": "  ﬁne   ＡＢＣ\u{7}  text \n  second\tline  "}).to_string(),
        json!({"prompt": "Mail jane.doe@example.com or call +1 (555) 123-4567.", "response": "ok"}).to_string(),
        json!({"text": "lorem ipsum SPAM"}).to_string(),
        json!({"messages": [{"role": "user", "content": "café  bar"}]}).to_string(),
    ];
    let config = json!({"unicode": "nfkc", "scrub_emails": true, "scrub_phones": true, "exclude": ["SPAM"]});
    let run = host.run_data_tool("clean-text", &config, input, &CallEnv::default()).await.unwrap();
    assert_eq!(run.records_out, 3);
    assert_eq!(run.dropped["exclude `SPAM` matched"], 1);
    let r0: serde_json::Value = serde_json::from_str(&run.records[0]).unwrap();
    assert_eq!(r0["text"], "fine ABC text\nsecond line");
    let r1: serde_json::Value = serde_json::from_str(&run.records[1]).unwrap();
    assert_eq!(r1["prompt"], "Mail [EMAIL] or call [PHONE].");
    assert_eq!(run.metrics["emails-scrubbed"], 1.0);
    assert_eq!(run.metrics["phones-scrubbed"], 1.0);
    let r2: serde_json::Value = serde_json::from_str(&run.records[2]).unwrap();
    assert_eq!(r2["messages"][0]["content"], "café bar");
    // Short numbers are not phone numbers.
    let run = host
        .run_data_tool(
            "clean-text",
            &json!({"scrub_phones": true}),
            vec![json!({"text": "Convert 12 km to 12000 m."}).to_string()],
            &CallEnv::default(),
        )
        .await
        .unwrap();
    assert!(run.records[0].contains("12000"), "{}", run.records[0]);
    // Patterns are compiled when the run starts; a bad one fails before any record, naming the field.
    let err = host
        .run_data_tool(
            "clean-text",
            &json!({"include": ["("]}),
            vec![json!({"text": "x"}).to_string()],
            &CallEnv::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `include`") && err.contains("invalid regular expression"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_bfcl_reads_the_granted_dataset_folder() {
    let (_dir, host) = host().await;
    let env = CallEnv { dataset_dir: Some(trex_tests::root().join("tests/fixtures/bfcl")), ..CallEnv::default() };
    let config = json!({"questions": "BFCL_v4_simple_python.json"});
    let passthrough = vec![json!({"keep": "me"}).to_string()];
    let run = host.run_data_tool("load-bfcl", &config, passthrough, &env).await.unwrap();
    assert_eq!(run.records_out, 4, "one passed-through record and three questions");
    assert_eq!(run.dropped["bad-record: multi-turn questions are not converted"], 1);
    let first: serde_json::Value = serde_json::from_str(&run.records[1]).unwrap();
    assert_eq!(first["id"], "simple_python_0");
    assert_eq!(first["tags"], json!(["simple_python"]));
    assert_eq!(first["messages"][0]["role"], "system");
    assert!(first["messages"][0]["content"].as_str().unwrap().contains("calculate_triangle_area"));
    assert_eq!(
        first["messages"][1]["content"],
        "Find the area of a triangle with a base of 10 units and height of 5 units."
    );
    // The optional `unit` (acceptable: "units" or omitted) takes its first real value.
    let completion: serde_json::Value = serde_json::from_str(first["completion"].as_str().unwrap()).unwrap();
    assert_eq!(
        completion,
        json!([{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "units"}}])
    );
    let third: serde_json::Value = serde_json::from_str(&run.records[3]).unwrap();
    let completion: serde_json::Value = serde_json::from_str(third["completion"].as_str().unwrap()).unwrap();
    assert_eq!(completion, json!([{"name": "math.hypot", "arguments": {"x": 4, "y": 5, "z": 0}}]));
    // Without a dataset folder the sandbox has nothing at /data.
    let err = host.run_data_tool("load-bfcl", &config, vec![], &CallEnv::default()).await.unwrap_err().to_string();
    assert!(
        err.contains("load-bfcl") && err.contains("cannot read /data/possible_answer/BFCL_v4_simple_python.json"),
        "{err}"
    );
}
