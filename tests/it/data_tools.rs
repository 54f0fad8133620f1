//! Data-tool plugins on fixtures: near-duplicate recall and precision, text cleaning, and
//! config errors that name the field before any record is touched.

use serde_json::json;
use trex_plugin_host::{CallEnv, PluginHost};
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
    // The planted pairs have a Jaccard similarity of about 0.81. With the default banding (16
    // bands of 8 rows) such a pair becomes a candidate with probability 1 - (1 - 0.81^8)^16 ≈ 0.96,
    // so a few of 60 pairs are missed by chance; 32 bands of 4 rows (the banding for a threshold
    // near 0.7) make it a candidate with probability ≈ 1 - 1e-7.
    let run = host
        .run_data_tool("dedup-near", &json!({"threshold": 0.7, "bands": 32}), records.clone(), &CallEnv::default())
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
    // An anchored pattern on one field matches that field exactly.
    let run = host
        .run_data_tool(
            "clean-text",
            &json!({"fields": ["completion"], "include": ["^(yes|no)$"]}),
            vec![
                json!({"completion": "yes"}).to_string(),
                json!({"completion": "The answer is yes."}).to_string(),
                json!({"completion": "no "}).to_string(),
            ],
            &CallEnv::default(),
        )
        .await
        .unwrap();
    assert_eq!(run.records_out, 2, "{:?}", run.records);
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

/// 90 records in three groups of unequal size (`a` 50, `b` 30, `c` 10), each with a length and
/// a difficulty score.
fn groups_fixture() -> Vec<String> {
    (0..90)
        .map(|i| {
            let g = if i < 50 {
                "a"
            } else if i < 80 {
                "b"
            } else {
                "c"
            };
            json!({"id": format!("r{i}"), "prompt": "x".repeat(1 + i % 17), "completion": "y",
                   "tags": [g], "difficulty": (i * 37 % 90) as f64})
            .to_string()
        })
        .collect()
}

async fn select(host: &PluginHost, config: serde_json::Value, input: Vec<String>) -> trex_plugin_host::DataToolRun {
    host.run_data_tool("select", &config, input, &CallEnv::default()).await.unwrap()
}

