//! The OpenAI-compatible client against a scripted loopback server: retries, timeouts, garbage,
//! a server without structured output, fatal errors and the token budget.

use std::sync::Arc;
use std::time::Duration;

use trex_plugin_host::llm::{ChatRequest, LlmError, OpenAiClient, OpenAiConfig, TokenMeter};
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

#[tokio::test]
async fn a_server_without_structured_output_is_asked_again_without_it() {
    let server = start(vec![
        Reply::Status(400, "{\"error\": {\"message\": \"response_format json_schema is not supported\"}}".into()),
        completion("{\"a\": 1}", 5, 5),
        completion("{\"b\": 2}", 5, 5),
    ]);
    let client = OpenAiClient::new(config(&server.base_url), Arc::new(TokenMeter::new(None))).unwrap();
    assert_eq!(client.complete(&request(true)).await.unwrap().content, "{\"a\": 1}");
    assert_eq!(client.complete(&request(true)).await.unwrap().content, "{\"b\": 2}");
    let reqs = server.requests.lock().unwrap();
    assert_eq!(reqs[0].body["response_format"]["type"], "json_schema");
    assert!(reqs[1].body.get("response_format").is_none());
    assert!(reqs[2].body.get("response_format").is_none(), "the refusal is remembered");
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
