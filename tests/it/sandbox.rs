//! The holes around the sandbox, closed: each case is an attack that once killed, stalled or
//! escaped the host. Each asserts that the host survives (it serves the next call), that the
//! error names the plugin and the limit, that nothing changes outside the sandbox, and that the
//! host's memory stays bounded (sampled while the attack runs).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use trex_plugin_host::{
    CallEnv, Capabilities, DataToolRun, EvalItem, HostConfig, PluginError, PluginHost, TokenCounter,
};
use trex_tests::llm_server::{self, Reply};

use crate::hostile::{attack, names_plugin, sandbox, sandbox_with, still_healthy};
use crate::test_config;

/// One memory-measuring test at a time, so that the resident size sampled is this test's.
pub(crate) static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Samples the process's resident memory every few milliseconds until [`Sampler::peak`].
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl Sampler {
    pub(crate) fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib());
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            peak.max(rss_mib())
        });
        Sampler { stop, thread }
    }

    /// Stop sampling; the highest resident size seen, in MiB.
    pub(crate) fn peak(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Run `fut`, sampling the process's resident memory every few milliseconds; returns its output
/// and the peak growth over the resident size before it, in MiB.
async fn peak_growth<T>(fut: impl std::future::Future<Output = T>) -> (T, f64) {
    let base = rss_mib();
    let sampler = Sampler::start();
    let out = fut.await;
    (out, (sampler.peak() - base).max(0.0))
}

/// Printable text: no escape character, carriage return or other control character except the
/// host's own line breaks.
fn assert_printable(text: &str) {
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "raw control characters reach the terminal: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_tiny_records_are_charged_what_they_cost_the_host() {
    let _one = MEMORY.lock().await;
    let s = sandbox().await;
    let (err, growth) = peak_growth(attack(&s, json!({"attack": "tiny-records"}))).await;
    let err = err.unwrap_err();
    assert!(matches!(err, PluginError::Output { limit_mib: 4, .. }), "{err}");
    assert!(names_plugin(&err).contains("output limit of 4 MiB"));
    // 4 MiB at 66 bytes a record is about 64 000 records; counted at 2 bytes each it was two
    // million, ten times the memory.
    assert!(growth < 150.0, "host memory grew {growth:.0} MiB");
    still_healthy(&s).await;
}

const SCRATCH_LIMITS: &str = "scratch_mib = 8\nscratch_files = 300\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_has_a_quota_on_files_and_bytes() {
    let _one = MEMORY.lock().await;
    let s = sandbox_with(Capabilities { dataset: true, scratch: true, llm: false }, SCRATCH_LIMITS).await;
    let (err, growth) = peak_growth(attack(&s, json!({"attack": "scratch-files"}))).await;
    let err = err.unwrap_err();
    assert!(matches!(err, PluginError::Scratch { limit: 300, .. }), "{err}");
    assert!(names_plugin(&err).contains("scratch quota of 300 files"), "{err}");
    assert!(growth < 100.0, "host memory grew {growth:.0} MiB");
    still_healthy(&s).await;
    let (err, growth) = peak_growth(attack(&s, json!({"attack": "scratch-bytes"}))).await;
    let err = err.unwrap_err();
    assert!(matches!(err, PluginError::Scratch { limit: 8_388_608, .. }), "{err}");
    assert!(names_plugin(&err).contains("scratch quota of 8388608 bytes"), "{err}");
    assert!(growth < 100.0, "host memory grew {growth:.0} MiB");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_is_private_fresh_and_removed_so_planted_and_left_links_go_nowhere() {
    let s = sandbox().await;
    // Someone plants a link where a predictable scratch folder would be, pointing outside.
    std::os::unix::fs::symlink(s.outside(), s.scratch().join("hostile")).unwrap();
    let out = attack(&s, json!({"attack": "write-file", "path": "/scratch/authorized_keys", "content": "evil"})).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out.unwrap()[0]).unwrap()["read_back"], "evil");
    assert!(!s.outside().join("authorized_keys").exists(), "the write did not follow the planted link");
    std::fs::remove_file(s.scratch().join("hostile")).unwrap();
    // Links a plugin makes inside its scratch are removed with it, not left for others.
    let out = attack(&s, json!({"attack": "scratch-links"})).await.unwrap();
    assert!(out[0].contains("\"links\":2"), "{out:?}");
    still_healthy(&s).await;
}

