//! The LLM client and the `llm` plugins against a real OpenAI-compatible server. `cargo xtask
//! interop` serves the SmolLM2 GGUF on loopback, with llama-cpp-python (installed once, cached)
//! and with `trex-host serve`, and runs these against each with `TREX_INTEROP_BASE_URL` pointing
//! at it; without a server they are ignored.

use std::sync::Arc;

use serde_json::json;
use trex_lab::journal::Event;
use trex_plugin_host::llm::{OpenAiClient, OpenAiConfig, ResponseFormat, TokenMeter};
use trex_plugin_host::{CallEnv, HostConfig, PluginHost};

fn server() -> (String, String) {
    let url =
        std::env::var("TREX_INTEROP_BASE_URL").expect("TREX_INTEROP_BASE_URL: run this with `cargo xtask interop`");
    (url, std::env::var("TREX_INTEROP_MODEL").unwrap_or_else(|_| "smollm2".into()))
}

/// The response format the client should settle on: `trex-host serve` takes the protocol's
/// `json_schema`; llama-cpp-python 0.3.36 answers it with a 500 and takes `json_object` + schema.
fn expected_format() -> ResponseFormat {
    let server = std::env::var("TREX_INTEROP_SERVER").unwrap_or_default();
    if server.starts_with("trex") { ResponseFormat::JsonSchema } else { ResponseFormat::JsonObjectSchema }
}

fn client() -> Arc<OpenAiClient> {
    let (base_url, model) = server();
    let config = OpenAiConfig { base_url, model, timeout_s: 120.0, ..OpenAiConfig::default() };
    Arc::new(OpenAiClient::new(config, Arc::new(TokenMeter::new(None))).unwrap())
}

#[tokio::test]
#[ignore = "needs a real OpenAI-compatible server: cargo xtask interop"]
async fn interop_the_probe_finds_the_format_the_server_accepts() {
    let probe = client().probe().await;
    eprintln!("{} against {}: {probe:#?}", std::env::var("TREX_INTEROP_SERVER").unwrap_or_default(), probe.server);
    assert!(probe.failure().is_none(), "{probe:?}");
    let expected = expected_format();
    if expected != ResponseFormat::JsonSchema {
        assert!(!probe.checks[0].ok && probe.checks[0].detail.contains("refused"), "{:?}", probe.checks[0]);
    }
    assert_eq!(probe.chosen, Some(expected), "{probe:?}");
    assert!(probe.usage_reported);
}

#[test]
#[ignore = "needs a real OpenAI-compatible server: cargo xtask interop"]
fn interop_the_llm_researcher_runs_a_search_with_parsed_and_checked_proposals() {
    trex_tests::build_plugins();
    let (base_url, model) = server();
    let f = crate::search::fixture(
        40,
        crate::search::QUICK,
        "[researcher]\nplugin = \"llm\"\n",
        trex_model::LlamaConfig::tiny(),
    );
    let run_dir = f.dir.path().join("run");
    let (ok, stdout, err) = crate::search::output(
        crate::search::trex_host(&f)
            .args(["search", "--nodes", "2", "--llm-base-url", &base_url, "--llm-model", &model, "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{stdout}\n{err}");
    let events = crate::search::events(&run_dir);
    let format = events.iter().find_map(|e| if let Event::Llm { format, .. } = e { Some(*format) } else { None });
    assert_eq!(format, Some(Some(expected_format())), "the format is journaled");
    // Every proposal the model wrote parsed (the server constrains it to the schema); the host
    // then ran it or refused it for what it asks, never for its shape.
    let created = events.iter().filter(|e| matches!(e, Event::Created { proposal: Some(_), .. })).count();
    let refused: Vec<&String> =
        events.iter().filter_map(|e| if let Event::Rejected { error, .. } = e { Some(error) } else { None }).collect();
    assert!(created >= 1, "at least one proposal ran: {refused:?}");
    for r in refused {
        assert!(!r.contains("not JSON") && !r.contains("Proposal schema"), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real OpenAI-compatible server: cargo xtask interop"]
async fn interop_llm_data_judges_records_through_the_server() {
    trex_tests::build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let config = HostConfig { llm: Some(client()), scratch_root: Some(dir.path().join("s")), ..HostConfig::default() };
    let host = PluginHost::discover(&plugins, config).await.unwrap();
    let records: Vec<String> = [("3 km = ? m", "3000 m"), ("2 h = ? min", "7 apples")]
        .iter()
        .enumerate()
        .map(|(i, (p, r))| json!({"id": format!("r{i}"), "prompt": p, "response": r}).to_string())
        .collect();
    let judge =
        json!({"mode": "judge", "fields": ["prompt", "response"], "instructions": "Unit conversion.", "min_score": 1});
    let run = host.run_data_tool("llm-data", &judge, records, &CallEnv::default()).await.unwrap();
    assert_eq!(run.metrics["llm-calls"], 2.0, "{run:?}");
    assert_eq!(run.metrics["bad-replies"], 0.0, "schema-constrained replies always parse: {run:?}");
    for r in &run.records {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        assert!((1.0..=5.0).contains(&v["judge_score"].as_f64().unwrap()), "{v}");
    }
}
