//! `trex-host` run as a user would: listing, inspecting, validating plugins, schemas, pipelines.

use std::path::Path;
use std::process::{Command, Output};

fn trex_host(plugins: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trex-host"));
    cmd.env("TREX_CACHE_DIR", trex_tests::root().join("target/test-component-cache/cli"));
    cmd.arg("--plugins").arg(plugins);
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output { status, stdout, stderr } = cmd.output().expect("trex-host runs");
    (status.success(), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

#[test]
fn plugins_list_shows_the_standard_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let (ok, out, err) = run(trex_host(&plugins).args(["plugins", "list"]));
    assert!(ok, "{err}");
    for (name, kind) in [
        ("chat-format", "data-tool"),
        ("filter-length", "data-tool"),
        ("dedup-exact", "data-tool"),
        ("dedup-near", "data-tool"),
        ("clean-text", "data-tool"),
        ("load-bfcl", "data-tool"),
        ("exact-match", "evaluator"),
        ("random", "researcher"),
    ] {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing from:\n{out}"));
        assert!(line.contains(kind) && line.contains("0.1.0"), "{line}");
    }
    let (ok, out, _) = run(trex_host(&plugins).args(["plugins", "list", "--json"]));
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plugins"].as_array().unwrap().len(), 17);
    // A manifest without a description: the list shows the one the component gives itself.
    std::fs::remove_dir_all(plugins.join("dedup-exact")).unwrap();
    let manifest = trex_tests::manifest("dedup-exact", "data-tool", "dedup_exact", "");
    trex_tests::install(&plugins, "dedup-exact", "dedup_exact", &manifest);
    let (ok, out, err) = run(trex_host(&plugins).args(["plugins", "list"]));
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("dedup-exact")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("Drop exact duplicates"), "{line}");
}

#[test]
fn inspect_prints_the_config_schema_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let (ok, out, err) = run(trex_host(&plugins).args(["plugins", "inspect", "filter-length"]));
    assert!(ok, "{err}");
    assert!(out.contains("timeout 120000 ms") && out.contains("\"max\""), "{out}");
    let (ok, _, err) = run(trex_host(&plugins).args(["plugins", "inspect", "nope"]));
    assert!(!ok && err.contains("no plugin named `nope`") && err.contains("plugins list"), "{err}");
}

#[test]
fn validate_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    std::fs::create_dir_all(plugins.join("typo")).unwrap();
    std::fs::write(
        plugins.join("typo/plugin.toml"),
        "name = \"typo\"\nkind = \"data-tool\"\nversion = \"0.1.0\"\napi_version = \"0.1.0\"\nwasm = \"t.wasm\"\n[limits]\ntimeout = 5\n",
    )
    .unwrap();
    let (ok, out, _) = run(trex_host(&plugins).args(["plugins", "validate"]).arg(&plugins));
    assert!(!ok);
    assert!(out.contains("typo/plugin.toml") && out.contains("unknown field `timeout`"), "{out}");
    assert!(out.contains("17 passed, 1 failed"), "{out}");
}

