//! The hostile plugin suite: each attack ends in a clear error that names the plugin and what
//! was refused or exceeded, the host serves the next call normally, and nothing outside the
//! plugin's scratch folder changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use trex_plugin_host::{CallEnv, Capabilities, HostConfig, PluginError, PluginHost};

use crate::test_config;

pub(crate) struct Sandbox {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) host: PluginHost,
    pub(crate) env: CallEnv,
}

impl Sandbox {
    pub(crate) fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    /// The parent of the calls' private scratch folders.
    pub(crate) fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }
    pub(crate) fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }
}

pub(crate) const LIMITS: &str =
    "[capabilities]\ndataset = true\nscratch = true\n[limits]\ntimeout_ms = 1500\nmemory_mib = 64\noutput_mib = 4\n";

pub(crate) async fn sandbox_with(grant: Capabilities, extra_manifest: &str) -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    for d in ["data", "scratch", "outside"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("data/allowed.txt"), "dataset contents").unwrap();
    std::fs::write(root.join("outside/precious.txt"), "do not touch").unwrap();
    let manifest = trex_tests::manifest("hostile", "data-tool", "hostile", &format!("{LIMITS}{extra_manifest}"));
    let path = trex_tests::install(&root.join("plugins"), "hostile", "hostile", &manifest);
    let config = HostConfig { grant, ..test_config(root.join("scratch-root")) };
    let mut host = PluginHost::new(config).unwrap();
    host.load(&path).await.unwrap();
    let env = CallEnv {
        dataset_dir: Some(root.join("data")),
        scratch_parent: Some(root.join("scratch")),
        ..CallEnv::default()
    };
    Sandbox { _dir: dir, root, host, env }
}

pub(crate) async fn sandbox() -> Sandbox {
    sandbox_with(Capabilities { dataset: true, scratch: true, llm: true }, "").await
}

pub(crate) async fn attack(s: &Sandbox, config: serde_json::Value) -> Result<Vec<String>, PluginError> {
    s.host.run_data_tool("hostile", &config, vec![json!({"k": 1}).to_string()], &s.env).await.map(|r| r.records)
}

/// The host still serves a well-behaved call, nothing outside scratch changed, and no call left
/// a scratch folder behind.
pub(crate) async fn still_healthy(s: &Sandbox) {
    let out = attack(s, json!({"attack": "echo"})).await.expect("the host serves the next call");
    assert_eq!(out, vec![json!({"k": 1}).to_string()]);
    assert_eq!(std::fs::read_to_string(s.outside().join("precious.txt")).unwrap(), "do not touch");
    let outside: Vec<_> = std::fs::read_dir(s.outside()).unwrap().collect();
    assert_eq!(outside.len(), 1, "nothing new outside scratch");
    let data: Vec<_> = std::fs::read_dir(s.data()).unwrap().collect();
    assert_eq!(data.len(), 1, "the read-only dataset folder is unchanged");
    let left: Vec<_> =
        std::fs::read_dir(s.scratch()).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "every call's scratch folder is removed after it: {left:?}");
}

