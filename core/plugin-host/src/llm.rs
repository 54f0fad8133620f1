//! The host's LLM access as plugins see it: one trait, so the OpenAI-compatible client, a
//! scripted test double and "no LLM" all fit behind `llm.chat`.

use std::future::Future;
use std::pin::Pin;

use trex_sdk::types::ChatMessage;

pub use probe::{FormatCheck, Probe};

mod probe;

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
    /// Whether the server reported the token counts (otherwise they are estimated).
    pub usage_reported: bool,
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
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
    /// Ask for structured output when the caller gives a schema. The client starts with
    /// OpenAI's `json_schema` format and steps down [`ResponseFormat::LADDER`] whenever a server
    /// refuses one (any status whose body names `response_format`, `json_schema` or
    /// `json_object`), never sending the refused request again; what worked is kept for the rest
    /// of the run. `false`: no structured output at all, the schema goes into the prompt.
    #[serde(default = "yes")]
    pub json_schema: bool,
}

/// How a request asks for JSON that follows a schema, from the most to the least the server has
/// to support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseFormat {
    /// `{"type": "json_schema", "json_schema": {"name", "schema"}}` (OpenAI, vLLM, llama.cpp's server).
    JsonSchema,
    /// `{"type": "json_object", "schema": ...}` (llama-cpp-python).
    JsonObjectSchema,
    /// `{"type": "json_object"}`, with the schema in the prompt.
    JsonObject,
    /// No response format; the schema in the prompt.
    Prompt,
}

impl ResponseFormat {
    /// Every format, in the order the client tries them.
    pub const LADDER: [ResponseFormat; 4] = [
        ResponseFormat::JsonSchema,
        ResponseFormat::JsonObjectSchema,
        ResponseFormat::JsonObject,
        ResponseFormat::Prompt,
    ];

    /// The name used in reports and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::JsonSchema => "json_schema",
            ResponseFormat::JsonObjectSchema => "json_object + schema",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::Prompt => "schema in the prompt",
        }
    }

    fn index(self) -> u8 {
        Self::LADDER.iter().position(|f| *f == self).expect("every format is on the ladder") as u8
    }

    /// The next format down the ladder.
    pub fn next(self) -> Option<ResponseFormat> {
        Self::LADDER.get(self.index() as usize + 1).copied()
    }
}

/// Whether a refused request's reply is the server refusing its response format (rather than a
/// transient failure or a problem with the rest of the request).
fn refuses_the_format(body: &str) -> bool {
    ["response_format", "json_schema", "json_object"].iter().any(|k| body.contains(k))
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
    /// The index on [`ResponseFormat::LADDER`] of the format this server accepts (so far).
    format: std::sync::atomic::AtomicU8,
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
        let start = if config.json_schema { ResponseFormat::JsonSchema } else { ResponseFormat::Prompt };
        Ok(Self { http, config, api_key, meter, format: start.index().into() })
    }

    /// The structured-output format this client uses with its server now.
    pub fn format(&self) -> ResponseFormat {
        ResponseFormat::LADDER[self.format.load(std::sync::atomic::Ordering::Relaxed) as usize]
    }

    /// Use `format` from now on (what [`OpenAiClient::probe`] found, or a resumed run journaled).
    pub fn set_format(&self, format: ResponseFormat) {
        self.format.store(format.index(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The server's address and model, for messages.
    pub fn describe(&self) -> String {
        format!("{} (model `{}`)", self.config.base_url, self.config.model)
    }

    /// The token meter this client charges.
    pub fn meter(&self) -> &std::sync::Arc<TokenMeter> {
        &self.meter
    }

    pub(crate) fn body(&self, request: &ChatRequest, format: ResponseFormat) -> serde_json::Value {
        let mut messages = request.messages.clone();
        if let Some(schema) = &request.response_schema
            && matches!(format, ResponseFormat::JsonObject | ResponseFormat::Prompt)
        {
            // Without a schema-constrained format, the schema travels in the prompt.
            let instruction = format!(
                "Reply with one JSON object only, no prose and no code fence, that follows this JSON Schema:\n{schema}"
            );
            match messages.first_mut().filter(|m| m.role == "system") {
                Some(system) => system.content = format!("{}\n\n{instruction}", system.content),
                None => messages.insert(0, ChatMessage { role: "system".into(), content: instruction }),
            }
        }
        let mut body = serde_json::json!({ "model": self.config.model, "messages": messages });
        if let Some(t) = request.temperature {
            body["temperature"] = t.into();
        }
        if let Some(m) = request.max_tokens {
            body["max_tokens"] = m.into();
        }
        if let Some(schema) = &request.response_schema {
            match format {
                ResponseFormat::JsonSchema => {
                    body["response_format"] = serde_json::json!({
                        "type": "json_schema",
                        "json_schema": { "name": "reply", "schema": schema, "strict": false },
                    });
                }
                ResponseFormat::JsonObjectSchema => {
                    body["response_format"] = serde_json::json!({ "type": "json_object", "schema": schema });
                }
                ResponseFormat::JsonObject => body["response_format"] = serde_json::json!({ "type": "json_object" }),
                ResponseFormat::Prompt => {}
            }
        }
        body
    }

    pub(crate) async fn once(&self, body: &serde_json::Value) -> Result<ChatResponse, Attempt> {
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
        // A refusal of the response format comes as a 400, a 422 or, from some servers, a 500
        // whose body is the validation error: never send that request again.
        if !status.is_success() && body.get("response_format").is_some() && refuses_the_format(&text) {
            return Err(Attempt::NoSchema(format!("{url}: HTTP {status}: {snippet}")));
        }
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(Attempt::Retry(format!("{url}: HTTP {status}: {snippet}")));
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
            usage_reported: usage("completion_tokens").is_some(),
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
            let format = self.format();
            let body = self.body(request, format);
            match self.once(&body).await {
                Ok(r) => {
                    self.meter.add(r.prompt_tokens as u64 + r.completion_tokens as u64);
                    return Ok(r);
                }
                Err(Attempt::NoSchema(msg)) if format.next().is_some() => {
                    let next = format.next().expect("checked");
                    tracing::warn!(
                        "the LLM server refused the `{}` response format; using `{}` from now on: {msg}",
                        format.as_str(),
                        next.as_str()
                    );
                    // Step down unless another request already did.
                    let _ = self.format.compare_exchange(
                        format.index(),
                        next.index(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
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

pub(crate) enum Attempt {
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