#[test]
fn schema_dumps_shared_types_and_plugin_configs() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let (ok, out, err) = run(trex_host(&plugins).arg("schema"));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["TrainRecipe"]["properties"]["lora_rank"].is_object());
    assert!(v["Proposal"].is_object());
    assert!(v["plugin.dedup-exact.config"]["properties"]["fields"].is_object());
    // The files users write, in snake_case.
    assert!(v["PluginManifest"]["properties"]["api_version"].is_object(), "{}", v["PluginManifest"]);
    assert!(v["PluginManifest"]["$defs"]["Limits"]["properties"]["timeout_ms"].is_object());
    assert!(v["Task"]["properties"]["search_space"].is_object() && v["Task"]["properties"]["dataset_dir"].is_object());
    assert!(v["Pipeline"]["properties"]["dataset_dir"].is_object() && v["Pipeline"]["properties"]["steps"].is_object());
    // Every example task and pipeline is valid under them.
    for (schema, file) in [
        ("Task", "examples/tasks/unit-conversion/task.toml"),
        ("Pipeline", "examples/pipelines/unit-conversion/pipeline.toml"),
        ("PluginManifest", "plugins/dedup-exact/plugin.toml"),
    ] {
        let text = std::fs::read_to_string(trex_tests::root().join(file)).unwrap();
        let doc: serde_json::Value = serde_json::to_value(toml::from_str::<toml::Table>(&text).unwrap()).unwrap();
        let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
        let props = v[schema]["properties"].as_object().unwrap();
        for k in keys {
            assert!(props.contains_key(k), "{file}: `{k}` is not in the {schema} schema");
        }
    }
    let out_dir = dir.path().join("schemas");
    let (ok, _, _) = run(trex_host(&plugins).args(["schema", "--out"]).arg(&out_dir));
    assert!(ok);
    assert!(out_dir.join("TrainRecipe.schema.json").is_file());
    // One schema by name comes alone, the same document as in the map.
    let (ok, one, err) = run(trex_host(&plugins).args(["schema", "TrainRecipe"]));
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&one).unwrap(), v["TrainRecipe"]);
}

fn example_pipeline(dir: &Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let src = trex_tests::root().join("examples/pipelines/unit-conversion");
    let dst = dir.join("unit-conversion");
    std::fs::create_dir_all(dst.join("data")).unwrap();
    for f in ["data/train.jsonl", "data/validation.jsonl"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(src.join("pipeline.toml")).unwrap();
    std::fs::write(dst.join("pipeline.toml"), edit(text)).unwrap();
    dst.join("pipeline.toml")
}

#[test]
fn example_pipeline_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let pipeline = example_pipeline(dir.path(), |t| t);
    let out_dir = dir.path().join("out");
    let (ok, out, err) = run(trex_host(&plugins).arg("pipeline").arg(&pipeline).arg("--out").arg(&out_dir).args([
        "--json",
        "--predictor",
        "oracle",
    ]));
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["input_records"], 742);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["dropped"]["bad-record: missing string field `response`"], 23);
    assert_eq!(steps[2]["dropped"]["duplicate"], 125);
    assert_eq!(steps[2]["records_out"], 561);
    assert_eq!(report["evaluation"]["report"]["score"], 1.0, "the oracle must score 1");
    let prepared = std::fs::read_to_string(out_dir.join("unit-conversion.prepared.jsonl")).unwrap();
    assert_eq!(prepared.lines().count(), 561);
    assert!(out_dir.join("unit-conversion.report.json").is_file());
}

#[test]
fn misspelled_step_field_fails_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let pipeline = example_pipeline(dir.path(), |t| t.replace("max = 400", "maximum = 400"));
    let out_dir = dir.path().join("out");
    let (ok, _, err) = run(trex_host(&plugins).arg("pipeline").arg(&pipeline).arg("--out").arg(&out_dir));
    assert!(!ok);
    assert!(err.contains("step 2 (`filter-length`)") && err.contains("field `maximum`"), "{err}");
    assert!(!out_dir.exists(), "nothing ran, nothing was written");
}