pub(crate) fn names_plugin(err: &PluginError) -> String {
    let text = err.to_string();
    assert!(text.contains("plugin `hostile`"), "error does not name the plugin: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_deadline() {
    let s = sandbox().await;
    let started = Instant::now();
    let err = attack(&s, json!({"attack": "infinite-loop"})).await.unwrap_err();
    assert!(matches!(err, PluginError::Timeout { limit_ms: 1500, .. }), "{err}");
    assert!(names_plugin(&err).contains("time limit of 1500 ms"));
    assert!(started.elapsed() < Duration::from_secs(10), "stopped promptly: {:?}", started.elapsed());
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_sleep_hits_the_deadline() {
    let s = sandbox().await;
    let started = Instant::now();
    let err = attack(&s, json!({"attack": "sleep", "millis": 60_000})).await.unwrap_err();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_budget_stops_a_spinning_plugin() {
    let s = sandbox_with(Capabilities::default(), "fuel = 5000000\n").await;
    let err = attack(&s, json!({"attack": "infinite-loop"})).await.unwrap_err();
    assert!(matches!(err, PluginError::Fuel { fuel: 5_000_000, .. }), "{err}");
    names_plugin(&err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_cap() {
    let s = sandbox().await;
    let err = attack(&s, json!({"attack": "memory-bomb"})).await.unwrap_err();
    assert!(matches!(err, PluginError::Memory { limit_mib: 64, .. }), "{err}");
    assert!(names_plugin(&err).contains("memory limit of 64 MiB"));
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_reaches_the_user_with_its_message() {
    let s = sandbox().await;
    let err = attack(&s, json!({"attack": "panic"})).await.unwrap_err();
    assert!(matches!(err, PluginError::Panic { .. }), "{err}");
    let text = names_plugin(&err);
    assert!(text.contains("hostile plugin panics on purpose"), "{text}");
    assert!(text.contains("src/lib.rs"), "the panic location is reported: {text}");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_is_cut_at_the_output_limit() {
    let s = sandbox().await;
    let err = attack(&s, json!({"attack": "huge-output"})).await.unwrap_err();
    assert!(matches!(err, PluginError::Output { limit_mib: 4, .. }), "{err}");
    assert!(names_plugin(&err).contains("output limit of 4 MiB"));
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_stdout_is_captured_within_bounds() {
    let s = sandbox().await;
    // 200 MB written to stdout: the host keeps a bounded tail and the call finishes.
    let out = attack(&s, json!({"attack": "huge-stdout"})).await;
    assert!(out.is_ok() || matches!(out, Err(PluginError::Timeout { .. })), "{out:?}");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_files_are_out_of_reach() {
    let s = sandbox().await;
    for path in ["/etc/passwd", "/proc/self/environ", "../outside/precious.txt"] {
        let err = attack(&s, json!({"attack": "read-file", "path": path})).await.unwrap_err();
        let text = names_plugin(&err);
        assert!(matches!(err, PluginError::Reported { .. }) && text.contains(&format!("cannot read {path}")), "{text}");
        assert!(!text.contains("root:"), "no content leaks into the error: {text}");
    }
    let outside = s.outside().join("precious.txt");
    let err = attack(&s, json!({"attack": "read-file", "path": outside.display().to_string()})).await.unwrap_err();
    names_plugin(&err);
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_dataset_is_readable_but_not_writable() {
    let s = sandbox().await;
    let out = attack(&s, json!({"attack": "read-file", "path": "/data/allowed.txt"})).await.unwrap();
    assert!(out[0].contains("dataset contents"), "positive control: the grant works");
    let err = attack(&s, json!({"attack": "write-file", "path": "/data/evil.txt", "content": "x"})).await.unwrap_err();
    assert!(names_plugin(&err).contains("cannot write /data/evil.txt"), "{err}");
    assert!(!s.data().join("evil.txt").exists());
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_dataset_is_invisible() {
    let s = sandbox_with(Capabilities { dataset: false, scratch: true, llm: false }, "").await;
    assert_eq!(s.host.get("hostile").unwrap().denied, vec!["dataset"], "the host says what it denied");
    let err = attack(&s, json!({"attack": "read-file", "path": "/data/allowed.txt"})).await.unwrap_err();
    assert!(names_plugin(&err).contains("cannot read /data/allowed.txt"), "{err}");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stay_inside_scratch() {
    let s = sandbox().await;
    let out = attack(&s, json!({"attack": "write-file", "path": "/scratch/note.txt", "content": "ok"})).await.unwrap();
    assert_eq!(out.len(), 1);
    let seen: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(seen["read_back"], "ok", "positive control: the plugin can use its scratch during the call");
    let escape = s.outside().join("evil.txt");
    for path in ["/scratch/../outside/evil.txt", "/scratch/../../evil.txt", "/tmp/evil.txt", escape.to_str().unwrap()] {
        let err = attack(&s, json!({"attack": "write-file", "path": path, "content": "x"})).await.unwrap_err();
        assert!(names_plugin(&err).contains(&format!("cannot write {path}")), "{err}");
    }
    assert!(!Path::new("/tmp/evil.txt").exists());
    assert!(!s.root.join("evil.txt").exists());
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_arguments_are_empty() {
    let s = sandbox().await;
    let out = attack(&s, json!({"attack": "env"})).await.unwrap();
    let seen: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(seen["vars"], json!([]), "no host environment variable is visible: {seen}");
    assert_eq!(seen["args"], json!([]), "{seen}");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_is_closed() {
    let s = sandbox().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = attack(&s, json!({"attack": "connect", "port": port})).await.unwrap_err();
    assert!(names_plugin(&err).contains(&format!("cannot connect to 127.0.0.1:{port}")), "{err}");
    assert!(listener.accept().is_err(), "no connection reached the listener");
    still_healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wasm_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = PluginHost::new(test_config(dir.path().join("s"))).unwrap();
    for (folder, bytes, expect) in [
        ("garbage", b"this is not wasm".to_vec(), "not a valid WebAssembly component"),
        ("core", b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module, not a component"),
    ] {
        let d = dir.path().join(folder);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("x.wasm"), bytes).unwrap();
        std::fs::write(d.join("plugin.toml"), trex_tests::manifest(folder, "data-tool", "x", "")).unwrap();
        let err = host.load(&d.join("plugin.toml")).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, PluginError::Load { .. })
                && text.contains(&format!("plugin `{folder}`"))
                && text.contains(expect),
            "{text}"
        );
    }
    let d = dir.path().join("missing");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("plugin.toml"), trex_tests::manifest("missing", "data-tool", "nope", "")).unwrap();
    let text = host.load(&d.join("plugin.toml")).await.unwrap_err().to_string();
    assert!(
        text.contains("nope.wasm") && text.contains("cargo build --release --target wasm32-wasip2"),
        "a plugin outside the checkout is told how to build itself: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_world_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let m =
        trex_tests::install(dir.path(), "h", "hostile", &trex_tests::manifest("hostile", "evaluator", "hostile", ""));
    let mut host = PluginHost::new(test_config(dir.path().join("s"))).unwrap();
    let err = host.load(&m).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{text}");
    assert!(text.contains("plugin `hostile`") && text.contains("trex:plugin/evaluator"), "{text}");
    assert!(text.contains("looks like a data-tool") && text.contains("kind = \"data-tool\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_plugin_does_not_hide_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    std::fs::create_dir_all(plugins.join("broken")).unwrap();
    std::fs::write(plugins.join("broken/plugin.toml"), "name = \"broken\"\nkind = \"data-tool\"\n").unwrap();
    let host = PluginHost::discover(&plugins, test_config(dir.path().join("s"))).await.unwrap();
    assert_eq!(host.plugins().count(), 17);
    assert_eq!(host.failures().len(), 1);
    let text = host.failures()[0].error.to_string();
    assert!(text.contains("broken/plugin.toml") && text.contains("missing field `version`"), "{text}");
}
