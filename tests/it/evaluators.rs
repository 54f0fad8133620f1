//! The task evaluators. `bfcl-ast` on the real BFCL fixture's ground truth: the canonical calls
//! pass, equivalent spellings pass, and each kind of mistake gets its own tag. `smiles` on real
//! MOSES molecules and on hand-written valid and invalid SMILES.

use serde_json::{Value, json};
use trex_plugin_host::{CallEnv, EvalItem, PluginHost};

use crate::test_config;

/// The ground truth of every question in `tests/fixtures/bfcl`, by id.
fn ground_truth() -> std::collections::HashMap<String, Value> {
    let path = trex_tests::root().join("tests/fixtures/bfcl/possible_answer/BFCL_v4_simple_python.json");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["id"].as_str().unwrap().to_string(), v["ground_truth"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bfcl_ast_passes_equivalent_calls_and_tags_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let host = PluginHost::discover(&plugins, test_config(dir.path().join("s"))).await.unwrap();
    let truth = ground_truth();
    let triangle = &truth["simple_python_0"]; // base [10], height [5], unit ["units", ""]
    let hypot = &truth["simple_python_2"]; // x [4], y [5], z ["", 0]
    let parallel = json!([{"f": {"a": [1]}}, {"g": {"b": ["x"]}}]);
    let nested = json!([{"book": {"where": [{"city": ["Paris"], "days": [2, ""]}], "tags": [["a", "b"]]}}]);
    let cases: Vec<(&Value, &str, Option<&str>)> = vec![
        (
            triangle,
            r#"[{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "units"}}]"#,
            None,
        ),
        // Optional argument left out, floats for ints, a code fence and an end marker.
        (
            triangle,
            "```json\n{\"name\": \"calculate_triangle_area\", \"arguments\": {\"height\": 5.0, \"base\": 10}}\n```<|im_end|>",
            None,
        ),
        // BFCL's own call form; case and spacing in strings do not count.
        (triangle, r#"{"calculate_triangle_area": {"base": 10, "height": 5, "unit": " Units"}}"#, None),
        (hypot, r#"[{"name": "math.hypot", "arguments": {"x": 4, "y": 5, "z": 0}}]"#, None),
        (&parallel, r#"[{"name": "g", "arguments": {"b": "X"}}, {"name": "f", "arguments": {"a": 1}}]"#, None),
        (&nested, r#"[{"name": "book", "arguments": {"where": {"city": "paris"}, "tags": ["a", "b"]}}]"#, None),
        (triangle, "The area is 25.", Some("malformed-json")),
        (triangle, "[1, 2]", Some("not-a-call")),
        (triangle, r#"[{"name": "triangle_area", "arguments": {"base": 10, "height": 5}}]"#, Some("wrong-function")),
        (triangle, r#"[{"name": "calculate_triangle_area", "arguments": {"base": 10}}]"#, Some("missing-argument")),
        (
            triangle,
            r#"[{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "color": "red"}}]"#,
            Some("unexpected-argument"),
        ),
        (
            triangle,
            r#"[{"name": "calculate_triangle_area", "arguments": {"base": "10", "height": 5}}]"#,
            Some("wrong-type"),
        ),
        (
            triangle,
            r#"[{"name": "calculate_triangle_area", "arguments": {"base": 11, "height": 5}}]"#,
            Some("wrong-value"),
        ),
        (&parallel, r#"[{"name": "f", "arguments": {"a": 1}}]"#, Some("wrong-call-count")),
        (
            &parallel,
            r#"[{"name": "f", "arguments": {"a": 2}}, {"name": "g", "arguments": {"b": "x"}}]"#,
            Some("wrong-value"),
        ),
        (
            &nested,
            r#"[{"name": "book", "arguments": {"where": {"city": "Rome"}, "tags": ["a", "b"]}}]"#,
            Some("wrong-value"),
        ),
    ];
    let items: Vec<EvalItem> = cases
        .iter()
        .enumerate()
        .map(|(i, (answer, output, _))| EvalItem {
            id: i.to_string(),
            example: json!({ "answer": answer }),
            output: output.to_string(),
        })
        .collect();
    let report = host.evaluate("bfcl-ast", &json!({}), &items, 4, &CallEnv::default()).await.unwrap();
    for ((_, output, want), r) in cases.iter().zip(&report.results) {
        match want {
            None => assert!(r.passed, "{output}: {}", r.explanation),
            Some(tag) => assert!(!r.passed && r.tags == [tag.to_string()], "{output}: {:?} {}", r.tags, r.explanation),
        }
    }
    assert_eq!(report.passed, 6);
    // In order only when asked: the parallel pair swapped fails with `ordered`.
    let swapped = vec![items[4].clone()];
    let strict = host.evaluate("bfcl-ast", &json!({"ordered": true}), &swapped, 1, &CallEnv::default()).await.unwrap();
    assert_eq!(strict.results[0].tags, ["wrong-function"]);
    // An example without ground truth is a configuration error, named.
    let bad = vec![EvalItem { id: "x".into(), example: json!({"question": "?"}), output: "[]".into() }];
    let err = host.evaluate("bfcl-ast", &json!({}), &bad, 1, &CallEnv::default()).await.unwrap_err().to_string();
    assert!(err.contains("answer_field") || err.contains("has no `answer`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smiles_checks_validity_uniqueness_and_novelty() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let host = PluginHost::discover(&plugins, test_config(dir.path().join("s"))).await.unwrap();
    let item = |i: usize, output: &str| EvalItem { id: i.to_string(), example: json!({}), output: output.into() };
    // The 12 real MOSES molecules of the fixture are all valid.
    let moses = trex_tests::root().join("tests/fixtures/moses");
    let mut text = String::new();
    flate2_read(&moses.join("train-head.csv.gz"), &mut text);
    let molecules: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(molecules.len(), 12);
    let items: Vec<EvalItem> = molecules.iter().enumerate().map(|(i, m)| item(i, m)).collect();
    let report = host.evaluate("smiles", &json!({}), &items, 5, &CallEnv::default()).await.unwrap();
    for (m, r) in molecules.iter().zip(&report.results) {
        assert!(r.passed, "{m}: {}", r.explanation);
    }
    assert_eq!((report.metrics["validity"], report.metrics["uniqueness"]), (1.0, 1.0));
    // Against the same molecules as the reference set, none is novel.
    let env = CallEnv { dataset_dir: Some(moses.clone()), ..CallEnv::default() };
    let config = json!({"reference": "train-head.csv.gz"});
    let report = host.evaluate("smiles", &config, &items, 5, &env).await.unwrap();
    assert!(report.results.iter().all(|r| r.tags == ["not-novel"]), "{:?}", report.results);
    assert_eq!((report.score, report.metrics["novelty"]), (0.0, 0.0));

    let cases: Vec<(&str, Option<&str>)> = vec![
        ("CCO", None),
        ("OCC", None), // the same molecule: not unique
        ("c1ccccc1O<|im_end|>", None),
        ("Oc1ccccc1 and some words", None), // the same again
        ("c1cc[nH]c1", None),
        ("[O-][N+](=O)c1ccccc1", None),
        ("[NH4+]", None),
        ("FC(F)(F)Cl", None),
        ("C1CC2CCC1C2", None),
        ("CC(=O)O.[Na+]", None),
        ("", Some("empty-output")),
        ("C1CCC", Some("unclosed-ring")),
        ("C(C", Some("invalid-syntax")),
        ("CXC", Some("invalid-syntax")),
        ("CC(C)(C)(C)(C)C", Some("valence")),
        ("O=O=O", Some("valence")),
        ("c1ccnc1", Some("aromaticity")),
        ("cc", Some("aromaticity")),
        ("C11", Some("unclosed-ring")),
    ];
    let items: Vec<EvalItem> = cases.iter().enumerate().map(|(i, (m, _))| item(i, m)).collect();
    let report = host.evaluate("smiles", &json!({}), &items, 7, &CallEnv::default()).await.unwrap();
    for ((m, want), r) in cases.iter().zip(&report.results) {
        match want {
            None => assert!(r.passed, "{m}: {}", r.explanation),
            Some(tag) => assert!(!r.passed && r.tags == [tag.to_string()], "{m}: {:?} {}", r.tags, r.explanation),
        }
    }
    let total = cases.len() as f64;
    assert_eq!(report.metrics["validity"], 10.0 / total);
    assert_eq!(report.metrics["uniqueness"], 8.0 / 10.0);
    assert_eq!(report.score, 8.0 / total, "valid, first of their kind, and (no reference) novel");
}

/// Decompress a gzip file into `out` (the test crate has no gzip dependency; `gzip -dc` does it).
fn flate2_read(path: &std::path::Path, out: &mut String) {
    let o = std::process::Command::new("gzip").arg("-dc").arg(path).output().expect("gzip runs");
    out.push_str(&String::from_utf8(o.stdout).unwrap());
}