/// A host with the hostile plugin allowed scratch files and the LLM (through `client`), its
/// calls under a deadline of `timeout_ms`, its scratch folders under `dir/scratch`.
async fn llm_scratch_host(
    dir: &Path,
    client: Arc<dyn trex_plugin_host::llm::LlmClient>,
    timeout_ms: u64,
) -> PluginHost {
    let limits = format!("[capabilities]\nscratch = true\nllm = true\n[limits]\ntimeout_ms = {timeout_ms}\n");
    let manifest = trex_tests::manifest("hostile", "data-tool", "hostile", &limits);
    let path = trex_tests::install(&dir.join("plugins"), "hostile", "hostile", &manifest);
    let config = HostConfig { llm: Some(client), ..test_config(dir.join("scratch")) };
    let mut host = PluginHost::new(config).unwrap();
    host.load(&path).await.unwrap();
    host
}

/// One call of the hostile plugin's scratch rendezvous: it writes `who` to a scratch file, asks
/// the LLM, and reports what it reads back and sees.
async fn rendezvous(host: &PluginHost, who: &str) -> Result<DataToolRun, PluginError> {
    let config = json!({"attack": "scratch-rendezvous", "content": who});
    host.run_data_tool("hostile", &config, vec!["{}".into()], &CallEnv::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_side_by_side_run_at_once_each_with_its_own_scratch() {
    let server = llm_server::start(vec![
        Reply::Barrier(2, llm_server::completion_body("met", 1, 1)),
        Reply::Barrier(2, llm_server::completion_body("met", 1, 1)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let host = llm_scratch_host(dir.path(), crate::augment::llm_client(&server.base_url), 20000).await;
    // Each call waits at the LLM until the other arrives: one after another, neither would finish.
    let (a, b) = tokio::join!(rendezvous(&host, "first"), rendezvous(&host, "second"));
    for (run, who) in [(a, "first"), (b, "second")] {
        let seen: serde_json::Value = serde_json::from_str(&run.unwrap().records[0]).unwrap();
        assert_eq!(seen["read_back"], who, "each call reads back its own file");
        assert_eq!(seen["scratch"], json!(["mine.txt"]), "and sees no other call's");
        assert_eq!(seen["reply"], "met");
    }
}

/// A call killed by its deadline while it waits inside a host function (an LLM request) leaves
/// nothing behind: its scratch folder is removed, the abandoned request charges no tokens, the
/// host's client serves the next call at once, and the next call sees only its own scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_killed_inside_an_llm_request_leaks_nothing_into_the_next() {
    let server = llm_server::start(vec![
        Reply::Slow(std::time::Duration::from_secs(30), llm_server::completion_body("too late", 50, 50)),
        llm_server::completion("on time", 3, 4),
    ]);
    let client = crate::augment::llm_client(&server.base_url);
    let meter = client.meter().clone();
    let dir = tempfile::tempdir().unwrap();
    let host = llm_scratch_host(dir.path(), client, 1000).await;
    let scratch = dir.path().join("scratch");
    // The server holds its reply for 30 s; the call's 1 s deadline ends it first.
    let err = rendezvous(&host, "killed").await.unwrap_err();
    assert!(matches!(err, PluginError::Timeout { limit_ms: 1000, .. }), "the deadline is the reason: {err}");
    let left: Vec<_> = std::fs::read_dir(&scratch).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "the killed call's scratch folder is removed: {left:?}");
    assert_eq!(meter.spent(), 0, "a request abandoned before its reply charges nothing");
    let run = rendezvous(&host, "next").await.expect("the next call is served while the abandoned request still hangs");
    let seen: serde_json::Value = serde_json::from_str(&run.records[0]).unwrap();
    assert_eq!(seen["read_back"], "next");
    assert_eq!(seen["scratch"], json!(["mine.txt"]), "no file of the killed call is visible");
    assert_eq!(seen["reply"], "on time");
    assert_eq!(meter.spent(), 7, "only the answered request is charged");
    assert_eq!(server.requests.lock().unwrap().len(), 2);
}

/// A tokenizer that counts one token a text.
struct FastCounter;

impl TokenCounter for FastCounter {
    fn count(&self, _text: &str) -> usize {
        1
    }
}

/// A host with the hostile plugin (under the sandbox's limits) and `tokenizer`.
async fn hostile_host_with(dir: std::path::PathBuf, tokenizer: Arc<dyn TokenCounter>) -> PluginHost {
    let manifest = trex_tests::manifest("hostile", "data-tool", "hostile", crate::hostile::LIMITS);
    let path = trex_tests::install(&dir, "hostile", "hostile", &manifest);
    let config = HostConfig { tokenizer: Some(tokenizer), ..test_config(dir.join("s")) };
    let mut host = PluginHost::new(config).unwrap();
    host.load(&path).await.unwrap();
    host
}

/// A tokenizer that takes its time, as a real one does on a large input.
struct SlowCounter;

impl TokenCounter for SlowCounter {
    fn count(&self, _text: &str) -> usize {
        std::thread::sleep(std::time::Duration::from_millis(20));
        1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_side_token_counting_is_bounded_in_size_and_by_the_deadline() {
    let _one = MEMORY.lock().await;
    let mut s = sandbox().await;
    s.host = hostile_host_with(s.root.join("tok"), Arc::new(FastCounter)).await;
    let (err, growth) = peak_growth(attack(&s, json!({"attack": "count-tokens", "size": 60_000_000}))).await;
    let err = err.unwrap_err();
    assert!(names_plugin(&err).contains("more than the 1048576 a call may count"), "{err}");
    assert!(growth < 300.0, "host memory grew {growth:.0} MiB");
    still_healthy(&s).await;
    // 1000 texts at 20 ms each is 20 s of host work: the 1.5 s deadline stops it.
    s.host = hostile_host_with(s.root.join("tok2"), Arc::new(SlowCounter)).await;
    let err = attack(&s, json!({"attack": "count-many", "size": 1000})).await.unwrap_err();
    assert!(matches!(err, PluginError::Timeout { limit_ms: 1500, .. }), "{err}");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_that_spins_fails_alone_and_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let spin = std::fs::read_to_string(trex_tests::root().join("plugins/testing/spin-describe/plugin.toml")).unwrap();
    trex_tests::install(&plugins, "spin-describe", "spin_describe", &spin);
    let good = std::fs::read_to_string(trex_tests::root().join("plugins/dedup-exact/plugin.toml")).unwrap();
    trex_tests::install(&plugins, "dedup-exact", "dedup_exact", &good);
    let host = PluginHost::discover(&plugins, test_config(dir.path().join("s"))).await.unwrap();
    assert!(host.get("dedup-exact").is_some(), "the good plugin beside it loads");
    assert_eq!(host.failures().len(), 1);
    let err = &host.failures()[0].error;
    assert!(matches!(err, PluginError::Timeout { limit_ms: 2000, .. }), "describe() gets 2 s, not 60: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_file_must_be_a_regular_file_inside_the_plugin_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let secret = root.join("secret.txt");
    std::fs::write(&secret, "root:$6$do-not-print-me").unwrap();
    let outside_component = root.join("elsewhere.wasm");
    std::fs::copy(trex_tests::component("dedup_exact"), &outside_component).unwrap();
    let fifo = root.join("fifo.wasm");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut host = PluginHost::new(test_config(root.join("s"))).unwrap();
    for (folder, target, expect) in [
        ("zero", Path::new("/dev/zero"), "outside the plugin folder"),
        ("shadow", secret.as_path(), "outside the plugin folder"),
        ("component", outside_component.as_path(), "outside the plugin folder"),
        ("pipe", fifo.as_path(), "outside the plugin folder"),
    ] {
        let d = root.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(target, d.join("x.wasm")).unwrap();
        std::fs::write(d.join("plugin.toml"), trex_tests::manifest(folder, "data-tool", "x", "")).unwrap();
        let (err, growth) = peak_growth(host.load(&d.join("plugin.toml"))).await;
        let text = err.unwrap_err().to_string();
        assert!(text.contains(&format!("plugin `{folder}`")) && text.contains(expect), "{text}");
        assert!(!text.contains("do-not-print-me") && !text.contains("root:"), "no content leaks: {text}");
        assert!(growth < 100.0, "host memory grew {growth:.0} MiB");
    }
    // A pipe or device inside the folder is refused as well, without blocking on it.
    let d = root.join("inner-pipe");
    std::fs::create_dir_all(&d).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(d.join("x.wasm")).status().unwrap().success());
    std::fs::write(d.join("plugin.toml"), trex_tests::manifest("inner-pipe", "data-tool", "x", "")).unwrap();
    let text = host.load(&d.join("plugin.toml")).await.unwrap_err().to_string();
    assert!(text.contains("not a regular file"), "{text}");
    // A file that is not wasm is refused without quoting it.
    let d = root.join("text");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("x.wasm"), "root:$6$do-not-print-me").unwrap();
    std::fs::write(d.join("plugin.toml"), trex_tests::manifest("text", "data-tool", "x", "")).unwrap();
    let text = host.load(&d.join("plugin.toml")).await.unwrap_err().to_string();
    assert!(text.contains("magic number") && !text.contains("do-not-print-me") && !text.contains("root"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_text_reaches_the_terminal_escaped_and_bounded() {
    let _one = MEMORY.lock().await;
    let s = sandbox().await;
    let (err, growth) = peak_growth(attack(&s, json!({"attack": "forge", "size": 20_000_000}))).await;
    let err = err.unwrap_err();
    let text = names_plugin(&err);
    assert_printable(&text);
    assert!(text.contains("\\u{1b}]0;pwned") && text.contains("\\u{d}node 1 done"), "escapes are visible: {text}");
    assert!(text.len() < 20_000, "a 20 MB message is cut: {} bytes", text.len());
    assert!(growth < 300.0, "host memory grew {growth:.0} MiB");
    still_healthy(&s).await;
}

async fn evaluate_with(attack: &str, size: u64) -> (Result<trex_plugin_host::EvalReport, PluginError>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let manifest =
        std::fs::read_to_string(trex_tests::root().join("plugins/testing/hostile-evaluator/plugin.toml")).unwrap();
    let path = trex_tests::install(dir.path(), "hostile-evaluator", "hostile_evaluator", &manifest);
    let mut host = PluginHost::new(test_config(dir.path().join("s"))).unwrap();
    host.load(&path).await.unwrap();
    let items: Vec<EvalItem> =
        (0..8).map(|i| EvalItem { id: format!("e{i}"), example: json!({"answer": "a"}), output: "b".into() }).collect();
    let config = json!({"attack": attack, "size": size});
    peak_growth(host.evaluate("hostile-evaluator", &config, &items, 4, &CallEnv::default())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluator_verdicts_are_bounded_where_they_are_kept() {
    let _one = MEMORY.lock().await;
    let (report, growth) = evaluate_with("huge-tag", 8_000_000).await;
    let report = report.unwrap();
    assert!(report.results.iter().all(|r| r.tags.len() == 1 && r.tags[0].chars().count() < 120), "tags are cut");
    assert!(growth < 300.0, "host memory grew {growth:.0} MiB");
    let (report, _) = evaluate_with("many-tags", 5000).await;
    assert!(report.unwrap().results.iter().all(|r| r.tags.len() == 16), "at most 16 tags an example");
    let (report, _) = evaluate_with("huge-explanation", 8_000_000).await;
    assert!(report.unwrap().results.iter().all(|r| r.explanation.chars().count() < 1100), "explanations are cut");
    let (report, _) = evaluate_with("forge", 0).await;
    for r in report.unwrap().results {
        assert_printable(&r.tags[0]);
        assert_printable(&r.explanation);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_checked_as_the_host_will_read_them_back() {
    let s = sandbox().await;
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    for (record, why) in [
        ("{\"s\":\"\\ud800\"}".to_string(), "not valid JSON"),
        (deep, "not valid JSON"),
        ("{\"a\":\n1}".to_string(), "line break"),
    ] {
        let err = attack(&s, json!({"attack": "bad-record", "content": record})).await.unwrap_err();
        assert!(names_plugin(&err).contains(why), "{err}");
    }
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_overflows_and_exits_are_named_for_what_they_are() {
    let s = sandbox_with(Capabilities { dataset: true, scratch: true, llm: false }, "").await;
    let err = attack(&s, json!({"attack": "stack-overflow"})).await.unwrap_err();
    let text = names_plugin(&err);
    assert!(text.contains("stack overflow"), "{text}");
    assert!(text.lines().count() < 12, "no pages of wasm backtrace: {text}");
    let err = attack(&s, json!({"attack": "exit"})).await.unwrap_err();
    assert!(names_plugin(&err).contains("called exit(0) during the call instead of returning"), "{err}");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_are_refused_for_imports_and_kinds_the_host_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = PluginHost::new(test_config(dir.path().join("s"))).unwrap();
    for (folder, lib, expect) in [
        ("net-import", "net_import", "imports `wasi:http/outgoing-handler@0.3.0`, which trex does not provide"),
        ("liar-describe", "liar_describe", "describe() says it is an evaluator, but"),
    ] {
        let manifest =
            std::fs::read_to_string(trex_tests::root().join(format!("plugins/testing/{folder}/plugin.toml"))).unwrap();
        let path = trex_tests::install(dir.path(), folder, lib, &manifest);
        let text = host.load(&path).await.unwrap_err().to_string();
        assert!(text.contains(&format!("plugin `{folder}`")) && text.contains(expect), "{text}");
    }
}
