//! `trex-host serve`: an OpenAI-compatible chat-completions server for a base model and its
//! LoRA adapters, with continuous multi-adapter batching and schema-constrained decoding.

mod http;
mod openai;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use trex_model::serving::{Event, Finish, Request as Sequence, Server, Sink};
use trex_sdk::types::ChatMessage;

use http::{Request, Unreadable};
use openai::{ApiError, ChatRequest, Format};

/// Sequences decoded together at most, unless `--batch-size` says otherwise.
const BATCH_SIZE: usize = 32;

/// Where the server listens unless `--bind` (or `search --serve HOST:PORT`) says otherwise.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";

/// Serve a model and its adapters over the OpenAI chat-completions protocol.
///
/// `GET /v1/models` lists the base model and each adapter by name; `POST
/// /v1/chat/completions` answers with any of them (the request's `model`), streamed or not.
/// Requests to different adapters decode together in one batch. `response_format` (`json_object`,
/// `json_schema`) and `tools` with `tool_choice` `required` or a named function constrain
/// decoding, so the reply is valid JSON of the schema by construction.
///
/// Examples:
///
///   trex-host serve --adapter best=runs/unit-conversion-mcts-s0-1764640000/nodes/3/adapter
///
///   trex-host serve runs/unit-conversion-mcts-s0-1764640000      # the run's best adapter
///
///   curl -s localhost:8000/v1/chat/completions -d '{"model": "best",
///     "messages": [{"role": "user", "content": "3 km in miles?"}]}'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ServeCommand {
    /// A run folder: serve its base model and its best node's adapter (as `best`).
    run_dir: Option<PathBuf>,
    /// A .gguf file, a Hugging Face model directory, or `smollm2` (ignored with a run folder).
    #[arg(long)]
    model: Option<String>,
    /// The base model's name in requests (default: from --model).
    #[arg(long)]
    name: Option<String>,
    /// An adapter to serve, as NAME=PATH (a PEFT adapter folder); repeatable.
    #[arg(long, value_name = "NAME=PATH")]
    adapter: Vec<String>,
    /// Address to listen on (port 0 picks a free one). Anything but loopback lets the network
    /// use the model.
    #[arg(long, default_value = DEFAULT_BIND)]
    bind: String,
    /// Sequences decoded together at most (continuous batching).
    #[arg(long, default_value_t = BATCH_SIZE)]
    batch_size: usize,
}

/// What every connection handler shares.
struct Shared {
    /// The base model's name.
    base: String,
    /// The adapters' names, by index.
    adapters: Vec<String>,
    tokenizer: trex_model::Tokenizer,
    max_pos: usize,
    queue: std::sync::Mutex<Sender<(Sequence, Sink)>>,
    created: u64,
}

impl ServeCommand {
    /// Serve a run folder's best adapter on `bind`, with the default settings.
    pub fn run_folder(run_dir: PathBuf, bind: String) -> ServeCommand {
        ServeCommand {
            run_dir: Some(run_dir),
            model: None,
            name: None,
            adapter: Vec::new(),
            bind,
            batch_size: BATCH_SIZE,
        }
    }

