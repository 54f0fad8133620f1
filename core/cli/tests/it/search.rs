//! End-to-end searches on a tiny model and a tiny task: every strategy, SIGKILL + resume,
//! hostile Researcher replies, budgets, and a plugin failing inside a node.

use std::path::{Path, PathBuf};
use std::process::Command;

use trex_lab::journal::{Event, Journal};
use trex_lab::run::{SearchRequest, search, view};
use trex_lab::tree::{NodeStatus, Strategy};
use trex_lab::{SearchSummary, Settings};
use trex_plugin_host::HostConfig;
use trex_tests::llm_server::{completion, start};

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) plugins: PathBuf,
    pub(crate) task: PathBuf,
}

/// The task: answer `w<a>` with `w<a+20>`. `extra` is appended to task.toml.
pub(crate) fn fixture(
    train_records: usize,
    start_recipe: &str,
    extra: &str,
    config: trex_model::LlamaConfig,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    trex_tests::install(
        &plugins,
        "hostile",
        "hostile",
        &std::fs::read_to_string(trex_tests::root().join("plugins/testing/hostile/plugin.toml")).unwrap(),
    );
    let model = trex_tests::tiny_model(dir.path(), &config);
    let data = dir.path().join("task/data");
    std::fs::create_dir_all(&data).unwrap();
    let record = |id: String, a: usize| {
        format!("{{\"id\":\"{id}\",\"prompt\":\"w{a}\",\"response\":\"w{}\",\"tags\":[\"t{}\"]}}\n", a + 20, a % 3)
    };
    let train: String = (0..train_records).map(|i| record(format!("train-{i}"), 10 + i % 40)).collect();
    std::fs::write(data.join("train.jsonl"), train).unwrap();
    std::fs::write(data.join("validation.jsonl"), (0..8).map(|i| record(format!("v{i}"), 12 + i)).collect::<String>())
        .unwrap();
    std::fs::write(data.join("test.jsonl"), (0..8).map(|i| record(format!("t{i}"), 30 + i)).collect::<String>())
        .unwrap();
    let task = format!(
        r#"name = "tiny"
base_model = "{model}"
reference_score = 1.0
dataset_dir = "data"

[splits]
train = "train.jsonl"
validation = "validation.jsonl"
test = "test.jsonl"

[prompt]
max_new_tokens = 1
batch_size = 4

[evaluator]
plugin = "exact-match"
metric = "accuracy"

[budget]
nodes = 3

[start]
rationale = "start"

[start.train_recipe]
{start_recipe}

[[start.data_recipe.steps]]
plugin = "chat-format"

[search_space]
learning_rate = {{ min = 1e-3, max = 5e-2, log = true }}
lora_rank = [4, 8]
epochs = [1.0, 2.0, 4.0, 40.0]
targets = [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]

[[search_space.data_steps]]
plugin = "dedup-exact"
{extra}
"#,
        model = model.display()
    );
    let task_path = dir.path().join("task/task.toml");
    std::fs::write(&task_path, task).unwrap();
    Fixture { dir, plugins, task: task_path }
}

/// A data step that panics, offered to the Researcher (only where a test wants a node to fail).
const HOSTILE_STEP: &str = "\n[[search_space.data_steps]]\nplugin = \"hostile\"\nconfig = { attack = \"panic\" }\n";

/// A model a little bigger than the tiny one: with [`SLOW`], a node takes seconds to train.
pub(crate) fn slow_config() -> trex_model::LlamaConfig {
    trex_model::LlamaConfig {
        hidden: 128,
        intermediate: 256,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        ..trex_model::LlamaConfig::tiny()
    }
}

/// 40 epochs at batch 1.
pub(crate) const SLOW: &str = "lora_rank = 4\ntargets = [\"q_proj\", \"v_proj\"]\nlearning_rate = 1e-2\nepochs = 40.0\nbatch_size = 1\nmax_seq_len = 64";

pub(crate) const QUICK: &str = "lora_rank = 4\ntargets = [\"q_proj\", \"v_proj\"]\nlearning_rate = 1e-2\nepochs = 2.0\nbatch_size = 4\nmax_seq_len = 64";

fn host_config(dir: &Path) -> HostConfig {
    HostConfig {
        cache_dir: Some(trex_tests::root().join("target/test-component-cache")),
        scratch_root: Some(dir.join("scratch")),
        ..HostConfig::default()
    }
}

fn request(f: &Fixture, strategy: Strategy, run: &str) -> SearchRequest {
    let (task, task_file) = trex_lab::task::Task::load(&f.task, &trex_lab::task::LocalFiles).unwrap();
    SearchRequest {
        task,
        task_file,
        plugins: f.plugins.clone(),
        host: host_config(f.dir.path()),
        settings: Settings { strategy, ..Settings::default() },
        run_dir: Some(f.dir.path().join(run)),
        observer: std::sync::Arc::new(trex_lab::observer::Silent),
        experiment_cache: None,
    }
}

