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
