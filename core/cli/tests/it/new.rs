//! A new user's first plugins: `trex-host new` for each kind, `trex-host plugins build`, then
//! each plugin at work: the data tool and the evaluator in a pipeline, the Researcher in a
//! one-experiment search on the tiny model. The commands are the ones `docs/plugins.md` gives.

use std::path::Path;
use std::process::Command;

fn trex_host(plugins: &Path, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trex-host"));
    c.env("TREX_CACHE_DIR", cache).arg("--plugins").arg(plugins);
    // The new crates share one target folder, so the SDK's dependencies build once.
    c.env("CARGO_TARGET_DIR", trex_tests::root().join("target/new-plugins"));
    c
}

fn run(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn a_plugin_of_each_kind_from_trex_host_new_builds_validates_and_runs() {
    trex_tests::build_plugins();
    let f = crate::search::fixture(40, crate::search::QUICK, "", trex_model::LlamaConfig::tiny());
    let cache = f.dir.path().join("cache");
    let host = |c: &mut Command| run(c);
    for (kind, name) in [("data-tool", "short-text"), ("evaluator", "contains-answer"), ("researcher", "lr-steps")] {
        let dir = f.plugins.join(name);
        let (ok, out, err) = host(trex_host(&f.plugins, &cache).args(["new", kind, name, "--dir"]).arg(&dir));
        assert!(ok && out.contains("plugins build"), "{out}{err}");
        for file in ["Cargo.toml", "plugin.toml", "src/lib.rs", "README.md"] {
            assert!(dir.join(file).is_file(), "{name}: {file}");
        }
        let (ok, out, err) = host(trex_host(&f.plugins, &cache).args(["plugins", "build"]).arg(&dir));
        assert!(ok && out.contains(&format!("ok      {name}")), "{name}:\n{out}\n{err}");
    }
    // The unit tests the template comes with pass natively.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (ok, out, err) = host(
        Command::new(&cargo)
            .args(["test", "--lib", "--manifest-path"])
            .arg(f.plugins.join("short-text/Cargo.toml"))
            .env("CARGO_TARGET_DIR", trex_tests::root().join("target/new-plugins")),
    );
    assert!(ok && out.contains("test result: ok. 2 passed"), "{out}{err}");
    // The SDK as a git dependency, as outside a checkout (this repository's committed head).
    let dir = f.dir.path().join("outside/from-git");
    let url = format!("file://{}", trex_tests::root().display());
    let (ok, out, err) = host(
        trex_host(&f.plugins, &cache).args(["new", "data-tool", "from-git", "--sdk-git", &url, "--dir"]).arg(&dir),
    );
    assert!(ok, "{out}{err}");
    let cargo_toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(cargo_toml.contains(&format!("trex-sdk = {{ git = \"{url}\" }}")), "{cargo_toml}");
    let (ok, out, err) = host(trex_host(&f.plugins, &cache).args(["plugins", "build"]).arg(&dir));
    assert!(ok && out.contains("ok      from-git"), "{out}\n{err}");
    // A name that is not one, and a folder that is taken, are refused before anything is written.
    let (ok, _, err) = host(trex_host(&f.plugins, &cache).args(["new", "data-tool", "Bad_Name"]));
    assert!(!ok && err.contains("is not a plugin name"), "{err}");
    let (ok, _, err) = host(
        trex_host(&f.plugins, &cache)
            .args(["new", "data-tool", "short-text", "--dir"])
            .arg(f.plugins.join("short-text")),
    );
    assert!(!ok && err.contains("already exists"), "{err}");
    // The data tool and the evaluator in a pipeline.
    let data = f.dir.path().join("pipeline");
    std::fs::create_dir_all(&data).unwrap();
    let records = [
        r#"{"id":"a","text":"short","response":"yes"}"#,
        r#"{"id":"b","text":"a text that is far too long to keep","response":"no"}"#,
        r#"{"id":"c","text":"tiny","response":"yes"}"#,
    ];
    std::fs::write(data.join("train.jsonl"), records.join("\n") + "\n").unwrap();
    std::fs::write(data.join("validation.jsonl"), records.join("\n") + "\n").unwrap();
    let pipeline = data.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        r#"name = "first"
dataset_dir = "."
input = "train.jsonl"

[[steps]]
plugin = "short-text"
config = { max_chars = 10 }

[evaluate]
plugin = "contains-answer"
data = "validation.jsonl"
predictor = "majority"
config = { answer_field = "response" }
"#,
    )
    .unwrap();
    let (ok, out, err) = host(
        trex_host(&f.plugins, &cache).arg("pipeline").arg(&pipeline).arg("--out").arg(data.join("out")).arg("--json"),
    );
    assert!(ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["steps"][0]["records_out"], 2, "{report}");
    assert_eq!(report["steps"][0]["dropped"]["too-long"], 1, "{report}");
    let eval = &report["evaluation"]["report"];
    assert_eq!(eval["total"], 3, "{report}");
    // The majority answer ("yes") contains the expected answer of two records out of three.
    assert_eq!(eval["passed"], 2, "{report}");
    // The Researcher in a one-experiment search.
    let run_dir = f.dir.path().join("run");
    let (ok, out, err) = host(
        trex_host(&f.plugins, &cache)
            .args(["search", "--researcher", "lr-steps", "--nodes", "1", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{out}{err}");
    let events = crate::search::events(&run_dir);
    let created = events.iter().find_map(|e| match e {
        trex_lab::journal::Event::Created { node: 1, proposal: Some(p), .. } => Some(p.rationale.clone()),
        _ => None,
    });
    assert_eq!(created.as_deref(), Some("the task's starting experiment"), "{events:?}");
    assert!(out.contains("1 experiments"), "{out}");
}