    /// Run it (until interrupted).
    pub fn execute(self) -> Result<ExitCode> {
        let (model_name, adapters) = self.what_to_serve()?;
        let base = crate::assets::load_model(&model_name)?;
        let mut names = Vec::new();
        let mut loaded = Vec::new();
        for (name, path) in &adapters {
            let a = trex_model::train::peft::load_adapter(path, &base.config)
                .with_context(|| format!("cannot load the adapter `{name}` from {}", path.display()))?;
            names.push(name.clone());
            loaded.push(a);
        }
        let base_name = self.name.clone().unwrap_or_else(|| default_name(&model_name));
        if names.contains(&base_name) {
            bail!("the adapter name `{base_name}` is the base model's name too: rename one (--name or NAME=PATH)");
        }
        let listener = TcpListener::bind(&self.bind)
            .with_context(|| format!("cannot listen on {} (choose another with --bind HOST:PORT)", self.bind))?;
        let addr = listener.local_addr()?;
        let tokenizer = base.tokenizer.clone();
        let max_pos = base.config.max_pos;
        let model = trex_model::Llama::new(base.config.clone(), base.weights);
        let server = Server::new(model, base.tokenizer, loaded, self.batch_size);
        let (queue, requests) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("decode".into()).spawn(move || decode(&server, &requests))?;
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let shared =
            Arc::new(Shared { base: base_name, adapters: names, tokenizer, max_pos, queue: queue.into(), created });
        println!("trex serve: http://{addr}/v1 (models: {}; Ctrl-C to stop)", model_names(&shared).join(", "));
        use std::io::Write;
        std::io::stdout().flush()?;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _ = connection(stream, &shared);
            });
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The model to load and the adapters to serve, from the flags or a run folder.
    fn what_to_serve(&self) -> Result<(String, Vec<(String, PathBuf)>)> {
        let mut adapters = Vec::new();
        for spec in &self.adapter {
            let Some((name, path)) = spec.split_once('=').filter(|(n, p)| !n.is_empty() && !p.is_empty()) else {
                bail!("--adapter `{spec}`: write it as NAME=PATH (e.g. best=runs/x/nodes/3/adapter)");
            };
            if adapters.iter().any(|(n, _): &(String, PathBuf)| n == name) {
                bail!("--adapter: the name `{name}` is given twice");
            }
            adapters.push((name.to_string(), PathBuf::from(path)));
        }
        let Some(run_dir) = &self.run_dir else {
            return Ok((self.model.clone().unwrap_or_else(|| "smollm2".into()), adapters));
        };
        let (_, _, task, _, _, state) = trex_lab::search::load_run(run_dir)?;
        let best = state
            .tree
            .nodes
            .iter()
            .skip(1)
            .filter_map(|n| Some((n.id, n.score()?, n.result()?.adapter.clone()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .with_context(|| format!("{}: no finished node with an adapter to serve", run_dir.display()))?;
        if adapters.iter().any(|(n, _)| n == "best") {
            bail!("--adapter: the name `best` is taken by the run's best node");
        }
        eprintln!("trex serve: node {} of {} (score {:.3}) as `best`", best.0, run_dir.display(), best.1);
        adapters.insert(0, ("best".into(), run_dir.join(best.2)));
        Ok((task.base_model.clone(), adapters))
    }
}

fn default_name(model: &str) -> String {
    let path = std::path::Path::new(model);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if stem.is_empty() { model.to_string() } else { stem }
}

fn model_names(shared: &Shared) -> Vec<String> {
    std::iter::once(shared.base.clone()).chain(shared.adapters.iter().cloned()).collect()
}

/// The decoding thread: one continuous batch for every request.
fn decode(server: &Server<f32>, requests: &Receiver<(Sequence, Sink)>) {
    server.run(requests);
}

/// Answer one connection.
fn connection(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let request = match http::read_request(&stream)? {
        Ok(r) => r,
        Err(Unreadable(status, message)) => {
            let e = ApiError { status, message, param: None, code: None };
            return http::respond_json(&mut stream, e.status, &e.body());
        }
    };
    let result = route(&request, shared, &mut stream);
    match result {
        Ok(()) => Ok(()),
        Err(Failure::Api(e)) => http::respond_json(&mut stream, e.status, &e.body()),
        Err(Failure::Io(e)) => Err(e),
    }
}

enum Failure {
    Api(ApiError),
    Io(std::io::Error),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

fn route(request: &Request, shared: &Shared, stream: &mut TcpStream) -> Result<(), Failure> {
    let path = request.path.trim_end_matches('/');
    let not_found = || ApiError {
        status: "404 Not Found",
        message: format!(
            "no route {} {}: this server has GET /v1/models and POST /v1/chat/completions",
            request.method, request.path
        ),
        param: None,
        code: None,
    };
    match (request.method.as_str(), path) {
        ("GET", "/v1/models") => {
            let data: Vec<Value> = model_names(shared)
                .into_iter()
                .map(|id| json!({"id": id, "object": "model", "created": shared.created, "owned_by": "trex"}))
                .collect();
            Ok(http::respond_json(stream, "200 OK", &json!({"object": "list", "data": data}))?)
        }
        ("POST", "/v1/chat/completions") => chat(&request.body, shared, stream),
        (_, "/v1/models" | "/v1/chat/completions") => Err(ApiError {
            status: "405 Method Not Allowed",
            message: format!("{} is not allowed on {}", request.method, request.path),
            param: None,
            code: None,
        }
        .into()),
        _ => Err(not_found().into()),
    }
}

/// One reply's progress, as the handler collects it.
#[derive(Default, Clone)]
struct Choice {
    text: String,
    finish: Option<Finish>,
}

fn chat(body: &[u8], shared: &Shared, stream: &mut TcpStream) -> Result<(), Failure> {
    let req = openai::parse(body)?;
    let adapter = if req.model == shared.base {
        None
    } else {
        Some(shared.adapters.iter().position(|a| *a == req.model).ok_or_else(|| ApiError {
            status: "404 Not Found",
            message: format!(
                "the model `{}` does not exist here; this server has: {}",
                req.model,
                model_names(shared).join(", ")
            ),
            param: Some("model".into()),
            code: Some("model_not_found"),
        })?)
    };
    let prompt = prompt_tokens(&req, shared)?;
    let room = shared.max_pos.saturating_sub(prompt.len());
    let max_new = match req.max_tokens {
        Some(m) if m as usize > room => {
            return Err(ApiError {
                status: "400 Bad Request",
                message: format!(
                    "this model's maximum context length is {} tokens; the messages take {} and max_tokens asks for {m} more: lower max_tokens to at most {room} or shorten the messages",
                    shared.max_pos,
                    prompt.len()
                ),
                param: Some("max_tokens".into()),
                code: Some("context_length_exceeded"),
            }
            .into());
        }
        Some(m) => m as usize,
        None if room == 0 => {
            return Err(ApiError {
                status: "400 Bad Request",
                message: format!(
                    "the messages take {} tokens, the whole context of this model ({})",
                    prompt.len(),
                    shared.max_pos
                ),
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
            }
            .into());
        }
        None => room,
    };
    let grammar = match &req.format {
        Format::Text => None,
        Format::Json(g) | Format::Tool(g) => Some(Arc::new(g.clone())),
    };
    let seed =
        req.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let (events, received) = std::sync::mpsc::channel::<(usize, Event)>();
    {
        let queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..req.n as usize {
            let events = events.clone();
            let sink: Sink = Box::new(move |e| events.send((i, e)).is_ok());
            let sequence = Sequence {
                prompt: prompt.clone(),
                adapter,
                max_new_tokens: max_new,
                temperature: req.temperature,
                top_p: req.top_p,
                seed: trex_sdk::rng::SplitMix64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64(),
                stop: req.stop.clone(),
                grammar: grammar.clone(),
            };
            queue.send((sequence, sink)).map_err(|_| ApiError {
                status: "503 Service Unavailable",
                message: "the decoding thread has stopped; restart trex-host serve".into(),
                param: None,
                code: None,
            })?;
        }
    }
    drop(events);
    static REPLIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!("chatcmpl-{}", REPLIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if req.stream {
        stream_reply(&req, &id, created, &received, stream)
    } else {
        let mut choices = vec![Choice::default(); req.n as usize];
        // Nothing is written until the reply is whole, so the socket is watched instead: a
        // client that has gone (a timeout, Ctrl-C) drops the receiver, and its sequences leave
        // the batch at their next step instead of decoding for no one.
        let every = std::time::Duration::from_millis(250);
        let mut checked = std::time::Instant::now();
        loop {
            match received.recv_timeout(every) {
                Ok((i, Event::Text(t))) => choices[i].text.push_str(&t),
                Ok((i, Event::Done(f))) => choices[i].finish = Some(f),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if checked.elapsed() >= every {
                if http::client_gone(stream) {
                    return Ok(());
                }
                checked = std::time::Instant::now();
            }
        }
        let mut usage = (0, 0);
        let list: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let f =
                    c.finish.unwrap_or(Finish { reason: "length", prompt_tokens: prompt.len(), completion_tokens: 0 });
                usage.0 = f.prompt_tokens;
                usage.1 += f.completion_tokens;
                let (message, reason) = message(&req, &c.text, f.reason, i);
                json!({"index": i, "message": message, "finish_reason": reason, "logprobs": null})
            })
            .collect();
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": req.model,
            "choices": list, "system_fingerprint": "trex",
            "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
        });
        Ok(http::respond_json(stream, "200 OK", &body)?)
    }
}

/// The assistant message for a finished reply, and its finish reason.
fn message(req: &ChatRequest, text: &str, reason: &'static str, index: usize) -> (Value, &'static str) {
    let call = match &req.format {
        Format::Tool(_) if reason == "stop" => openai::as_tool_call(text, &req.tools),
        Format::Text if req.tools_auto => openai::as_tool_call(text, &req.tools),
        _ => None,
    };
    match call {
        Some((name, arguments)) => (
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_{index}"), "type": "function",
                "function": {"name": name, "arguments": arguments},
            }]}),
            "tool_calls",
        ),
        None => (json!({"role": "assistant", "content": text}), reason),
    }
}