pub(crate) fn events(run_dir: &Path) -> Vec<Event> {
    Journal::read(run_dir).unwrap().into_iter().map(|e| e.event).collect()
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_runs_a_search_end_to_end() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    // Two more copies of the record answered `w32` make it the majority answer: it is the answer
    // of one validation record (v0) in 8, and of no test record.
    let train = f.task.parent().unwrap().join("data/train.jsonl");
    let mut text = std::fs::read_to_string(&train).unwrap();
    text.push_str(&"{\"prompt\":\"w12\",\"response\":\"w32\"}\n".repeat(2));
    std::fs::write(&train, text).unwrap();
    for strategy in [Strategy::Mcts, Strategy::AbMcts, Strategy::Greedy, Strategy::Sequential, Strategy::Random] {
        let name = strategy.as_str();
        let started = std::time::Instant::now();
        let (run_dir, summary): (PathBuf, SearchSummary) =
            search(request(&f, strategy, name)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        // Search time is measured, not summed twice: it cannot exceed the time that passed.
        let wall = started.elapsed().as_secs_f64();
        assert!(summary.seconds <= wall, "{name}: {} s of search time in {wall} s", summary.seconds);
        let failures: Vec<String> = events(&run_dir)
            .into_iter()
            .filter_map(|e| if let Event::Failed { error, .. } = e { Some(error) } else { None })
            .collect();
        assert_eq!((summary.nodes, summary.failed), (3, 0), "{name}: {summary:?} {failures:?}");
        assert!(summary.reason.contains("node budget"), "{name}: {}", summary.reason);
        let v = view(&run_dir).unwrap();
        assert!(v.final_result.is_some(), "{name}: the test split is scored at the end");
        let b = summary.baselines.clone().unwrap_or_else(|| panic!("{name}: no baselines"));
        assert_eq!(v.final_result.as_ref().unwrap().baselines.as_ref(), Some(&b), "{name}: journaled");
        assert_eq!((b.majority_answer.as_str(), b.majority_validation, b.majority_test), ("w32", 0.125, 0.0), "{name}");
        for s in [b.format_only_validation, b.format_only_test] {
            assert!((0.0..=1.0).contains(&s) && (s * 8.0).fract() == 0.0, "{name}: {s}");
        }
        assert!(v.nodes.iter().all(|n| n.status() == NodeStatus::Done), "{name}");
        let ev = events(&run_dir);
        for id in 0..4u64 {
            assert_eq!(count(&ev, |e| matches!(e, Event::Done { node, .. } if *node == id)), 1, "{name}: node {id}");
        }
        for n in &v.nodes[1..] {
            let r = n.result().unwrap();
            assert!(
                r.adapter.is_some() && run_dir.join(r.adapter.as_ref().unwrap()).join("adapter_config.json").is_file()
            );
            assert!(run_dir.join(format!("nodes/{}/evaluation.jsonl", n.id)).is_file());
            assert!(!n.lesson.is_empty());
        }
        let parents: Vec<u64> = v.nodes[1..].iter().map(|n| n.parent.unwrap()).collect();
        match strategy {
            Strategy::Sequential => assert_eq!(parents, vec![0, 1, 2], "sequential expands the latest node"),
            Strategy::Greedy => {
                for n in &v.nodes[1..] {
                    let best = v.nodes[..n.id as usize]
                        .iter()
                        .fold(None::<&trex_lab::tree::Node>, |b, m| match b {
                            Some(b) if b.score() >= m.score() => Some(b),
                            _ => Some(m),
                        })
                        .unwrap();
                    assert_eq!(n.parent, Some(best.id), "greedy expands the best node so far");
                }
            }
            Strategy::Mcts | Strategy::AbMcts => assert_eq!(parents[0], 0),
            Strategy::Random => {}
        }
        let text = trex_cli::render::render_tree(&v);
        assert!(text.contains("#0 ") && text.contains("#3 ") && text.contains("test split"), "{text}");
        assert!(text.contains("majority answer \"w32\" 0.125 / 0.000"), "{text}");
    }
}

pub(crate) fn trex_host(f: &Fixture) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trex-host"));
    // Each fixture its own cache: nothing a test trains is served to another.
    c.env("TREX_CACHE_DIR", f.dir.path().join("cache"));
    c.arg("--plugins").arg(&f.plugins).arg("--cache-dir").arg(trex_tests::root().join("target/test-component-cache"));
    c
}