fn group_counts(records: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in records {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        *m.entry(v["tags"][0].as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_samples_stratifies_and_mixes_deterministically() {
    let (_dir, host) = host().await;
    let input = groups_fixture();
    // Random sample: the requested size, input order kept, the same subset for the same seed.
    let a = select(&host, json!({"mode": "sample", "n": 20, "seed": 3}), input.clone()).await;
    let b = select(&host, json!({"mode": "sample", "n": 20, "seed": 3}), input.clone()).await;
    let c = select(&host, json!({"mode": "sample", "n": 20, "seed": 4}), input.clone()).await;
    assert_eq!(a.records.len(), 20);
    assert_eq!(a.records, b.records);
    assert_ne!(a.records, c.records);
    let positions: Vec<usize> = a.records.iter().map(|r| input.iter().position(|x| x == r).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "input order is kept");
    assert_eq!(a.dropped["not-sampled"], 70);
    // Stratified: at most 5 per group.
    let s = select(&host, json!({"mode": "stratified", "by": "tags", "per_group": 5}), input.clone()).await;
    assert_eq!(group_counts(&s.records), [("a".into(), 5), ("b".into(), 5), ("c".into(), 5)].into());
    let s = select(&host, json!({"mode": "stratified", "by": "tags", "fraction": 0.5}), input.clone()).await;
    assert_eq!(group_counts(&s.records), [("a".into(), 25), ("b".into(), 15), ("c".into(), 5)].into());
    // Mix a:b = 3:1, as many as `b` allows (30 b → 90 a wanted, only 50 a: a limits to 66 in all).
    let m = select(&host, json!({"mode": "mix", "by": "tags", "ratios": {"a": 3.0, "b": 1.0}}), input.clone()).await;
    let counts = group_counts(&m.records);
    assert_eq!((counts["a"], counts["b"]), (49, 16), "{counts:?}");
    assert!(!counts.contains_key("c"));
    assert_eq!(m.dropped["not-in-mix"], 10);
    assert_eq!(m.dropped["not-sampled"], 90 - 10 - 65);
    let m =
        select(&host, json!({"mode": "mix", "by": "tags", "ratios": {"a": 1.0, "c": 1.0}, "total": 10}), input.clone())
            .await;
    assert_eq!(group_counts(&m.records), [("a".into(), 5), ("c".into(), 5)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_splits_stably_and_orders_a_curriculum() {
    let (_dir, host) = host().await;
    let input = groups_fixture();
    let train =
        select(&host, json!({"mode": "split", "validation_fraction": 0.2, "key": "id", "seed": 1}), input.clone())
            .await;
    let val = select(
        &host,
        json!({"mode": "split", "validation_fraction": 0.2, "key": "id", "seed": 1, "keep": "validation"}),
        input.clone(),
    )
    .await;
    assert_eq!(train.records.len() + val.records.len(), 90, "the sides partition the input");
    assert!(train.records.iter().all(|r| !val.records.contains(r)));
    assert!((8..=28).contains(&val.records.len()), "about 20% held out: {}", val.records.len());
    // A record's side does not depend on the other records.
    let half = select(
        &host,
        json!({"mode": "split", "validation_fraction": 0.2, "key": "id", "seed": 1, "keep": "validation"}),
        input[..45].to_vec(),
    )
    .await;
    let expected: Vec<&String> = val.records.iter().filter(|r| input[..45].contains(r)).collect();
    assert_eq!(half.records.iter().collect::<Vec<_>>(), expected);
    // Curriculum: every record, easiest first by a difficulty field; longest first by length.
    let cur = select(&host, json!({"mode": "curriculum", "order_by": "difficulty"}), input.clone()).await;
    let d: Vec<f64> = cur
        .records
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["difficulty"].as_f64().unwrap())
        .collect();
    assert_eq!(d.len(), 90);
    assert!(d.windows(2).all(|w| w[0] <= w[1]));
    let cur =
        select(&host, json!({"mode": "curriculum", "order_by": "length", "descending": true}), input.clone()).await;
    let first: serde_json::Value = serde_json::from_str(&cur.records[0]).unwrap();
    assert_eq!(first["prompt"].as_str().unwrap().len(), 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_bad_records_and_configs_fail_as_asked() {
    let (_dir, host) = host().await;
    let mut input = groups_fixture();
    input.push(json!({"id": "untagged", "prompt": "p"}).to_string());
    let s = select(&host, json!({"mode": "stratified", "by": "tags", "per_group": 100}), input.clone()).await;
    assert_eq!(s.records.len(), 90);
    assert_eq!(s.dropped["bad-record: no group field `tags`"], 1);
    let err = host
        .run_data_tool(
            "select",
            &json!({"mode": "stratified", "by": "tags", "per_group": 100, "on_bad_record": "fail"}),
            input.clone(),
            &CallEnv::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("91") && err.contains("tags"), "{err}");
    // Configs are refused at validation, before any record is read, naming the field.
    for (config, field) in [
        (json!({"mode": "sample"}), "n"),
        (json!({"mode": "sample", "fraction": 1.5}), "fraction"),
        (json!({"mode": "split", "validation_fraction": 1.0}), "validation_fraction"),
        (json!({"mode": "mix", "ratios": {"a": -1.0}}), "ratios.a"),
        (json!({"mode": "sample", "n": 3, "sead": 1}), "sead"),
    ] {
        let err = host.validate_config("select", &config).await.unwrap_err().to_string();
        assert!(err.contains(field), "{config}: {err}");
    }
    let err = host
        .run_data_tool("select", &json!({"mode": "mix", "ratios": {"zzz": 1.0}}), input, &CallEnv::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ratios.zzz") && err.contains("groups present"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_csv_reads_real_moses_molecules_and_plain_csv() {
    let (dir, host) = host().await;
    let env = CallEnv { dataset_dir: Some(trex_tests::root().join("tests/fixtures/moses")), ..CallEnv::default() };
    let config = json!({"path": "train-head.csv.gz", "rename": {"SMILES": "response"}, "id_prefix": "moses-",
                        "constants": {"prompt": "Generate a drug-like molecule as SMILES."}});
    let passed = vec![json!({"id": "kept"}).to_string()];
    let run = host.run_data_tool("load-csv", &config, passed, &env).await.unwrap();
    assert_eq!(run.records.len(), 13, "the input record passes through, then 12 molecules");
    let first: serde_json::Value = serde_json::from_str(&run.records[1]).unwrap();
    assert_eq!(first["response"], "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1");
    assert_eq!(first["prompt"], "Generate a drug-like molecule as SMILES.");
    assert_eq!(first["id"], "moses-1");
    // A plain CSV with a quoted cell, a filter, numbers, and a short row.
    let data = dir.path().join("csv");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("t.csv"), "q,a,split\n\"1,5 km\",1500,train\n2 km,2000,test\nbroken\n3 km,3000,train\n")
        .unwrap();
    let env = CallEnv { dataset_dir: Some(data), ..CallEnv::default() };
    let config = json!({"path": "t.csv", "where_column": "split", "where_equals": "train", "numbers": true,
                        "columns": ["q", "a"], "rename": {"q": "prompt", "a": "answer"}});
    let run = host.run_data_tool("load-csv", &config, vec![], &env).await.unwrap();
    let rows: Vec<serde_json::Value> = run.records.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
    assert_eq!(rows, vec![json!({"prompt": "1,5 km", "answer": 1500}), json!({"prompt": "3 km", "answer": 3000})]);
    assert_eq!(run.dropped["filtered-out"], 1);
    assert_eq!(run.dropped["bad-record: 1 cells where the header has 3"], 1);
    let strict = json!({"path": "t.csv", "on_bad_record": "fail"});
    let err = host.run_data_tool("load-csv", &strict, vec![], &env).await.unwrap_err().to_string();
    assert!(err.contains("4") && err.contains("1 cells"), "{err}");
    for (config, field) in [
        (json!({"path": "../etc/passwd"}), "path"),
        (json!({"path": "t.csv", "where_column": "split"}), "where_equals"),
        (json!({"path": "t.csv", "has_header": false}), "names"),
    ] {
        let err = host.validate_config("load-csv", &config).await.unwrap_err().to_string();
        assert!(err.contains(field), "{config}: {err}");
    }
    let err = host.run_data_tool("load-csv", &json!({"path": "t.csv", "columns": ["nope"]}), vec![], &env).await;
    assert!(err.unwrap_err().to_string().contains("no column `nope`"));
}
