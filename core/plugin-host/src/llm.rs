//! The host's LLM access as plugins see it: one trait, so the OpenAI-compatible client, a
//! scripted test double and "no LLM" all fit behind `llm.chat`.

use std::future::Future;
use std::pin::Pin;

use trex_sdk::types::ChatMessage;

/// A chat request as the host forwards it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Reply length cap.
    pub max_tokens: Option<u32>,
    /// Structured-output schema.
    pub response_schema: Option<serde_json::Value>,
}

/// A chat reply with its token cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant's text.
    pub content: String,
    /// Prompt tokens charged.
    pub prompt_tokens: u32,
    /// Completion tokens charged.
    pub completion_tokens: u32,
}

/// Why a chat request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The budget for this plugin or run is spent.
    #[error("LLM budget exhausted: {0}")]
    Budget(String),
    /// The server failed or answered something unusable.
    #[error("LLM request failed: {0}")]
    Request(String),
}

/// Boxed future returned by [`LlmClient::chat`].
pub type ChatFuture<'a> = Pin<Box<dyn Future<Output = Result<ChatResponse, LlmError>> + Send + 'a>>;

/// Something that answers chat requests on behalf of a plugin (the host keeps the key).
pub trait LlmClient: Send + Sync {
    /// Answer `request` for `plugin` (used for per-plugin budgets and logs).
    fn chat<'a>(&'a self, plugin: &'a str, request: ChatRequest) -> ChatFuture<'a>;
}

/// Settings of the OpenAI-compatible client (the `[llm]` section of a task, or command-line flags).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Server root up to `/v1`, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Model name sent with every request.
    pub model: String,
    /// Name of the environment variable holding the API key (the key itself never appears in
    /// a file, a journal or a plugin). Unset: no `Authorization` header.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Seconds before a request is abandoned (and retried).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries after a timeout, a connection error, a 429 or a 5xx reply, or a garbled body.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubled at each retry.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Ask for a JSON-schema response format when the caller gives a schema. A server that
    /// refuses it (HTTP 400 naming `response_format`) is asked again without it, and not asked
    /// again with it.
    #[serde(default = "yes")]
    pub json_schema: bool,
}

impl Default for OpenAiConfig {
    /// No server yet (`base_url` and `model` empty), and the documented defaults for the rest.
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: String::new(),
            api_key_env: None,
            timeout_s: default_timeout(),
            max_retries: default_retries(),
            backoff_ms: default_backoff(),
            json_schema: yes(),
        }
    }
}

fn default_timeout() -> f64 {
    120.0
}

fn default_retries() -> u32 {
    2
}

fn default_backoff() -> u64 {
    500
}

fn yes() -> bool {
    true
}

/// Tokens spent through an LLM client, against an optional limit.
#[derive(Debug, Default)]
pub struct TokenMeter {
    spent: std::sync::atomic::AtomicU64,
    limit: std::sync::atomic::AtomicU64,
}

impl TokenMeter {
    /// A meter with `limit` tokens (`None`: unlimited).
    pub fn new(limit: Option<u64>) -> Self {
        Self { spent: 0.into(), limit: limit.unwrap_or(u64::MAX).into() }
    }

