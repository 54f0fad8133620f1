//! The OpenAI-compatible client against a scripted loopback server: retries, timeouts, garbage,
//! a server without structured output, fatal errors and the token budget.

use std::sync::Arc;
use std::time::Duration;

use trex_plugin_host::llm::{ChatRequest, LlmError, OpenAiClient, OpenAiConfig, ResponseFormat, TokenMeter};
use trex_sdk::types::ChatMessage;
use trex_tests::llm_server::{Reply, completion, start};

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.into(),
        model: "scripted-model".into(),
        api_key_env: None,
        timeout_s: 1.0,
        max_retries: 2,
        backoff_ms: 10,
        json_schema: true,
    }
}

fn request(schema: bool) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage { role: "user".into(), content: "hello".into() }],
        temperature: Some(0.0),
        max_tokens: Some(20),
        response_schema: schema.then(|| serde_json::json!({"type": "object"})),
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_tokens_counted() {
    let server = start(vec![
        Reply::Status(503, "overloaded".into()),
        Reply::Status(200, "this is not json".into()),
        completion("hi there", 11, 3),
    ]);
    let meter = Arc::new(TokenMeter::new(None));
    let client = OpenAiClient::new(config(&server.base_url), meter.clone()).unwrap();
    let reply = client.complete(&request(false)).await.unwrap();
    assert_eq!(reply.content, "hi there");
    assert_eq!((reply.prompt_tokens, reply.completion_tokens), (11, 3));
    assert_eq!(meter.spent(), 14);
    let reqs = server.requests.lock().unwrap();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[0].head.starts_with("post /v1/chat/completions"), "{}", reqs[0].head);
    assert_eq!(reqs[0].body["model"], "scripted-model");
    assert_eq!(reqs[0].body["messages"][0]["content"], "hello");
    assert_eq!(reqs[0].body["max_tokens"], 20);
    assert!(!reqs[0].head.contains("authorization"), "no key configured, no header");
}