#[test]
fn a_step_config_error_is_printed_once_at_its_line_of_the_pipeline_file() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let pipeline = example_pipeline(dir.path(), |t| t.replace("max = 400", r#"max = "four hundred""#));
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let line = text.lines().position(|l| l.contains("four hundred")).unwrap() + 1;
    let (ok, _, err) = run(trex_host(&plugins).arg("pipeline").arg(&pipeline).arg("--out").arg(dir.path().join("out")));
    assert!(!ok);
    let expected = format!(
        "error: {}:{line}: step 2 (`filter-length`): plugin `filter-length` reported an error: field `max`: \
         invalid config: invalid type: string \"four hundred\", expected usize\n",
        pipeline.display()
    );
    assert!(err.ends_with(&expected), "expected\n{expected}got\n{err}");
}

#[test]
fn help_teaches_with_examples() {
    let (ok, out, _) = run(Command::new(env!("CARGO_BIN_EXE_trex-host")).arg("--help"));
    assert!(ok);
    assert!(out.contains("plugins list") && out.contains("--plugins"), "{out}");
}

#[test]
fn pipeline_counts_tokens_with_the_named_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let pipeline =
        example_pipeline(dir.path(), |t| t.replace(r#"max = 400, unit = "chars""#, r#"max = 30, unit = "tokens""#));
    let out_dir = dir.path().join("out");
    let (ok, _, err) = run(trex_host(&plugins).arg("pipeline").arg(&pipeline).arg("--out").arg(&out_dir));
    assert!(!ok);
    assert!(err.contains("filter-length") && err.contains("no tokenizer") && err.contains("--tokenizer"), "{err}");
    let model_dir = trex_tests::tiny_model(dir.path(), &trex_model::LlamaConfig::tiny());
    let (ok, out, err) = run(trex_host(&plugins)
        .arg("pipeline")
        .arg(&pipeline)
        .arg("--json")
        .arg("--out")
        .arg(&out_dir)
        .arg("--tokenizer")
        .arg(&model_dir));
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let step = &report["steps"][1];
    assert_eq!(step["plugin"], "filter-length");
    // Counted by the word-level tokenizer: words and punctuation runs, the system turn included.
    let mean = step["metrics"]["mean-length-kept"].as_f64().unwrap_or_else(|| panic!("{report}"));
    assert!(mean > 4.0 && mean <= 30.0, "{step}");
    assert!(step["dropped"]["too-long"].as_u64().is_some_and(|n| n > 0), "{step}");
}

#[test]
fn train_then_generate_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = trex_tests::tiny_model(dir.path(), &trex_model::LlamaConfig::tiny());
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, "{\"prompt_text\": \"w2 w3\", \"completion_text\": \"w4 w5\"}\n{\"prompt_text\": \"w6\", \"completion_text\": \"w7\"}\n").unwrap();
    let recipe = dir.path().join("recipe.json");
    std::fs::write(&recipe, r#"{"lora_rank": 4, "targets": ["q_proj", "down_proj"], "epochs": 2, "batch_size": 1}"#)
        .unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, err) = run(Command::new(env!("CARGO_BIN_EXE_trex-host"))
        .args(["train", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&data)
        .arg("--recipe")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--merge"));
    assert!(ok, "{err}");
    assert!(stdout.contains("trained 4 steps"), "{stdout}");
    assert!(out.join("adapter/adapter_config.json").is_file() && out.join("merged/model.safetensors").is_file());
    let (ok, stdout, err) = run(Command::new(env!("CARGO_BIN_EXE_trex-host"))
        .args(["generate", "--raw", "--max-new-tokens", "3", "--prompt", "w2 w3", "--model"])
        .arg(&model_dir)
        .arg("--adapter")
        .arg(out.join("adapter")));
    assert!(ok, "{err}");
    assert!(stdout.starts_with("### w2 w3\n"), "{stdout}");
    // A recipe with a misspelled field is refused before the model loads.
    std::fs::write(&recipe, r#"{"lora_rnk": 4}"#).unwrap();
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_trex-host"))
        .args(["train", "--model", "nope", "--data", "x", "--out", "y", "--recipe"])
        .arg(&recipe));
    assert!(!ok && err.contains("recipe.json") && err.contains("lora_rnk"), "{err}");
    // The same recipe written inline is read as JSON, and refused the same way.
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_trex-host")).args([
        "train",
        "--model",
        "nope",
        "--data",
        "x",
        "--out",
        "y",
        "--recipe",
        r#"{"lora_rnk": 4}"#,
    ]));
    assert!(!ok && err.contains("--recipe") && err.contains("lora_rnk"), "{err}");
}
