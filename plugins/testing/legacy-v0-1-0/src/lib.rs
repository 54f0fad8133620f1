//! `legacy`: a data tool written against the frozen plugin contract 0.1.0 directly with
//! wit-bindgen (no SDK), as a plugin built before 0.1.1 was. The host must keep serving it.
//!
//! It copies every record and adds `"llm": <what llm.chat answered>` (the reply, or the error
//! text 0.1.0 reports), so a test sees both the record streams and the old `llm.chat` work.

wit_bindgen::generate!({
    path: "../../../sdk/wit/v0.1.0",
    world: "data-tool",
});

use exports::trex::plugin::data_tool_api::{Guest, RunStats};
use trex::plugin::llm::{ChatMessage, ChatRequest, chat};
use trex::plugin::records::{Reader, Writer};
use trex::plugin::types::{PluginError, PluginInfo, PluginKind};

struct Legacy;

impl Guest for Legacy {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "legacy".into(),
            kind: PluginKind::DataTool,
            version: "0.1.0".into(),
            api_version: "0.1.0".into(),
            description: "Copies records and asks llm.chat once, through contract 0.1.0.".into(),
            config_schema: "{\"type\":\"object\"}".into(),
        }
    }

    fn validate_config(config: String) -> Result<String, PluginError> {
        Ok(if config.trim().is_empty() { "{}".into() } else { config })
    }

    fn run(_config: String, input: &Reader, output: &Writer) -> Result<RunStats, PluginError> {
        let request = ChatRequest {
            messages: vec![ChatMessage { role: "user".into(), content: "Say ok.".into() }],
            temperature: None,
            max_tokens: Some(8),
            response_schema: None,
        };
        let answer = match chat(&request) {
            Ok(r) => r.content,
            Err(e) => format!("error: {e}"),
        };
        loop {
            let batch = input.read(256);
            if batch.is_empty() {
                break;
            }
            let out: Vec<String> = batch
                .iter()
                .map(|r| {
                    let body = r.trim_end().trim_end_matches('}');
                    let sep = if body.trim_end().ends_with('{') { "" } else { "," };
                    format!("{body}{sep}\"llm\":{}}}", json_string(&answer))
                })
                .collect();
            output.write(&out).map_err(|message| PluginError { message, field: None })?;
        }
        Ok(RunStats { dropped: Vec::new(), metrics: Vec::new() })
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

export!(Legacy);
