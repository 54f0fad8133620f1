//! What an OpenAI-compatible server supports, found by asking: one tiny request per
//! structured-output format (`trex-host llm check`, and once at the start of a search that uses
//! the LLM), so that a search never spends its budget on a server it cannot talk to.

use std::time::Instant;

use super::{Attempt, ChatRequest, OpenAiClient, ResponseFormat};
use trex_sdk::types::ChatMessage;

/// How one format's test request went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FormatCheck {
    /// The format asked for.
    pub format: ResponseFormat,
    /// Whether the server answered with a JSON object (for the `Prompt` format: answered at all).
    pub ok: bool,
    /// Milliseconds to the answer.
    pub latency_ms: f64,
    /// What happened, in a few words (the server's complaint when it refused).
    pub detail: String,
}

/// What a server supports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Probe {
    /// The server and model.
    pub server: String,
    /// One check per format, in the order tried.
    pub checks: Vec<FormatCheck>,
    /// Whether the replies carried token counts (`usage`); otherwise the client estimates them.
    pub usage_reported: bool,
    /// The first format that worked, which the client now uses.
    pub chosen: Option<ResponseFormat>,
}

impl Probe {
    /// Why nothing worked, with what to change, when nothing did.
    pub fn failure(&self) -> Option<String> {
        if self.chosen.is_some() {
            return None;
        }
        let details: Vec<String> = self.checks.iter().map(|c| format!("{}: {}", c.format.as_str(), c.detail)).collect();
        Some(format!(
            "the LLM server {} answered none of the test requests ({}): check that it is running, that the base URL ends in /v1, and the model name (`trex-host llm check` shows the details)",
            self.server,
            details.join("; ")
        ))
    }
}

impl OpenAiClient {
    /// Send one tiny request per format the client may use, choose the first that works, and
    /// report all of them. Tokens the requests cost are charged to the meter.
    pub async fn probe(&self) -> Probe {
        let schema = serde_json::json!({
            "type": "object",
            "properties": { "ok": { "type": "boolean" } },
            "required": ["ok"],
        });
        let request = ChatRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "Reply with the JSON object {\"ok\": true} and nothing else.".into(),
            }],
            temperature: Some(0.0),
            max_tokens: Some(24),
            response_schema: Some(schema),
        };
        let formats: Vec<ResponseFormat> =
            if self.config.json_schema { ResponseFormat::LADDER.to_vec() } else { vec![ResponseFormat::Prompt] };
        let mut checks = Vec::new();
        let mut usage_reported = false;
        let mut chosen = None;
        for format in formats {
            let started = Instant::now();
            let outcome = self.once(&self.body(&request, format)).await;
            let latency_ms = started.elapsed().as_secs_f64() * 1e3;
            let (ok, detail) = match outcome {
                Ok(r) => {
                    self.meter.add(r.prompt_tokens as u64 + r.completion_tokens as u64);
                    usage_reported |= r.usage_reported;
                    let json = serde_json::from_str::<serde_json::Value>(r.content.trim()).is_ok_and(|v| v.is_object());
                    match (json, format) {
                        (true, _) => (true, "answered with a JSON object".to_string()),
                        (false, ResponseFormat::Prompt) => {
                            (true, "answered (not JSON; the caller validates)".to_string())
                        }
                        (false, _) => (false, "answered, but not with JSON: the format is ignored".to_string()),
                    }
                }
                Err(Attempt::NoSchema(m)) => (false, format!("refused: {}", crate::text::line(&m, 160))),
                Err(Attempt::Retry(m) | Attempt::Fatal(m)) => (false, crate::text::line(&m, 160)),
            };
            checks.push(FormatCheck { format, ok, latency_ms, detail });
            if ok && chosen.is_none() {
                chosen = Some(format);
            }
        }
        if let Some(f) = chosen {
            self.set_format(f);
        }
        Probe { server: self.describe(), checks, usage_reported, chosen }
    }
}