fn stream_reply(
    req: &ChatRequest,
    id: &str,
    created: u64,
    received: &Receiver<(usize, Event)>,
    stream: &mut TcpStream,
) -> Result<(), Failure> {
    http::start_events(stream)?;
    let chunk = |choices: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": req.model,
               "system_fingerprint": "trex", "choices": choices})
        .to_string()
    };
    // Tool calls are sent whole when they finish; text as it comes.
    let buffered = !matches!(req.format, Format::Json(_)) && (req.tools_auto || matches!(req.format, Format::Tool(_)));
    let mut texts = vec![String::new(); req.n as usize];
    let mut usage = (0, 0);
    for i in 0..req.n as usize {
        http::event(
            stream,
            &chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])),
        )?;
    }
    // A write that fails (the client left) returns here: the receiver goes, and so do its
    // sequences at their next step.
    for (i, e) in received.iter() {
        match e {
            Event::Text(t) if buffered => texts[i].push_str(&t),
            Event::Text(t) => {
                http::event(stream, &chunk(json!([{"index": i, "delta": {"content": t}, "finish_reason": null}])))?;
            }
            Event::Done(f) => {
                usage.0 = f.prompt_tokens;
                usage.1 += f.completion_tokens;
                let (message, reason) = message(req, &texts[i], f.reason, i);
                let delta = match (buffered, message.get("tool_calls")) {
                    (true, Some(calls)) => {
                        let mut calls = calls.clone();
                        calls[0]["index"] = json!(0);
                        json!({"tool_calls": calls})
                    }
                    (true, None) if !texts[i].is_empty() => json!({"content": texts[i]}),
                    _ => json!({}),
                };
                http::event(stream, &chunk(json!([{"index": i, "delta": delta, "finish_reason": reason}])))?;
            }
        }
    }
    if req.include_usage {
        let mut last: Value = serde_json::from_str(&chunk(json!([]))).expect("json");
        last["usage"] =
            json!({"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1});
        http::event(stream, &last.to_string())?;
    }
    http::event(stream, "[DONE]")?;
    Ok(())
}

/// The prompt's tokens: the messages (and the tools, as a system message) through the chat
/// template.
fn prompt_tokens(req: &ChatRequest, shared: &Shared) -> Result<Vec<u32>, ApiError> {
    let mut messages: Vec<ChatMessage> =
        req.messages.iter().map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone() }).collect();
    if !req.tools.is_empty() {
        let text = openai::tools_prompt(&req.tools);
        match messages.first_mut() {
            Some(first) if first.role == "system" => first.content = format!("{}\n\n{text}", first.content),
            _ => messages.insert(0, ChatMessage { role: "system".into(), content: text }),
        }
    }
    let text = shared.tokenizer.apply_chat_template(&messages, true).map_err(|e| ApiError {
        status: "400 Bad Request",
        message: format!("the model's chat template refused the messages: {e}"),
        param: Some("messages".into()),
        code: None,
    })?;
    Ok(shared.tokenizer.encode(&text))
}
