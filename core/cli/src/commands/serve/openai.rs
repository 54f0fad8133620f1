//! The OpenAI chat-completions protocol as `trex-host serve` speaks it: the request's fields
//! (checked one by one, an unknown one refused by name), the error object, and the reply and
//! stream-chunk bodies.

use serde_json::{Map, Value, json};
use trex_model::grammar::Grammar;

/// An error as the protocol sends it: an HTTP status and the `error` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// `400 Bad Request`, ...
    pub status: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { status: "400 Bad Request", message: message.into(), param: Some(param.into()), code: None }
    }

    /// The body.
    pub fn body(&self) -> Value {
        let kind = if self.status.starts_with('5') { "server_error" } else { "invalid_request_error" };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }
}

/// Fields of the chat-completions request that trex reads.
const READ: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "response_format",
    "tools",
    "tool_choice",
];
/// Fields of the protocol that change nothing here (bookkeeping for hosted services).
const IGNORED: &[&str] =
    &["user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"];
/// Fields of the protocol trex does not implement: accepted only at their neutral value.
const NEUTRAL: &[(&str, &str)] = &[
    ("frequency_penalty", "0"),
    ("presence_penalty", "0"),
    ("logit_bias", "{}"),
    ("logprobs", "false"),
    ("top_logprobs", "null"),
    ("modalities", "[\"text\"]"),
    ("audio", "null"),
    ("prediction", "null"),
    ("functions", "null"),
    ("function_call", "null"),
    ("reasoning_effort", "null"),
    ("web_search_options", "null"),
    ("verbosity", "null"),
];

/// Replies per request at most.
pub const MAX_N: u64 = 16;

/// One message, as the chat template sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// How the reply is constrained.
#[derive(Debug, Clone)]
pub enum Format {
    /// Free text.
    Text,
    /// Valid JSON of this grammar.
    Json(Grammar),
    /// A call of one of these tools: `{"name": ..., "arguments": {...}}` under this grammar.
    Tool(Grammar),
}

/// A checked chat-completions request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The model's name (the base model's or an adapter's).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// New tokens at most, when given.
    pub max_tokens: Option<u64>,
    /// Sampling temperature (0 is greedy).
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Stop texts.
    pub stop: Vec<String>,
    /// Seed, when given.
    pub seed: Option<u64>,
    /// Replies.
    pub n: u64,
    /// Stream the reply as server-sent events.
    pub stream: bool,
    /// Send a last chunk with the token counts (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The reply's format.
    pub format: Format,
    /// The tools' descriptions, for the prompt.
    pub tools: Vec<Value>,
    /// `auto`: the model may call a tool or answer (the reply is read as a call if it is one).
    pub tools_auto: bool,
}

fn number(v: &Value, field: &str, lo: f64, hi: f64) -> Result<f64, ApiError> {
    let x = v.as_f64().ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a number, not {v}")))?;
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::invalid(field, format!("`{field}` is {x}; it must be between {lo} and {hi}")));
    }
    Ok(x)
}

fn count(v: &Value, field: &str) -> Result<u64, ApiError> {
    v.as_u64().ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a whole number ≥ 0, not {v}")))
}

