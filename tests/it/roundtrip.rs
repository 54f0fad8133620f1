//! Each plugin kind round-trips through the host: standard plugins do their jobs, configs are
//! validated, manifests are checked against what the component says.

use serde_json::json;
use trex_plugin_host::{CallEnv, EvalItem, PluginError, PluginHost};
use trex_sdk::types::{NodeSummary, ResearchContext, SearchSpace, TaskBrief};

use crate::test_config;

async fn standard_host() -> (tempfile::TempDir, PluginHost) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let host = PluginHost::discover(&plugins, test_config(dir.path().join("scratch"))).await.unwrap();
    assert!(host.failures().is_empty(), "{:?}", host.failures());
    (dir, host)
}

fn lines(v: &[serde_json::Value]) -> Vec<String> {
    v.iter().map(|r| r.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_format_handles_both_shapes_and_counts_bad_records() {
    let (_dir, host) = standard_host().await;
    let input = lines(&[
        json!({"id": 1, "prompt": "2+2?", "response": "4", "tags": "math"}),
        json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
        json!({"question": "no usable field"}),
    ]);
    let run =
        host.run_data_tool("chat-format", &json!({"system": "Be brief."}), input, &CallEnv::default()).await.unwrap();
    assert_eq!((run.records_in, run.records_out), (3, 2));
    assert_eq!(run.dropped.values().sum::<u64>(), 1, "{:?}", run.dropped);
    assert!(run.dropped.keys().next().unwrap().contains("missing string field `prompt`"), "{:?}", run.dropped);
    let first: serde_json::Value = serde_json::from_str(&run.records[0]).unwrap();
    assert_eq!(first["completion"], "4");
    assert_eq!(first["id"], "1");
    assert_eq!(first["tags"], json!(["math"]));
    assert_eq!(
        first["prompt_text"],
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(first["completion_text"], "4<|im_end|>");
    let second: serde_json::Value = serde_json::from_str(&run.records[1]).unwrap();
    assert_eq!(second["completion"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_format_fail_policy_stops_with_the_record() {
    let (_dir, host) = standard_host().await;
    let input = lines(&[json!({"prompt": "a", "response": "b"}), json!({"nothing": 1})]);
    let err = host
        .run_data_tool("chat-format", &json!({"on_bad_record": "fail"}), input, &CallEnv::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("plugin `chat-format` reported an error") && err.contains("record 2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_and_dedup_count_what_they_drop() {
    let (_dir, host) = standard_host().await;
    let input = lines(&[
        json!({"text": "short"}),
        json!({"text": "a somewhat longer text"}),
        json!({"text": "A  somewhat LONGER text"}),
        json!({"text": "x".repeat(100)}),
    ]);
    let env = CallEnv::default();
    let filtered = host.run_data_tool("filter-length", &json!({"min": 6, "max": 50}), input, &env).await.unwrap();
    assert_eq!(filtered.records_out, 2);
    assert_eq!(filtered.dropped["too-short"], 1);
    assert_eq!(filtered.dropped["too-long"], 1);
    let deduped =
        host.run_data_tool("dedup-exact", &json!({"fields": ["text"]}), filtered.records, &env).await.unwrap();
    assert_eq!(deduped.records_out, 1, "normalized duplicates collapse");
    assert_eq!(deduped.dropped["duplicate"], 1);
    let strict = host
        .run_data_tool(
            "dedup-exact",
            &json!({"normalize": false}),
            lines(&[json!({"a": "X"}), json!({"a": "x"})]),
            &env,
        )
        .await
        .unwrap();
    assert_eq!(strict.records_out, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_match_scores_and_tags() {
    let (_dir, host) = standard_host().await;
    let items: Vec<EvalItem> =
        [("4", "4<|im_end|>"), ("4", "4, because 2+2"), ("Paris", "paris"), ("4", ""), ("4", "5")]
            .iter()
            .enumerate()
            .map(|(i, (answer, output))| EvalItem {
                id: i.to_string(),
                example: json!({"answer": answer}),
                output: output.to_string(),
            })
            .collect();
    let report = host.evaluate("exact-match", &json!({}), &items, 2, &CallEnv::default()).await.unwrap();
    assert_eq!((report.passed, report.total), (2, 5));
    assert!((report.score - 0.4).abs() < 1e-12);
    let tags: Vec<Vec<String>> = report.results.iter().map(|r| r.tags.clone()).collect();
    assert_eq!(tags[1], vec!["answer-with-extra-text"]);
    assert_eq!(tags[3], vec!["empty-output"]);
    assert_eq!(tags[4], vec!["wrong-answer"]);
    let missing = [EvalItem { id: "q".into(), example: json!({"question": "?"}), output: "x".into() }];
    let err = host.evaluate("exact-match", &json!({}), &missing, 8, &CallEnv::default()).await.unwrap_err();
    assert!(matches!(&err, PluginError::Reported { field: Some(f), .. } if f == "answer_fields"), "{err}");
}

fn context() -> ResearchContext {
    ResearchContext {
        node: NodeSummary {
            id: 0,
            parent: None,
            proposal: None,
            status: trex_sdk::types::NodeStatus::Done,
            failure: None,
            score: Some(0.1),
            reward: Some(0.0),
            lesson: String::new(),
            metrics: Default::default(),
        },
        parent_path: vec![],
        siblings: vec![],
        best: vec![],
        worst: vec![],
        bad_cases: vec![],
        notes: Default::default(),
        tried: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_researcher_is_seeded_and_stays_in_the_space() {
    let (_dir, host) = standard_host().await;
    let task = TaskBrief {
        name: "t".into(),
        domain: "test".into(),
        goal: String::new(),
        metric: "accuracy".into(),
        search_space: SearchSpace::default(),
        seed: 7,
        start: None,
    };
    let env = CallEnv::default();
    let mut a = host.open_researcher("random", &json!({}), &task, &env).await.unwrap();
    let mut b = host.open_researcher("random", &json!({}), &task, &env).await.unwrap();
    let pa: Vec<_> = a.propose(&context(), 4).await.unwrap().into_iter().map(Result::unwrap).collect();
    let pb: Vec<_> = b.propose(&context(), 4).await.unwrap().into_iter().map(Result::unwrap).collect();
    assert_eq!(pa.len(), 4);
    assert_eq!(pa, pb, "same seed, same proposals");
    for p in &pa {
        let r = &p.train_recipe;
        assert!((5e-5..=1e-3).contains(&r.learning_rate), "{r:?}");
        assert!([4, 8, 16].contains(&r.lora_rank), "{r:?}");
    }
    let next = a.propose(&context(), 2).await.unwrap();
    assert_ne!(next[0].as_ref().unwrap(), &pa[0], "the session keeps its state between calls");
    let outcome = trex_sdk::types::Outcome { node: context().node };
    a.observe(&outcome).await.unwrap();
    let err = host
        .open_researcher("random", &json!({"data_step_probability": 2.0}), &task, &env)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_step_probability") && err.contains("random"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misspelled_config_field_is_named_before_any_work() {
    let (_dir, host) = standard_host().await;
    let err = host.validate_config("filter-length", &json!({"max_chars": 10})).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("plugin `filter-length`") && text.contains("field `max_chars`"), "{text}");
    let normalized = host.validate_config("filter-length", &json!({"max": 10})).await.unwrap();
    assert_eq!(normalized["max"], 10);
    assert_eq!(normalized["min"], 1, "defaults are filled in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kind_and_unknown_name_say_what_exists() {
    let (_dir, host) = standard_host().await;
    let err = host.run_data_tool("exact-match", &json!({}), vec![], &CallEnv::default()).await.unwrap_err().to_string();
    assert!(
        err.contains("no data-tool plugin named `exact-match`") && err.contains("`exact-match` is an evaluator plugin"),
        "{err}"
    );
    let err = host.run_data_tool("dedup", &json!({}), vec![], &CallEnv::default()).await.unwrap_err().to_string();
    assert!(
        err.contains(
            "available: augment, chat-format, clean-text, dedup-exact, dedup-near, filter-lang, filter-length"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = trex_tests::install(
        dir.path(),
        "d",
        "dedup_exact",
        &trex_tests::manifest("dedup-exact", "data-tool", "dedup_exact", ""),
    );
    let config = trex_plugin_host::HostConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..crate::test_config(dir.path().join("s"))
    };
    let mut first = PluginHost::new(config.clone()).unwrap();
    assert!(!first.load(&manifest).await.unwrap().load.from_cache);
    let mut second = PluginHost::new(config.clone()).unwrap();
    assert!(second.load(&manifest).await.unwrap().load.from_cache);
    // One bit changed in the compiled code (the header still valid): caught by the checksum,
    // compiled again, and the rebuilt entry serves the next load.
    let files: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir.path().join("cache")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&files[0], &bytes).unwrap();
    let mut flipped = PluginHost::new(config.clone()).unwrap();
    assert!(!flipped.load(&manifest).await.unwrap().load.from_cache, "a flipped bit must not be trusted");
    let records = vec![r#"{"text":"a"}"#.to_string(), r#"{"text":"a"}"#.to_string()];
    let run = flipped
        .run_data_tool("dedup-exact", &serde_json::json!({"fields": ["text"]}), records, &Default::default())
        .await
        .unwrap();
    assert_eq!(run.records.len(), 1, "the recompiled plugin works");
    let mut rebuilt = PluginHost::new(config).unwrap();
    assert!(rebuilt.load(&manifest).await.unwrap().load.from_cache, "the entry was rebuilt");
    // A corrupt cache entry is ignored and replaced, not trusted.
    for e in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        std::fs::write(e.unwrap().path(), b"garbage").unwrap();
    }
    let config = trex_plugin_host::HostConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..crate::test_config(dir.path().join("s"))
    };
    let mut third = PluginHost::new(config).unwrap();
    assert!(!third.load(&manifest).await.unwrap().load.from_cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_must_agree_with_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let m = trex_tests::install(
        dir.path(),
        "a",
        "dedup_exact",
        &trex_tests::manifest("not-dedup", "data-tool", "dedup_exact", ""),
    );
    let mut host = PluginHost::new(test_config(dir.path().join("s"))).unwrap();
    let err = host.load(&m).await.unwrap_err().to_string();
    assert!(err.contains("describe() says its name is `dedup-exact`") && err.contains("`not-dedup`"), "{err}");

    let text = trex_tests::manifest("dedup-exact", "data-tool", "dedup_exact", "")
        .replace("api_version = \"0.1.1\"", "api_version = \"0.3.0\"");
    let m = trex_tests::install(dir.path(), "b", "dedup_exact", &text);
    let err = host.load(&m).await.unwrap_err().to_string();
    assert!(err.contains("API 0.3.0") && err.contains("API 0.1.1"), "{err}");
}

/// A context expanding node 3, a finished experiment that underfit on few optimizer steps.
pub(crate) fn context_at_node() -> ResearchContext {
    let mut ctx = context();
    let proposal = trex_sdk::types::Proposal {
        data_recipe: Default::default(),
        train_recipe: trex_sdk::types::TrainRecipe { learning_rate: 2e-4, epochs: 1.0, ..Default::default() },
        rationale: String::new(),
    };
    ctx.node.id = 3;
    ctx.node.parent = Some(0);
    ctx.node.proposal = Some(proposal);
    ctx.node.metrics = [("first_loss", 3.0), ("final_loss", 1.5), ("train_steps", 10.0), ("train_examples", 80.0)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    ctx
}

pub(crate) fn brief(seed: u64) -> TaskBrief {
    TaskBrief {
        name: "t".into(),
        domain: "test".into(),
        goal: String::new(),
        metric: "accuracy".into(),
        search_space: SearchSpace::default(),
        seed,
        start: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heuristic_varies_with_the_seed_and_never_proposes_what_was_tried() {
    use trex_sdk::types::experiment_key;
    let (_dir, host) = standard_host().await;
    let env = CallEnv::default();
    let propose = |seed: u64, ctx: ResearchContext| {
        let host = &host;
        let env = &env;
        async move {
            let mut r = host.open_researcher("heuristic", &json!({}), &brief(seed), env).await.unwrap();
            r.propose(&ctx, 3).await.unwrap().into_iter().map(Result::unwrap).collect::<Vec<_>>()
        }
    };
    let first = propose(0, context_at_node()).await;
    assert_eq!(first.len(), 3);
    assert_eq!(first, propose(0, context_at_node()).await, "the same seed and context, the same proposals");
    // The moves are sampled, not taken in a fixed order: some seed leads with another one.
    let mut leads = std::collections::BTreeSet::new();
    for seed in 0..8 {
        leads.insert(experiment_key(&propose(seed, context_at_node()).await[0]));
    }
    assert!(leads.len() >= 2, "eight seeds, one first move: {leads:?}");
    // Too few optimizer steps are named in the reasons.
    assert!(first.iter().chain(&propose(1, context_at_node()).await).any(|p| p.rationale.contains("optimizer steps")));
    // What the search has tried anywhere is never proposed again.
    let mut ctx = context_at_node();
    ctx.tried = first.iter().map(experiment_key).collect();
    let next = propose(0, ctx.clone()).await;
    assert!(!next.is_empty());
    for p in &next {
        assert!(p.train_recipe.continue_from_parent || !ctx.tried.contains(&experiment_key(p)), "{p:?} was tried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_random_researcher_mutates_the_node_it_expands() {
    let (_dir, host) = standard_host().await;
    let env = CallEnv::default();
    let mut r = host.open_researcher("random", &json!({}), &brief(5), &env).await.unwrap();
    let ctx = context_at_node();
    let node = ctx.node.proposal.clone().unwrap().train_recipe;
    let proposals: Vec<_> = r.propose(&ctx, 8).await.unwrap().into_iter().map(Result::unwrap).collect();
    assert!(proposals.len() >= 4);
    for p in &proposals {
        let t = &p.train_recipe;
        let changed = [
            t.learning_rate != node.learning_rate,
            t.lora_rank != node.lora_rank,
            t.epochs != node.epochs,
            t.targets != node.targets,
        ];
        assert!(changed.iter().filter(|c| **c).count() <= 2, "one or two fields change: {t:?} from {node:?}");
        assert!(p.rationale.contains("mutation"), "{}", p.rationale);
    }
}