pub(crate) fn output(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn sigkill_mid_node_then_resume_loses_and_repeats_nothing() {
    trex_tests::build_plugins();
    // A model big enough, and a recipe long enough, that a node takes seconds to train.
    let f = fixture(40, SLOW, "", slow_config());
    let run_dir = f.dir.path().join("run");
    let mut child = trex_host(&f)
        .args(["search", "--strategy", "sequential", "--nodes", "3", "--run-dir"])
        .arg(&run_dir)
        .arg(&f.task)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until node 2 is running, then kill the process without warning.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let started = Journal::path_in(&run_dir).is_file()
            && events(&run_dir).iter().any(|e| matches!(e, Event::Started { node: 2 }));
        if started {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 2 never started");
        assert!(child.try_wait().unwrap().is_none(), "the search ended before node 2 started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = events(&run_dir);
    assert_eq!(
        count(&before, |e| matches!(e, Event::Done { node: 2, .. })),
        0,
        "node 2 must have been interrupted (training took less than half a second?)"
    );
    let (ok, stdout, err) = output(trex_host(&f).arg("resume").arg(&run_dir));
    assert!(ok, "{err}");
    assert!(stdout.contains("best adapter") || stdout.contains("no experiment beat"), "{stdout}");
    assert!(err.contains("resuming: running again the interrupted node(s) [2]"), "{err}");
    let after = events(&run_dir);
    for id in [0u64, 1] {
        assert_eq!(count(&after, |e| matches!(e, Event::Started { node } if *node == id)), 1, "node {id} ran twice");
        assert_eq!(count(&after, |e| matches!(e, Event::Done { node, .. } if *node == id)), 1, "node {id}");
    }
    assert_eq!(count(&after, |e| matches!(e, Event::Started { node: 2 })), 2, "the interrupted node runs again");
    assert_eq!(count(&after, |e| matches!(e, Event::Done { node: 2, .. })), 1);
    assert_eq!(count(&after, |e| matches!(e, Event::Created { .. })), 4, "3 experiments and the root, as budgeted");
    assert_eq!(count(&after, |e| matches!(e, Event::Session { resumed: true })), 1);
    assert_eq!(count(&after, |e| matches!(e, Event::Final { .. })), 1);
    // `show` reads the finished run.
    let (ok, stdout, err) = output(trex_host(&f).arg("show").arg(&run_dir));
    assert!(ok && stdout.contains("#3 "), "{stdout}{err}");
    // Each trained node says where its seconds went.
    let breakdown = stdout
        .lines()
        .filter(|l| {
            l.contains("data ")
                && l.contains(" s · training ")
                && l.contains(" s · answers ")
                && l.contains(" s · scoring ")
        })
        .count();
    assert!(breakdown >= 3, "a stage breakdown per experiment: {stdout}");
    let (ok, stdout, _) = output(trex_host(&f).args(["show", "--json"]).arg(&run_dir));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(ok && v["nodes"].as_array().unwrap().len() == 4);
}

pub(crate) fn proposal(lr: f64, steps: &str) -> String {
    format!(
        r#"{{"proposals": [{{"data_recipe": {{"steps": [{{"plugin": "chat-format"}}{steps}]}}, "train_recipe": {{"lora_rank": 4, "targets": ["q_proj", "v_proj"], "learning_rate": {lr}, "epochs": 1.0, "batch_size": 4, "max_seq_len": 64}}, "rationale": "scripted"}}]}}"#
    )
}

/// A scripted LLM server whose first four replies answer the check `search` makes of a server
/// before it spends any budget (one request per structured-output format), then `script`.
pub(crate) fn llm_server_for_search(script: Vec<trex_tests::llm_server::Reply>) -> trex_tests::llm_server::Server {
    let mut replies: Vec<_> = (0..4).map(|_| completion("{\"ok\": true}", 1, 1)).collect();
    replies.extend(script);
    start(replies)
}

pub(crate) fn llm_section(base_url: &str) -> String {
    format!(
        "[researcher]\nplugin = \"llm\"\n\n[llm]\nbase_url = \"{base_url}\"\nmodel = \"scripted\"\napi_key_env = \"TREX_TEST_LLM_KEY\"\ntimeout_s = 5.0\nmax_retries = 0\nbackoff_ms = 1\n"
    )
}

#[test]
fn an_llm_server_that_resets_or_answers_html_costs_a_round_and_the_search_goes_on() {
    trex_tests::build_plugins();
    let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    let mut script =
        vec![trex_tests::llm_server::Reply::Reset, trex_tests::llm_server::Reply::Status(200, html.into())];
    script.extend((0..4).map(|_| completion(&proposal(1e-2, ""), 100, 20)));
    let server = llm_server_for_search(script);
    let f = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let (ok, stdout, err) = output(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "sk-test")
            .args(["search", "--nodes", "1", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{err}");
    let ev = events(&run_dir);
    let rejected: Vec<&String> =
        ev.iter().filter_map(|e| if let Event::Rejected { error, .. } = e { Some(error) } else { None }).collect();
    // Each failure costs its round (no retries configured), with the cause in the refusal.
    assert_eq!(rejected.len(), 2, "{stdout}");
    assert!(rejected[0].contains("the Researcher failed") && rejected[0].contains("could not connect or send"));
    assert!(rejected[1].contains("the reply is not JSON") && rejected[1].contains("502 Bad Gateway"), "{rejected:?}");
    assert_eq!(count(&ev, |e| matches!(e, Event::Done { node: 1, .. })), 1, "{rejected:?}\n{err}");
    assert_eq!(count(&ev, |e| matches!(e, Event::Final { .. })), 1);
}

#[test]
fn a_parent_adapter_corrupted_while_the_search_was_down_fails_its_child_with_the_file_named() {
    trex_tests::build_plugins();
    // Every round proposes the same recipe, continuing the parent's adapter: node 2 continues
    // node 1's (40 epochs at batch 1 on the slow model: seconds to train).
    let continuing = r#"{"proposals": [{"data_recipe": {"steps": [{"plugin": "chat-format"}]}, "train_recipe": {"lora_rank": 4, "targets": ["q_proj", "v_proj"], "learning_rate": 0.01, "epochs": 40.0, "batch_size": 1, "max_seq_len": 64, "continue_from_parent": true}, "rationale": "continue"}]}"#;
    let server = llm_server_for_search((0..8).map(|_| completion(continuing, 100, 20)).collect());
    let f = fixture(40, SLOW, &llm_section(&server.base_url), slow_config());
    let run_dir = f.dir.path().join("run");
    let mut child = trex_host(&f)
        .env("TREX_TEST_LLM_KEY", "sk-test")
        .args(["search", "--strategy", "sequential", "--nodes", "2", "--no-experiment-cache", "--run-dir"])
        .arg(&run_dir)
        .arg(&f.task)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !(Journal::path_in(&run_dir).is_file()
        && events(&run_dir).iter().any(|e| matches!(e, Event::Started { node: 2 })))
    {
        assert!(std::time::Instant::now() < deadline, "node 2 never started");
        assert!(child.try_wait().unwrap().is_none(), "the search ended before node 2 started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL while node 2 trains
    child.wait().unwrap();
    let v = view(&run_dir).unwrap();
    assert!(v.nodes[2].proposal.as_ref().unwrap().train_recipe.continue_from_parent);
    assert_eq!(v.nodes[2].parent, Some(1));
    let weights = run_dir.join("nodes/1/adapter/adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap(); // torn on disk
    let resume = || output(trex_host(&f).env("TREX_TEST_LLM_KEY", "sk-test").arg("resume").arg(&run_dir));
    let (ok, stdout, err) = resume();
    // The child fails with the damaged file named; the search goes on to its end, where node 1,
    // the best, cannot be scored on the test split: a clear stop, with what to do.
    let ev = events(&run_dir);
    let error = ev
        .iter()
        .find_map(|e| if let Event::Failed { node: 2, error, .. } = e { Some(error.clone()) } else { None })
        .unwrap_or_else(|| panic!("node 2 fails: {stdout}{err}"));
    assert!(error.contains("parent adapter") && error.contains("nodes/1/adapter/adapter_model.safetensors"), "{error}");
    assert!(error.contains("damaged or truncated"), "{error}");
    assert_eq!(error.matches("adapter_model.safetensors").count(), 1, "the file is named once: {error}");
    assert!(!ok, "{stdout}");
    assert!(err.contains("scoring node 1 on the test split") && err.contains("restore its adapter"), "{err}");
    assert_eq!(count(&ev, |e| matches!(e, Event::Final { .. })), 0);
    // Restored, the run finishes, with nothing that had finished run again.
    std::fs::write(&weights, &bytes).unwrap();
    let (ok, stdout, err) = resume();
    assert!(ok, "{err}");
    let ev = events(&run_dir);
    assert_eq!(count(&ev, |e| matches!(e, Event::Final { .. })), 1, "{stdout}");
    for id in [1u64, 2] {
        let ends = count(&ev, |e| matches!(e, Event::Done { node, .. } | Event::Failed { node, .. } if *node == id));
        assert_eq!(ends, 1, "node {id}");
    }
}

#[test]
fn hostile_researcher_replies_are_refused_and_the_search_goes_on() {
    trex_tests::build_plugins();
    let server = llm_server_for_search(vec![
        // Round 1: prose instead of JSON, then an out-of-range learning rate.
        completion("I would raise the learning rate and train longer!", 100, 20),
        completion(&proposal(5.0, ""), 100, 20),
        // Round 2: a plugin the task does not offer, then an enormous reply.
        completion(&proposal(1e-2, r#", {"plugin": "rm-rf"}"#), 100, 20),
        completion(&"x".repeat(9 << 20), 100, 20),
        // Round 3: a valid proposal.
        completion(&proposal(1e-2, ""), 100, 20),
    ]);
    let f = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let (ok, stdout, err) = output(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "sk-test")
            .args(["search", "--nodes", "1", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("1 experiments") && stdout.contains("2 proposals refused"), "{stdout}");
    let ev = events(&run_dir);
    let rejected: Vec<&String> =
        ev.iter().filter_map(|e| if let Event::Rejected { error, .. } = e { Some(error) } else { None }).collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[0].contains("learning_rate"), "{}", rejected[0]);
    assert!(rejected[1].contains("bytes"), "{}", rejected[1]);
    assert!(err.contains("not a JSON object") && err.contains("rm-rf"), "the retried problems are logged: {err}");
    assert_eq!(count(&ev, |e| matches!(e, Event::Done { node: 1, .. })), 1);
    let all = server.requests.lock().unwrap();
    assert_eq!(all.len(), 9, "four to check the server, then five for the Researcher");
    let reqs = &all[4..];
    assert!(reqs[0].head.contains("authorization: bearer sk-test"), "{}", reqs[0].head);
    assert_eq!(reqs[0].body["response_format"]["type"], "json_schema");
    // The schema holds the task's choices: a server that decodes by it writes no other plugin,
    // config field or target set.
    let schema = &reqs[0].body["response_format"]["json_schema"]["schema"];
    let steps = schema.pointer("/$defs/DataRecipe/properties/steps/items/anyOf").unwrap().as_array().unwrap();
    let plugins: Vec<&str> = steps.iter().filter_map(|v| v.pointer("/properties/plugin/const")?.as_str()).collect();
    assert_eq!(plugins, ["chat-format", "dedup-exact"], "{schema}");
    assert_eq!(
        schema.pointer("/$defs/TrainRecipe/properties/targets/enum").unwrap(),
        &serde_json::json!([["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]])
    );
    // The retry carries the validation error back to the model.
    let retry = reqs[1].body["messages"].as_array().unwrap();
    assert!(retry.last().unwrap()["content"].as_str().unwrap().contains("invalid"), "{retry:?}");
}

#[test]
fn budgets_stop_the_search() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let run = |args: &[&str], name: &str| {
        let (ok, stdout, err) =
            output(trex_host(&f).arg("search").args(args).arg("--run-dir").arg(f.dir.path().join(name)).arg(&f.task));
        assert!(ok, "{err}");
        stdout
    };
    let out = run(&["--train-tokens", "1"], "tokens");
    assert!(out.contains("training-token budget") && out.contains("after 1 experiments"), "{out}");
    let out = run(&["--minutes", "0.00001"], "wall");
    assert!(out.contains("wall-time budget") && out.contains("after 0 experiments"), "{out}");
    // LLM tokens: each reply costs 1000; the budget of 1500 allows two proposals.
    let server = llm_server_for_search(vec![
        completion(&proposal(1e-2, ""), 900, 100),
        completion(&proposal(2e-2, ""), 900, 100),
    ]);
    let f2 = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let (ok, stdout, err) = output(
        trex_host(&f2)
            .env("TREX_TEST_LLM_KEY", "k")
            .args(["search", "--nodes", "10", "--llm-tokens", "1500", "--run-dir"])
            .arg(f2.dir.path().join("llm"))
            .arg(&f2.task),
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("LLM-token budget") && stdout.contains("after 2 experiments"), "{stdout}");
    assert!(!err.contains("resuming"), "a fresh search that probed its LLM first is no resumption: {err}");
    // No budget at all is refused up front.
    let mut no_budget = std::fs::read_to_string(&f.task).unwrap();
    no_budget = no_budget.replace("[budget]\nnodes = 3\n", "");
    std::fs::write(&f.task, no_budget).unwrap();
    let (ok, _, err) = output(trex_host(&f).arg("search").arg("--run-dir").arg(f.dir.path().join("none")).arg(&f.task));
    assert!(!ok && err.contains("no budget"), "{err}");
}

#[test]
fn a_plugin_failing_inside_a_node_fails_that_node_and_the_search_goes_on() {
    trex_tests::build_plugins();
    let server = llm_server_for_search(vec![
        completion(&proposal(1e-2, r#", {"plugin": "hostile", "config": {"attack": "panic"}}"#), 10, 10),
        completion(&proposal(1e-2, ""), 10, 10),
    ]);
    let extra = format!("{HOSTILE_STEP}{}", llm_section(&server.base_url));
    let f = fixture(40, QUICK, &extra, trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let (ok, stdout, err) = output(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "k")
            .args(["search", "--nodes", "2", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("2 experiments (1 failed"), "{stdout}");
    let v = view(&run_dir).unwrap();
    assert_eq!(v.nodes[1].status(), NodeStatus::Failed);
    let error = v.nodes[1].error().unwrap();
    assert!(error.contains("hostile") && error.contains("panic"), "{error}");
    assert!(v.nodes[1].lesson.contains("failed"), "the error is kept as a lesson");
    assert_eq!(v.nodes[2].status(), NodeStatus::Done);
}

#[test]
fn a_task_with_a_misspelled_field_fails_before_anything_runs() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let text = std::fs::read_to_string(&f.task)
        .unwrap()
        .replace("plugin = \"dedup-exact\"", "plugin = \"dedup-exact\"\nconfig = { feilds = [\"prompt\"] }");
    std::fs::write(&f.task, text).unwrap();
    let (ok, _, err) = output(trex_host(&f).arg("search").arg("--run-dir").arg(f.dir.path().join("r")).arg(&f.task));
    assert!(!ok && err.contains("search_space.data_steps[0]") && err.contains("feilds"), "{err}");
    assert!(!f.dir.path().join("r").exists(), "nothing was started");
    let text = std::fs::read_to_string(&f.task).unwrap().replace("reference_score", "refrence_score");
    std::fs::write(&f.task, text).unwrap();
    let (ok, _, err) = output(trex_host(&f).arg("search").arg(&f.task));
    assert!(!ok && err.contains("task.toml") && err.contains("refrence_score"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_nodes_at_once_within_one_budget() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let mut req = request(&f, Strategy::Mcts, "workers");
    req.settings.workers = 2;
    req.settings.budget.nodes = Some(4);
    let (run_dir, summary) = search(req).await.unwrap();
    assert_eq!((summary.nodes, summary.failed), (4, 0), "{summary:?}");
    let ev = events(&run_dir);
    // Two nodes were started before either finished.
    let pos = |f: &dyn Fn(&Event) -> bool| ev.iter().position(f).unwrap();
    let second_start = pos(&|e| matches!(e, Event::Started { node: 2 }));
    let first_done = pos(&|e| matches!(e, Event::Done { node: 1, .. }));
    assert!(second_start < first_done, "node 2 started after node 1 finished: {ev:?}");
    assert_eq!(count(&ev, |e| matches!(e, Event::Done { .. })), 5);
}

#[test]
fn ablations_switch_off_data_tools_memory_and_bad_cases() {
    trex_tests::build_plugins();
    // The scripted Researcher first asks for a data step, which the task offers but the
    // ablation does not, so the `llm` Researcher refuses it and asks again.
    let server = llm_server_for_search(vec![
        completion(&proposal(1e-2, r#", {"plugin": "dedup-exact"}"#), 100, 20),
        completion(&proposal(1e-2, ""), 100, 20),
        completion(&proposal(2e-2, ""), 100, 20),
    ]);
    let f = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let (ok, _, err) = output(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "sk-test")
            .args(["search", "--nodes", "2", "--ablate", "data-tools,memory,bad-cases", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{err}");
    let ev = events(&run_dir);
    let recipes: Vec<Vec<String>> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Created { proposal: Some(p), .. } => {
                Some(p.data_recipe.steps.iter().map(|s| s.plugin.clone()).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(recipes, vec![vec!["chat-format".to_string()]; 2], "every node keeps the start's data recipe: {ev:?}");
    let all = server.requests.lock().unwrap();
    assert_eq!(all.len(), 7, "four to check the server, then three for the Researcher");
    let reqs = &all[4..];
    let text = |i: usize| reqs[i].body["messages"].to_string();
    // No data steps are offered, and the second round's context holds only the node expanded.
    assert!(!text(0).contains("dedup-exact") && !text(0).contains("hostile"), "{}", text(0));
    assert!(text(1).contains("`dedup-exact` is not offered"), "{}", text(1));
    for part in
        [r#"\"siblings\":[]"#, r#"\"best\":[]"#, r#"\"worst\":[]"#, r#"\"parent_path\":[]"#, r#"\"bad_cases\":[]"#]
    {
        assert!(text(2).contains(part), "{part} missing from {}", text(2));
    }
}

#[test]
fn bench_search_compares_each_ablation_with_the_full_system_and_reuses_finished_runs() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let out = f.dir.path().join("bench");
    let bench = || {
        output(
            trex_host(&f)
                .args([
                    "bench",
                    "search",
                    "--strategies",
                    "greedy",
                    "--ablate",
                    "memory",
                    "--seeds",
                    "0",
                    "--nodes",
                    "1",
                ])
                .arg("--out")
                .arg(&out)
                .arg(&f.task),
        )
    };
    let (ok, stdout, err) = bench();
    assert!(ok, "{err}");
    assert!(stdout.contains("| greedy | 1 |") && stdout.contains("| greedy without memory | 1 |"), "{stdout}");
    let settings = |folder: &str| match &events(&out.join(folder))[0] {
        Event::Start { settings, .. } => settings.ablations.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(settings("greedy-s0"), vec![]);
    assert_eq!(settings("greedy-no-memory-s0"), vec![trex_lab::Ablation::Memory]);
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("greedy without memory"), "{table}");
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("Runs side by side") && report.contains("greedy-no-memory-s0"), "both runs, compared");
    // A second call finds both runs finished and runs nothing.
    let journal = std::fs::read_to_string(out.join("greedy-s0/journal.jsonl")).unwrap();
    let (ok, again, err) = bench();
    assert!(ok, "{err}");
    assert_eq!(again, stdout);
    assert_eq!(std::fs::read_to_string(out.join("greedy-s0/journal.jsonl")).unwrap(), journal);
}

#[test]
fn bench_tasks_tabulates_and_plots_every_task_and_strategy_and_reuses_finished_runs() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    // A second task: the same data under another name.
    let second = f.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let toml = std::fs::read_to_string(&f.task).unwrap().replace("name = \"tiny\"", "name = \"tiny-two\"");
    let data = f.task.parent().unwrap().join("data");
    std::fs::write(
        second.join("task.toml"),
        toml.replace("dataset_dir = \"data\"", &format!("dataset_dir = {:?}", data.display().to_string())),
    )
    .unwrap();
    let out = f.dir.path().join("suite");
    let bench = || {
        output(
            trex_host(&f)
                .args([
                    "bench",
                    "tasks",
                    "--strategies",
                    "greedy,sequential",
                    "--seeds",
                    "0",
                    "--budget",
                    "1",
                    "--tasks",
                ])
                .arg(format!("{},{}", f.task.display(), second.display()))
                .arg("--out")
                .arg(&out),
        )
    };
    let (ok, stdout, err) = bench();
    assert!(ok, "{err}");
    for row in [
        "| tiny | greedy | 1 |",
        "| tiny | sequential | 1 |",
        "| tiny-two | greedy | 1 |",
        "| tiny-two | sequential | 1 |",
    ] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let runs = results.as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        // The base model, then one experiment; the best score never goes down.
        let curve: Vec<f64> = r["curve"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(curve.len(), 2, "{r}");
        assert!(curve[1] >= curve[0], "{r}");
        assert_eq!(r["base_validation"].as_f64().unwrap(), curve[0]);
        assert!(r["train_tokens"].as_u64().unwrap() > 0, "{r}");
    }
    let svg = std::fs::read_to_string(out.join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
    assert!(svg.contains(">tiny-two<") && svg.contains(">sequential<"), "{svg}");
    // The no-model baselines sit beside the scores: every answer is seen once in training, so
    // the majority answer is the first in text order, `w30`, which no held-out record has.
    assert!(stdout.contains("majority / format-only test"), "{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with("| tiny")) {
        assert!(line.contains("| 0.000 / "), "{line}");
    }
    assert_eq!(std::fs::read_to_string(out.join("table.md")).unwrap(), stdout);
    // A second call finds every run finished and runs nothing.
    let journal = std::fs::read_to_string(out.join("tiny-two/greedy-s0/journal.jsonl")).unwrap();
    let (ok, again, err) = bench();
    assert!(ok, "{err}");
    assert_eq!(again, stdout);
    assert_eq!(std::fs::read_to_string(out.join("tiny-two/greedy-s0/journal.jsonl")).unwrap(), journal);
}

/// A reply of the `llm` Researcher proposing one experiment per (training recipe, rationale).
fn proposals(recipes: &[(&str, &str)]) -> String {
    let list: Vec<String> = recipes
        .iter()
        .map(|(r, rationale)| {
            format!(
                r#"{{"data_recipe": {{"steps": [{{"plugin": "chat-format"}}]}}, "train_recipe": {r}, "rationale": {}}}"#,
                serde_json::Value::from(*rationale)
            )
        })
        .collect();
    format!(r#"{{"proposals": [{}]}}"#, list.join(", "))
}

/// Run `cmd` to its end, sampling its resident memory; its output and its peak in MiB.
fn output_and_peak(cmd: &mut Command) -> ((bool, String, String), f64) {
    use std::io::Read;
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        (o, e)
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0.0f64;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        let rss = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("VmRSS:").map(str::to_string)))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        peak = peak.max(rss / 1024.0);
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (o, e) = reader.join().unwrap();
    ((status.success(), o, e), peak)
}

#[test]
fn recipes_that_would_exhaust_the_host_are_refused_and_journaled_with_the_reason() {
    trex_tests::build_plugins();
    let ok = r#"{"lora_rank": 4, "targets": ["q_proj", "v_proj"], "learning_rate": 0.01, "epochs": 1.0, "batch_size": 4, "max_seq_len": 64}"#;
    let with = |field: &str, value: &str| ok.replacen('{', &format!("{{\"{field}\": {value}, "), 1);
    let huge_batch = with("batch_size", "4294967295").replace(", \"batch_size\": 4", "");
    let huge_tokens = with("max_seq_len", "32768")
        .replace(", \"max_seq_len\": 64", "")
        .replace("\"batch_size\": 4", "\"batch_size\": 1024");
    let long_why = "why ".repeat(500_000);
    let server = llm_server_for_search(vec![
        completion(
            &proposals(&[
                (&huge_batch, "scripted"),
                (&with("lora_alpha", "3.4e38"), "scripted"),
                (&with("weight_decay", "-1e300"), "scripted"),
            ]),
            100,
            20,
        ),
        completion(
            &proposals(&[(&with("grad_clip", "-1"), "scripted"), (&huge_tokens, "scripted"), (ok, &long_why)]),
            100,
            20,
        ),
        completion(&proposals(&[(ok, "a sane one")]), 100, 20),
    ]);
    let f = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let ((ok, stdout, err), peak) = output_and_peak(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "sk-test")
            .args(["search", "--nodes", "1", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "the host survives: {err}");
    assert!(stdout.contains("1 experiments") && stdout.contains("2 proposals refused"), "{stdout}");
    assert!(peak < 1500.0, "the host's memory stayed bounded: {peak:.0} MiB");
    let ev = events(&run_dir);
    let rejected: Vec<&String> =
        ev.iter().filter_map(|e| if let Event::Rejected { error, .. } = e { Some(error) } else { None }).collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for (round, field) in [
        (0, "batch_size 4294967295 is outside [1, 1024]"),
        (0, "lora_alpha 3.400e38 is outside [0.001, 4096]"),
        (0, "weight_decay -1.000e300 is outside [0, 1]"),
        (1, "grad_clip -1 is outside"),
        (1, "tokens per batch needs about"),
        (1, "more than the 8192 a proposal may take"),
    ] {
        assert!(rejected[round].contains(field), "round {round}: `{field}` in {}", rejected[round]);
    }
    // Nothing refused ever became a node: the journal holds only the sane one.
    assert_eq!(count(&ev, |e| matches!(e, Event::Created { node: 1, .. })), 1);
    assert_eq!(count(&ev, |e| matches!(e, Event::Created { .. })), 2);
    assert_eq!(count(&ev, |e| matches!(e, Event::Done { node: 1, .. })), 1);
}

#[test]
fn a_search_whose_llm_answers_nothing_stops_before_spending_any_budget() {
    trex_tests::build_plugins();
    let server = start(vec![trex_tests::llm_server::Reply::Status(404, "{\"error\": \"not found\"}".into()); 4]);
    let f = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let (ok, _, err) = output(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "sk-test")
            .args(["search", "--nodes", "2", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(!ok);
    assert!(err.contains("answered none of the test requests") && err.contains("trex-host llm check"), "{err}");
    assert!(!run_dir.exists(), "no run folder, no node, no budget spent");
    assert_eq!(server.requests.lock().unwrap().len(), 4, "one request per format, nothing more");
}

#[test]
fn llm_check_reports_what_a_server_supports() {
    trex_tests::build_plugins();
    let llama_cpp =
        r#"{"detail":[{"loc":["body","response_format","type"],"msg":"Input should be 'text' or 'json_object'"}]}"#;
    let server = start(vec![
        trex_tests::llm_server::Reply::Status(500, llama_cpp.into()),
        completion("{\"ok\": true}", 3, 2),
        completion("{\"ok\": true}", 3, 2),
        completion("ok", 3, 2),
    ]);
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let (ok, stdout, err) =
        output(trex_host(&f).args(["llm", "check", "--llm-base-url", &server.base_url, "--llm-model", "m"]));
    assert!(ok, "{err}");
    assert!(stdout.contains("json_schema") && stdout.contains("refused"), "{stdout}");
    assert!(stdout.contains("trex uses: json_object + schema"), "{stdout}");
    assert!(stdout.contains("token usage: reported"), "{stdout}");
}

/// Append a custom section to a component: the plugin behaves the same, but its bytes (and so
/// its hash) change.
fn touch_component(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.extend_from_slice(&[0x00, 0x06, 0x04, b't', b'r', b'e', b'x', b'!']);
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_experiment_cache_serves_repeats_without_training_and_misses_changed_inputs() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let cache = f.dir.path().join("experiments");
    let cached = |run: &str| {
        let mut r = request(&f, Strategy::Greedy, run);
        r.experiment_cache = Some(cache.clone());
        r
    };
    let (_, first) = search(cached("first")).await.unwrap();
    assert!(first.train_tokens > 0 && first.nodes == 3, "{first:?}");
    // The same search again: nothing trains, and the tree and its scores are the same.
    let (dir, again) = search(cached("again")).await.unwrap();
    assert_eq!(again.train_tokens, 0, "every experiment came from the cache: {again:?}");
    assert_eq!(
        (again.best, again.best_validation, again.best_test),
        (first.best, first.best_validation, first.best_test)
    );
    let v = view(&dir).unwrap();
    assert!(v.nodes.iter().all(|n| n.result().is_some_and(|r| r.cost.cached)), "{:?}", v.nodes);
    for n in &v.nodes[1..] {
        let adapter = dir.join(n.result().unwrap().adapter.as_ref().unwrap());
        assert!(adapter.join("adapter_config.json").is_file(), "the run keeps its own copy of {}", adapter.display());
    }
    let trained = |dir: &Path| -> Vec<bool> {
        view(dir).unwrap().nodes.iter().map(|n| n.result().is_some_and(|r| !r.cost.cached)).collect()
    };
    // Another training recipe: the base model's scores are served, the experiments run.
    let task = std::fs::read_to_string(&f.task).unwrap();
    std::fs::write(&f.task, task.replace("learning_rate = 1e-2", "learning_rate = 2e-2")).unwrap();
    let (dir, _) = search(cached("recipe")).await.unwrap();
    let t = trained(&dir);
    assert!(!t[0] && t[1], "a changed recipe misses, the base model does not: {t:?}");
    std::fs::write(&f.task, &task).unwrap();
    // Other training data: every experiment runs again.
    let train = f.task.parent().unwrap().join("data/train.jsonl");
    let mut data = std::fs::read_to_string(&train).unwrap();
    data.push_str("{\"id\":\"extra\",\"prompt\":\"w1\",\"response\":\"w21\",\"tags\":[\"t1\"]}\n");
    std::fs::write(&train, &data).unwrap();
    let (dir, _) = search(cached("data")).await.unwrap();
    assert!(trained(&dir)[1..].iter().all(|t| *t), "changed training data misses: {:?}", trained(&dir));
    // Another evaluator component: everything is scored again, the base model included.
    let wasm = f.plugins.join("exact-match/exact_match.wasm");
    touch_component(&wasm);
    let (dir, _) = search(cached("evaluator")).await.unwrap();
    assert!(trained(&dir).iter().all(|t| *t), "a changed evaluator misses: {:?}", trained(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_gives_the_same_table_twice_from_the_same_seeds() {
    use trex_cli::bench::replay::{Arm, ReplayPlan, replay, replay_table, score_table};
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let cache = f.dir.path().join("experiments");
    let cached = |strategy: Strategy, run: &str| {
        let mut r = request(&f, strategy, run);
        r.experiment_cache = Some(cache.clone());
        r.settings.budget.nodes = Some(4);
        r
    };
    for s in [Strategy::Mcts, Strategy::Greedy, Strategy::Random] {
        search(cached(s, s.as_str())).await.unwrap();
    }
    let req = cached(Strategy::Mcts, "unused");
    let scored = score_table(&req, &cache, |_, _| {}).await.unwrap();
    assert!(scored >= 4, "every experiment without a test score is scored: {scored}");
    assert_eq!(score_table(&req, &cache, |_, _| {}).await.unwrap(), 0, "and only once");
    let arms: Vec<Arm> =
        ["mcts", "ab-mcts", "greedy", "random-researcher"].iter().map(|a| Arm::from_name(a).unwrap()).collect();
    let plan = ReplayPlan { arms, seeds: 4, budgets: vec![2, 4], fraction: 0.75, train_seeds: vec![0] };
    let (stats, a) = replay(&req, &cache, &plan, &f.dir.path().join("replay-a"), |_, _| {}).await.unwrap();
    let (_, b) = replay(&req, &cache, &plan, &f.dir.path().join("replay-b"), |_, _| {}).await.unwrap();
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap(), "a replay is deterministic");
    assert_eq!(a.len(), 4 * 2 * 4);
    assert!(stats.experiments >= 5 && stats.base_test.is_some(), "{stats:?}");
    for r in &a {
        assert!(r.regret >= -1e-9 && r.nodes as u64 <= r.budget, "{r:?}");
    }
    assert!(a.iter().any(|r| r.nodes > 1), "replays grow trees from the table: {a:?}");
    let table = replay_table(&stats, &plan, &a);
    assert!(table.contains("| 4 | mcts |") && table.contains("| 2 | random-researcher |"), "{table}");
    // Without a table there is nothing to replay, and the error says what to do.
    let empty = f.dir.path().join("empty");
    let err = replay(&req, &empty, &plan, &f.dir.path().join("replay-c"), |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("bench table"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_choice_rescores_the_best_nodes_on_the_whole_validation_split() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let task = std::fs::read_to_string(&f.task).unwrap();
    std::fs::write(&f.task, task.replacen("max_new_tokens = 1\n", "max_new_tokens = 1\nvalidation_limit = 4\n", 1))
        .unwrap();
    let mut req = request(&f, Strategy::Greedy, "run");
    req.experiment_cache = Some(f.dir.path().join("experiments"));
    let (dir, summary) = search(req).await.unwrap();
    let v = view(&dir).unwrap();
    let fin = v.final_result.unwrap();
    assert_eq!(fin.rescored.len(), 3, "the three best of three experiments: {fin:?}");
    let top = fin.rescored.iter().map(|(_, s)| *s).fold(f64::NEG_INFINITY, f64::max);
    let chosen = fin.rescored.iter().find(|(id, _)| *id == fin.best).expect("the chosen node is one of them");
    assert_eq!(chosen.1, top, "the best on the whole split is chosen: {fin:?}");
    assert_eq!(summary.best, fin.best);
    for n in &v.nodes[1..] {
        assert_eq!(n.result().unwrap().total, 4, "nodes are scored on the first 4 validation records");
    }
    let text = trex_cli::render::render_tree(&trex_lab::run::view(&dir).unwrap());
    assert!(text.contains("whole validation split"), "{text}");
}

#[test]
fn proposals_outside_the_search_space_are_refused_naming_the_field_and_the_allowed_values() {
    trex_tests::build_plugins();
    let with = |from: &str, to: &str| proposal(1e-2, "").replace(from, to);
    let server = llm_server_for_search(vec![
        completion(&with("\"epochs\": 1.0", "\"epochs\": 3.0"), 10, 10),
        completion(&proposal(1e-2, ""), 10, 10),
    ]);
    let f = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let (ok, _, err) = output(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "k")
            .args(["search", "--nodes", "1", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{err}");
    let rejected: Vec<String> = events(&run_dir)
        .into_iter()
        .filter_map(|e| if let Event::Rejected { error, .. } = e { Some(error) } else { None })
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("epochs 3 is not one of [1.0, 2.0, 4.0, 40.0]"), "{}", rejected[0]);
    assert_eq!(count(&events(&run_dir), |e| matches!(e, Event::Done { node: 1, .. })), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_stopping_stops_a_run_clearly_worse_than_its_sibling_and_spares_its_evaluation() {
    use trex_lab::early_stop::{EarlyStop, Yardstick};
    use trex_sdk::types::FailureKind;
    trex_tests::build_plugins();
    // 40 examples in batches of 4 for 2 epochs: 20 steps.
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let req = request(&f, Strategy::Mcts, "lab");
    let run_dir = f.dir.path().join("lab");
    let (lab, ..) = trex_lab::run::open_lab(&req, run_dir.clone()).await.unwrap();
    let sibling =
        |loss: f32| Some(EarlyStop { siblings: vec![Yardstick { node: 1, steps: 20, curve: vec![loss; 20] }] });
    let failure = lab.run_node(2, &req.task.start, None, 0.0, sibling(0.0)).await.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Stopped, "{}", failure.error);
    assert!(failure.error.contains("step 5 of 20") && failure.error.contains("#1"), "{}", failure.error);
    assert!(failure.cost.train_tokens > 0, "what it trained is counted: {:?}", failure.cost);
    assert_eq!(failure.cost.share, Some(0.25), "a node budget charges it a quarter of an experiment");
    assert!(!run_dir.join("nodes/2/adapter").exists(), "a stopped run keeps no adapter");
    assert!(!run_dir.join("nodes/2/evaluation.jsonl").exists(), "and is not evaluated");
    // Against a sibling that did far worse, the same experiment trains to the end.
    let done = lab.run_node(3, &req.task.start, None, 0.0, sibling(100.0)).await.unwrap();
    let train = done.train.as_ref().unwrap();
    assert_eq!(train.steps, 20);
    assert_eq!(done.cost.share, None, "a whole experiment");
    assert!(train.tokens > 3 * failure.cost.train_tokens, "{} against {}", train.tokens, failure.cost.train_tokens);
    assert!(run_dir.join("nodes/3/evaluation.jsonl").is_file());
}