/// Check a request body.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        status: "400 Bad Request",
        message: format!("the body is not valid JSON: {e}"),
        param: None,
        code: None,
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError {
            status: "400 Bad Request",
            message: "the body must be a JSON object".into(),
            param: None,
            code: None,
        });
    };
    for (key, v) in &obj {
        if READ.contains(&key.as_str()) || IGNORED.contains(&key.as_str()) {
            continue;
        }
        if let Some((_, neutral)) = NEUTRAL.iter().find(|(k, _)| k == key) {
            let neutral: Value = serde_json::from_str(neutral).expect("neutral values are JSON");
            let is_neutral = v.is_null() || *v == neutral || (v.as_f64() == Some(0.0) && neutral == json!(0));
            if !is_neutral {
                return Err(ApiError::invalid(key, format!("`{key}` is not supported by trex serve (leave it out)")));
            }
            continue;
        }
        return Err(ApiError::invalid(
            key,
            format!("unknown field `{key}`: the chat-completions request has no such field"),
        ));
    }
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => {
            return Err(ApiError::invalid(
                "model",
                "`model` is required: the name of the base model or an adapter (GET /v1/models lists them)",
            ));
        }
    };
    let messages = messages(obj.get("messages"))?;
    let max_tokens = match (obj.get("max_completion_tokens"), obj.get("max_tokens")) {
        (Some(v), _) if !v.is_null() => Some(count(v, "max_completion_tokens")?),
        (_, Some(v)) if !v.is_null() => Some(count(v, "max_tokens")?),
        _ => None,
    };
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let temperature = get("temperature").map(|v| number(v, "temperature", 0.0, 2.0)).transpose()?.unwrap_or(1.0) as f32;
    let top_p = get("top_p").map(|v| number(v, "top_p", 0.0, 1.0)).transpose()?.unwrap_or(1.0) as f32;
    let stop = match get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(String::from)
                    .ok_or_else(|| ApiError::invalid("stop", "`stop` must be a string or a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("stop", "`stop` must be a string or a list of strings")),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "`stop` takes at most 4 non-empty strings"));
    }
    let seed = get("seed").map(|v| {
        v.as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .ok_or_else(|| ApiError::invalid("seed", "`seed` must be an integer"))
    });
    let seed = seed.transpose()?;
    let n = get("n").map(|v| count(v, "n")).transpose()?.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid("n", format!("`n` is {n}; it must be between 1 and {MAX_N}")));
    }
    let stream = match get("stream") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| ApiError::invalid("stream", "`stream` must be true or false"))?,
    };
    let include_usage =
        get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool) == Some(true);
    let (mut format, tools, tools_auto) = tools(get("tools"), get("tool_choice"))?;
    if let Some(rf) = get("response_format") {
        if !matches!(format, Format::Text) {
            return Err(ApiError::invalid(
                "response_format",
                "`response_format` cannot constrain a reply that must be a tool call",
            ));
        }
        format = response_format(rf)?;
    }
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        temperature,
        top_p,
        stop,
        seed,
        n,
        stream,
        include_usage,
        format,
        tools,
        tools_auto,
    })
}

fn messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(items)) = v else {
        return Err(ApiError::invalid("messages", "`messages` is required: a list of {\"role\", \"content\"} objects"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid(&at, format!("`{at}` has no `role`")))?;
            let role = match role {
                "developer" => "system",
                "system" | "user" | "assistant" | "tool" => role,
                other => {
                    return Err(ApiError::invalid(
                        &format!("{at}.role"),
                        format!("unknown role `{other}` (system, developer, user, assistant or tool)"),
                    ));
                }
            };
            let mut content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t.to_string()),
                        _ => Err(ApiError::invalid(&format!("{at}.content"), "only text content parts are supported")),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
                Some(_) => {
                    return Err(ApiError::invalid(
                        &format!("{at}.content"),
                        "`content` must be a string or a list of text parts",
                    ));
                }
            };
            // A tool call the assistant made earlier reads as the JSON it wrote.
            if let Some(Value::Array(calls)) = m.get("tool_calls") {
                for c in calls {
                    let f = &c["function"];
                    let args: Value =
                        f["arguments"].as_str().and_then(|a| serde_json::from_str(a).ok()).unwrap_or(Value::Null);
                    content.push_str(&json!({"name": f["name"], "arguments": args}).to_string());
                }
            }
            Ok(Message { role: role.to_string(), content })
        })
        .collect()
}