#[tokio::test]
async fn a_slow_reply_times_out_and_is_retried() {
    let server = start(vec![Reply::Slow(Duration::from_millis(2500), "{}".into()), completion("ok", 1, 1)]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(client.complete(&request(false)).await.unwrap().content, "ok");
    assert!(started.elapsed() < Duration::from_millis(2400), "the slow reply was not waited for");
}

#[tokio::test]
async fn a_reset_connection_is_retried() {
    let server = start(vec![Reply::Reset, Reply::Reset, completion("ok", 1, 1)]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    assert_eq!(client.complete(&request(false)).await.unwrap().content, "ok");
    assert_eq!(server.requests.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn persistent_garbage_gives_up_with_the_last_error() {
    let server = start(vec![
        Reply::Status(200, "<html>".into()),
        Reply::Status(200, "{\"choices\": []}".into()),
        Reply::Status(502, "bad gateway".into()),
    ]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    let err = client.complete(&request(false)).await.unwrap_err().to_string();
    assert!(err.contains("gave up after 3 attempts") && err.contains("502"), "{err}");
}

/// The `response_format` type of each request the server received.
fn formats(server: &trex_tests::llm_server::Server) -> Vec<String> {
    server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| match (&r.body["response_format"]["type"], r.body["response_format"].get("schema")) {
            (serde_json::Value::String(t), Some(_)) => format!("{t}+schema"),
            (serde_json::Value::String(t), None) => t.clone(),
            _ => "none".into(),
        })
        .collect()
}

#[tokio::test]
async fn each_real_refusal_of_a_format_steps_down_once_and_is_remembered() {
    // The shapes real servers refuse with: llama-cpp-python 0.3.36's 500 with its validation
    // body, OpenAI's 400 invalid_request_error, a 422.
    // (llama-cpp-python's body as its server sends it, recorded from `cargo xtask interop`.)
    let llama_cpp = r#"{"error":{"message":"1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File \"/venv/lib/python3.11/site-packages/llama_cpp/server/app.py\", line 376, in create_chat_completion\n    POST /v1/chat/completions","type":"internal_server_error","param":null,"code":null}}"#;
    let openai = r#"{"error":{"message":"Invalid parameter: 'response_format' of type 'json_object' is not supported with this model.","type":"invalid_request_error","param":"response_format","code":null}}"#;
    let unprocessable = r#"{"detail":"json_object: unsupported response_format"}"#;
    let server = start(vec![
        Reply::Status(500, llama_cpp.into()),
        Reply::Status(400, openai.into()),
        Reply::Status(422, unprocessable.into()),
        completion("{\"a\": 1}", 5, 5),
        completion("{\"b\": 2}", 5, 5),
    ]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    assert_eq!(client.complete(&request(true)).await.unwrap().content, "{\"a\": 1}");
    assert_eq!(client.complete(&request(true)).await.unwrap().content, "{\"b\": 2}");
    // Each refused request was sent once; the format that worked is kept for the next request.
    assert_eq!(formats(&server), ["json_schema", "json_object+schema", "json_object", "none", "none"]);
    assert_eq!(client.format(), ResponseFormat::Prompt);
    // Without a response format, the schema travels in the prompt.
    let reqs = server.requests.lock().unwrap();
    let system = reqs[3].body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("JSON Schema") && system.contains("\"type\""), "{system}");
}

#[tokio::test]
async fn a_plain_server_error_is_retried_with_the_same_format() {
    let server = start(vec![Reply::Status(500, "internal error".into()), completion("{}", 1, 1)]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    client.complete(&request(true)).await.unwrap();
    assert_eq!(formats(&server), ["json_schema", "json_schema"], "a transient failure keeps the format");
}

#[tokio::test]
async fn the_probe_chooses_the_first_format_that_gives_json() {
    let llama_cpp =
        r#"{"detail":[{"loc":["body","response_format","type"],"msg":"Input should be 'text' or 'json_object'"}]}"#;
    let server = start(vec![
        Reply::Status(500, llama_cpp.into()),
        // A 200 that ignores the schema does not count as support.
        completion("Sure! Here is your answer: ok", 5, 5),
        completion("{\"ok\": true}", 5, 3),
        completion("{\"ok\": true}", 5, 3),
    ]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    let probe = client.probe().await;
    let ok: Vec<bool> = probe.checks.iter().map(|c| c.ok).collect();
    assert_eq!(ok, [false, false, true, true], "{probe:?}");
    assert!(probe.checks[0].detail.contains("refused"), "{probe:?}");
    assert!(probe.checks[1].detail.contains("not with JSON"), "{probe:?}");
    assert_eq!(probe.chosen, Some(ResponseFormat::JsonObject));
    assert!(probe.usage_reported && probe.failure().is_none());
    assert_eq!(client.format(), ResponseFormat::JsonObject, "the client uses what the probe chose");
}

#[tokio::test]
async fn a_server_that_answers_nothing_is_reported_with_what_to_change() {
    let server = start(vec![Reply::Status(404, "{\"error\": \"no route /v1/chat/completions\"}".into()); 4]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    let probe = client.probe().await;
    let why = probe.failure().expect("nothing worked");
    assert!(why.contains("404") && why.contains("ends in /v1") && why.contains("trex-host llm check"), "{why}");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = start(vec![Reply::Status(401, "{\"error\": \"bad key\"}".into()), completion("never", 1, 1)]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    let err = client.complete(&request(false)).await.unwrap_err().to_string();
    assert!(err.contains("401") && err.contains("bad key"), "{err}");
    assert_eq!(server.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_token_budget_stops_requests() {
    let server = start(vec![completion("one", 60, 50), completion("two", 1, 1)]);
    let meter = Arc::new(TokenMeter::new(Some(100)));
    let client = OpenAiClient::new(config(&server.base_url), meter.clone()).unwrap();
    client.complete(&request(false)).await.unwrap();
    let err = client.complete(&request(false)).await.unwrap_err();
    assert!(matches!(err, LlmError::Budget(_)), "{err}");
    assert_eq!(server.requests.lock().unwrap().len(), 1, "no request once the budget is spent");
}

#[tokio::test]
async fn a_missing_key_variable_is_a_clear_error() {
    let mut cfg = config("http://127.0.0.1:9/v1");
    cfg.api_key_env = Some("TREX_TEST_KEY_THAT_IS_NOT_SET".into());
    let err = OpenAiClient::new(cfg, Arc::new(TokenMeter::new(None))).unwrap_err().to_string();
    assert!(err.contains("TREX_TEST_KEY_THAT_IS_NOT_SET") && err.contains("export"), "{err}");
}
