//! The host serves every published version of the plugin contract: a component built against
//! the frozen 0.1.0 WIT (`plugins/testing/legacy-v0-1-0`, no SDK) loads, streams records and
//! calls the 0.1.0 `llm.chat`, next to components built with the current SDK.

use serde_json::Value;
use trex_plugin_host::{CallEnv, PluginHost};
use trex_tests::llm_server;

use crate::test_config;

async fn legacy_host(dir: &std::path::Path, tweak: impl FnOnce(&mut trex_plugin_host::HostConfig)) -> PluginHost {
    let manifest =
        std::fs::read_to_string(trex_tests::root().join("plugins/testing/legacy-v0-1-0/plugin.toml")).unwrap();
    let path = trex_tests::install(dir, "legacy", "legacy_v0_1_0", &manifest);
    let mut config = test_config(dir.join("scratch"));
    tweak(&mut config);
    let mut host = PluginHost::new(config).unwrap();
    let loaded = host.load(&path).await.unwrap_or_else(|e| panic!("a 0.1.0 component must load: {e}"));
    assert_eq!(loaded.info.api_version, "0.1.0");
    host
}

fn llm_answers(records: &[String]) -> Vec<String> {
    records.iter().map(|r| serde_json::from_str::<Value>(r).unwrap()["llm"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_contract_0_1_0_still_runs_with_its_string_llm_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = legacy_host(dir.path(), |_| {}).await;
    let input: Vec<String> = (0..300).map(|i| format!("{{\"i\":{i}}}")).collect();
    let run = host.run_data_tool("legacy", &serde_json::json!({}), input, &CallEnv::default()).await.unwrap();
    assert_eq!(run.records.len(), 300, "every record crosses both ways, in batches");
    let first: Value = serde_json::from_str(&run.records[0]).unwrap();
    assert_eq!(first["i"], 0);
    // Without an LLM, 0.1.0's `chat` reports the reason as text.
    let answers = llm_answers(&run.records);
    assert!(answers[0].starts_with("error: no LLM configured"), "{}", answers[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_contract_0_1_0_gets_llm_replies() {
    let dir = tempfile::tempdir().unwrap();
    let server = llm_server::start(vec![llm_server::completion("ok", 5, 1)]);
    let client = crate::augment::llm_client(&server.base_url);
    let host = legacy_host(dir.path(), |c| c.llm = Some(client)).await;
    let run =
        host.run_data_tool("legacy", &serde_json::json!({}), vec!["{}".into()], &CallEnv::default()).await.unwrap();
    assert_eq!(llm_answers(&run.records), vec!["ok"]);
    assert_eq!(server.requests.lock().unwrap().len(), 1);
}