    /// Tokens spent so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Add tokens spent (for example, from a resumed run's journal).
    pub fn add(&self, n: u64) {
        self.spent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the limit has been reached.
    pub fn exhausted(&self) -> bool {
        self.spent() >= self.limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        Some(self.limit.load(std::sync::atomic::Ordering::Relaxed)).filter(|&l| l != u64::MAX)
    }
}

/// An OpenAI-compatible `/chat/completions` client.
#[derive(Debug)]
pub struct OpenAiClient {
    http: reqwest::Client,
    config: OpenAiConfig,
    api_key: Option<String>,
    meter: std::sync::Arc<TokenMeter>,
    schema_refused: std::sync::atomic::AtomicBool,
}

impl OpenAiClient {
    /// A client; reads the API key from the environment variable the config names.
    pub fn new(config: OpenAiConfig, meter: std::sync::Arc<TokenMeter>) -> Result<Self, LlmError> {
        let api_key = match &config.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                LlmError::Request(format!(
                    "the LLM config names the API-key variable `{var}`, but it is not set: export {var}=... (or remove api_key_env for a server without keys)"
                ))
            })?),
        };
        if !(config.timeout_s > 0.0 && config.timeout_s.is_finite()) {
            return Err(LlmError::Request("llm.timeout_s must be positive".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs_f64(config.timeout_s))
            .connect_timeout(std::time::Duration::from_secs_f64(config.timeout_s.min(10.0)))
            .build()
            .map_err(|e| LlmError::Request(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, config, api_key, meter, schema_refused: false.into() })
    }

    /// The token meter this client charges.
    pub fn meter(&self) -> &std::sync::Arc<TokenMeter> {
        &self.meter
    }

    fn body(&self, request: &ChatRequest, with_schema: bool) -> serde_json::Value {
        let mut body = serde_json::json!({ "model": self.config.model, "messages": request.messages });
        if let Some(t) = request.temperature {
            body["temperature"] = t.into();
        }
        if let Some(m) = request.max_tokens {
            body["max_tokens"] = m.into();
        }
        if with_schema && let Some(schema) = &request.response_schema {
            body["response_format"] = serde_json::json!({
                "type": "json_schema",
                "json_schema": { "name": "reply", "schema": schema, "strict": false },
            });
        }
        body
    }

    async fn once(&self, body: &serde_json::Value) -> Result<ChatResponse, Attempt> {
        let url = format!("{}/chat/completions", self.config.base_url.trim_end_matches('/'));
        let mut req = self.http.post(&url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "could not connect or send" };
            Attempt::Retry(format!("{url}: {what}: {e}"))
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Attempt::Retry(format!("{url}: reading the reply failed: {e}")))?;
        let snippet: String = text.chars().take(300).collect();
        if text.len() > MAX_REPLY_BYTES {
            return Err(Attempt::Fatal(format!(
                "{url}: the reply is {} bytes, more than the {MAX_REPLY_BYTES} accepted",
                text.len()
            )));
        }
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(Attempt::Retry(format!("{url}: HTTP {status}: {snippet}")));
        }
        if status.as_u16() == 400 && text.contains("response_format") {
            return Err(Attempt::NoSchema(format!("{url}: HTTP {status}: {snippet}")));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(format!("{url}: HTTP {status}: {snippet}")));
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Attempt::Retry(format!("{url}: the reply is not JSON ({e}): {snippet}")))?;
        let content = v
            .pointer("/choices/0/message/content")
            .and_then(|c| c.as_str())
            .ok_or_else(|| Attempt::Retry(format!("{url}: the reply has no choices[0].message.content: {snippet}")))?;
        let estimate = |s: usize| (s / 4).max(1) as u32;
        let usage = |k: &str| v.pointer(&format!("/usage/{k}")).and_then(|x| x.as_u64()).map(|x| x as u32);
        let prompt_chars: usize = body["messages"].to_string().len();
        Ok(ChatResponse {
            content: content.to_string(),
            prompt_tokens: usage("prompt_tokens").unwrap_or_else(|| estimate(prompt_chars)),
            completion_tokens: usage("completion_tokens").unwrap_or_else(|| estimate(content.len())),
        })
    }

    /// Send `request`, retrying transient failures with exponential backoff.
    pub async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        use std::sync::atomic::Ordering;
        if self.meter.exhausted() {
            return Err(LlmError::Budget(format!(
                "{} of {} LLM tokens spent",
                self.meter.spent(),
                self.meter.limit().unwrap_or(0)
            )));
        }
        let mut delay = std::time::Duration::from_millis(self.config.backoff_ms);
        let mut last = String::new();
        let mut attempt = 0;
        while attempt <= self.config.max_retries {
            let with_schema = self.config.json_schema && !self.schema_refused.load(Ordering::Relaxed);
            let body = self.body(request, with_schema);
            match self.once(&body).await {
                Ok(r) => {
                    self.meter.add(r.prompt_tokens as u64 + r.completion_tokens as u64);
                    return Ok(r);
                }
                Err(Attempt::NoSchema(msg)) if with_schema => {
                    tracing::warn!("the LLM server refused the JSON-schema response format; asking without it: {msg}");
                    self.schema_refused.store(true, Ordering::Relaxed);
                    continue;
                }
                Err(Attempt::NoSchema(msg) | Attempt::Fatal(msg)) => return Err(LlmError::Request(msg)),
                Err(Attempt::Retry(msg)) => {
                    tracing::warn!("LLM request failed (attempt {}): {msg}", attempt + 1);
                    last = msg;
                }
            }
            attempt += 1;
            if attempt <= self.config.max_retries {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(LlmError::Request(format!("gave up after {} attempts; last error: {last}", self.config.max_retries + 1)))
    }
}

/// Replies larger than this are refused (a runaway server cannot flood the host or a plugin).
const MAX_REPLY_BYTES: usize = 8 << 20;

enum Attempt {
    Retry(String),
    NoSchema(String),
    Fatal(String),
}

impl LlmClient for OpenAiClient {
    fn chat<'a>(&'a self, plugin: &'a str, request: ChatRequest) -> ChatFuture<'a> {
        Box::pin(async move {
            let r = self.complete(&request).await;
            match &r {
                Ok(resp) => tracing::debug!(
                    "llm.chat for `{plugin}`: {} + {} tokens",
                    resp.prompt_tokens,
                    resp.completion_tokens
                ),
                Err(e) => tracing::warn!("llm.chat for `{plugin}` failed: {e}"),
            }
            r
        })
    }
}