fn response_format(rf: &Value) -> Result<Format, ApiError> {
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        // llama.cpp's server takes a schema beside `json_object`; so does trex.
        Some("json_object") => match rf.get("schema").filter(|s| !s.is_null()) {
            None => Ok(Format::Json(Grammar::any_object())),
            Some(schema) => Grammar::from_schema(schema)
                .map(Format::Json)
                .map_err(|e| ApiError::invalid("response_format", format!("the schema cannot be enforced: {e}"))),
        },
        Some("json_schema") => {
            let schema = rf.get("json_schema").and_then(|s| s.get("schema")).ok_or_else(|| {
                ApiError::invalid(
                    "response_format",
                    "`response_format.json_schema.schema` is required with type `json_schema`",
                )
            })?;
            Grammar::from_schema(schema)
                .map(Format::Json)
                .map_err(|e| ApiError::invalid("response_format", format!("the schema cannot be enforced: {e}")))
        }
        _ => Err(ApiError::invalid(
            "response_format",
            "`response_format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// The tools, and the reply's format under `tool_choice`.
fn tools(tools: Option<&Value>, choice: Option<&Value>) -> Result<(Format, Vec<Value>, bool), ApiError> {
    let list = match tools {
        None => {
            return match choice {
                None => Ok((Format::Text, Vec::new(), false)),
                Some(Value::String(s)) if s == "none" => Ok((Format::Text, Vec::new(), false)),
                Some(_) => Err(ApiError::invalid("tool_choice", "`tool_choice` needs `tools`")),
            };
        }
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be a non-empty list")),
    };
    let mut functions = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let f = t.get("function").filter(|_| t.get("type").and_then(Value::as_str) == Some("function"));
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let (Some(f), Some(name)) = (f, name) else {
            return Err(ApiError::invalid(
                &format!("tools[{i}]"),
                "each tool must be {\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}",
            ));
        };
        let params = f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}));
        functions.push((name.to_string(), params, t.clone()));
    }
    let chosen: Vec<&(String, Value, Value)> = match choice {
        None => functions.iter().collect(),
        Some(Value::String(s)) if s == "auto" || s == "required" => functions.iter().collect(),
        Some(Value::String(s)) if s == "none" => return Ok((Format::Text, Vec::new(), false)),
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            let f = functions.iter().find(|f| Some(f.0.as_str()) == name);
            vec![f.ok_or_else(|| {
                ApiError::invalid("tool_choice", format!("`tool_choice` names {name:?}, which is not among the tools"))
            })?]
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be `none`, `auto`, `required` or {\"type\": \"function\", \"function\": {\"name\"}}",
            ));
        }
    };
    let auto = matches!(choice, None | Some(Value::String(_))) && choice.and_then(Value::as_str) != Some("required");
    let alternatives: Vec<Value> = chosen
        .iter()
        .map(|(name, params, _)| {
            json!({"type": "object", "properties": {"name": {"const": name}, "arguments": params}, "required": ["name", "arguments"]})
        })
        .collect();
    let schema = if alternatives.len() == 1 { alternatives[0].clone() } else { json!({"anyOf": alternatives}) };
    let grammar = Grammar::from_schema(&schema)
        .map_err(|e| ApiError::invalid("tools", format!("a tool's parameters cannot be enforced: {e}")))?;
    let format = if auto { Format::Text } else { Format::Tool(grammar) };
    Ok((format, chosen.iter().map(|c| c.2.clone()).collect(), auto))
}

/// The system text that tells the model about the tools.
pub fn tools_prompt(tools: &[Value]) -> String {
    let list: Vec<String> = tools.iter().map(|t| t["function"].to_string()).collect();
    format!(
        "You can call these functions. To call one, reply with only a JSON object {{\"name\": <function name>, \"arguments\": <its arguments>}}.\n{}",
        list.join("\n")
    )
}

/// Read `text` as a call of one of `tools`, if it is one.
pub fn as_tool_call(text: &str, tools: &[Value]) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    tools.iter().find(|t| t["function"]["name"].as_str() == Some(name))?;
    let args = v.get("arguments").cloned().unwrap_or(Value::Object(Map::new()));
    Some((name.to_string(), args.to_string()))
}
