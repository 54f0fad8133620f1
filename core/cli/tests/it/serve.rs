//! `trex-host serve` over HTTP on a tiny byte-level chat model with random weights: the models
//! list, plain, sampled, stopped and streamed chats, adapters by name, constrained JSON and tool
//! calls, concurrent mixed-adapter requests against the same requests one at a time, and bad
//! requests (each answered with the protocol's error object while the server keeps serving).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// A running server; stopped when dropped.
struct Serve {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn trex_host() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trex-host"))
}

/// A PEFT adapter for the tiny chat model whose `B` is large enough to change its answers.
fn random_adapter(model: &Path, out: &Path, seed: u64) {
    use trex_sdk::types::LoraTarget;
    let config = trex_model::BaseModel::load(model).unwrap().config;
    let targets = [LoraTarget::QProj, LoraTarget::VProj, LoraTarget::DownProj];
    let mut adapter = trex_model::LoraAdapter::<f32>::new(&config, 4, 8.0, 0.0, &targets, seed);
    let mut rng = trex_sdk::rng::SplitMix64(seed);
    adapter.for_each_mut(|v| v.iter_mut().for_each(|x| *x = (rng.unit() - 0.5) as f32));
    trex_model::train::peft::save_adapter(out, &adapter, &model.display().to_string()).unwrap();
}

/// `trex-host serve` on the tiny chat model with adapters `a` and `b`.
fn serve() -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let model = trex_tests::tiny_chat_model(dir.path(), 4);
    random_adapter(&model, &dir.path().join("a"), 1);
    random_adapter(&model, &dir.path().join("b"), 2);
    let mut child = trex_host()
        .args(["serve", "--name", "tiny", "--bind", "127.0.0.1:0", "--batch-size", "8"])
        .arg("--model")
        .arg(&model)
        .arg(format!("--adapter=a={}", dir.path().join("a").display()))
        .arg(format!("--adapter=b={}", dir.path().join("b").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("{line}"));
    Serve { child, addr: addr.to_string(), _dir: dir }
}

/// One raw request; the status code and the body.
fn raw(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn chat(addr: &str, request: &Value) -> Value {
    let (code, body) = raw(addr, "POST", "/v1/chat/completions", request.to_string().as_bytes());
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn error(addr: &str, body: &[u8]) -> (u16, Value) {
    let (code, body) = raw(addr, "POST", "/v1/chat/completions", body);
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, v["error"].clone())
}

fn ask(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0})
}

fn text(reply: &Value, i: usize) -> String {
    reply["choices"][i]["message"]["content"].as_str().unwrap().to_string()
}

/// The content deltas of a streamed reply, and whether it ended with `[DONE]`.
fn streamed(addr: &str, request: &Value) -> (String, Vec<Value>, bool) {
    let (code, body) = raw(addr, "POST", "/v1/chat/completions", request.to_string().as_bytes());
    assert_eq!(code, 200, "{body}");
    let mut content = String::new();
    let mut chunks = Vec::new();
    let mut done = false;
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(t);
        }
        chunks.push(v);
    }
    (content, chunks, done)
}

#[test]
fn serve_answers_chats_with_the_base_model_and_its_adapters() {
    let s = serve();
    let (code, body) = raw(&s.addr, "GET", "/v1/models", b"");
    assert_eq!(code, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny", "a", "b"]);

    // Greedy: the same request gives the same reply; usage counts what was generated.
    let plain = chat(&s.addr, &ask("tiny", "hello"));
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(text(&plain, 0), text(&chat(&s.addr, &ask("tiny", "hello")), 0));
    let usage = &plain["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + completion);
    if completion == 12 {
        assert_eq!(plain["choices"][0]["finish_reason"], "length");
    }

    // An adapter by name answers differently from the base model (random, non-zero weights).
    let replies: Vec<String> = ["tiny", "a", "b"].iter().map(|m| text(&chat(&s.addr, &ask(m, "hello")), 0)).collect();
    assert!(replies[0] != replies[1] || replies[0] != replies[2], "{replies:?}");

    // A stop text cuts the reply before it.
    let full = text(
        &chat(
            &s.addr,
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "temperature": 0}),
        ),
        0,
    );
    let stop: String = full.chars().skip(3).take(2).collect();
    if !stop.is_empty() {
        let mut r = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "temperature": 0});
        r["stop"] = json!([stop]);
        let cut = chat(&s.addr, &r);
        assert_eq!(text(&cut, 0), full[..full.find(&stop).unwrap()], "stop `{stop}` in `{full}`");
        assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    }

    // n = 2 sampled replies, seeded: the same seed gives the same pair.
    let mut two = ask("a", "tell me");
    two["n"] = json!(2);
    two["temperature"] = json!(1.0);
    two["seed"] = json!(11);
    let first = chat(&s.addr, &two);
    assert_eq!(first["choices"].as_array().unwrap().len(), 2);
    assert_eq!(first["choices"][1]["index"], 1);
    let again = chat(&s.addr, &two);
    assert_eq!((text(&first, 0), text(&first, 1)), (text(&again, 0), text(&again, 1)));

    // Streamed: the deltas add up to the reply, then a finish reason, usage and [DONE].
    let mut r = ask("b", "stream it");
    let whole = text(&chat(&s.addr, &r), 0);
    r["stream"] = json!(true);
    r["stream_options"] = json!({"include_usage": true});
    let (content, chunks, done) = streamed(&s.addr, &r);
    assert!(done);
    assert_eq!(content, whole);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"].is_string()));
    assert!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

/// A tiny checker for the test's schema: `{"city": string (≤ 12 chars), "days": 1..=14,
/// "unit"?: "c" | "f", "tags": [bool, ...] (1..=3)}` and nothing else.
fn check_trip(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    for k in o.keys() {
        if !["city", "days", "unit", "tags"].contains(&k.as_str()) {
            return Err(format!("unexpected key {k}"));
        }
    }
    let city = o.get("city").and_then(Value::as_str).ok_or("city")?;
    if city.chars().count() > 12 {
        return Err("city too long".into());
    }
    let days = o.get("days").and_then(Value::as_i64).ok_or("days")?;
    if !(1..=14).contains(&days) {
        return Err(format!("days {days}"));
    }
    if let Some(u) = o.get("unit")
        && u != "c"
        && u != "f"
    {
        return Err(format!("unit {u}"));
    }
    let tags = o.get("tags").and_then(Value::as_array).ok_or("tags")?;
    if tags.is_empty() || tags.len() > 3 || tags.iter().any(|t| !t.is_boolean()) {
        return Err(format!("tags {tags:?}"));
    }
    Ok(())
}

#[test]
fn constrained_replies_validate_and_concurrent_requests_answer_as_one_at_a_time() {
    let s = serve();
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["c", "f"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3}},
        "required": ["city", "days", "tags"]});
    // Sampled at temperature 1 from a random model: every finished reply validates.
    let mut finished = 0;
    for seed in 0..12 {
        let r = json!({"model": if seed % 2 == 0 { "tiny" } else { "a" }, "messages": [{"role": "user", "content": "plan a trip"}],
            "max_tokens": 160, "temperature": 1.0, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}}});
        let reply = chat(&s.addr, &r);
        let t = text(&reply, 0);
        if reply["choices"][0]["finish_reason"] == "stop" {
            let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("seed {seed}: {e}: {t}"));
            check_trip(&v).unwrap_or_else(|e| panic!("seed {seed}: {e}: {t}"));
            finished += 1;
        }
    }
    assert!(finished >= 6, "only {finished} of 12 constrained replies finished within 160 tokens");

    // json_object: any object.
    let r = json!({"model": "b", "messages": [{"role": "user", "content": "json"}], "max_tokens": 80, "temperature": 0,
        "response_format": {"type": "json_object"}});
    let reply = chat(&s.addr, &r);
    if reply["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(&text(&reply, 0)).unwrap().is_object());
    }

    // A required tool call comes back as a call of a listed tool with arguments of its schema.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
        "properties": {"days": {"type": "integer", "minimum": 1, "maximum": 3}}, "required": ["days"]}}}]);
    let r = json!({"model": "tiny", "messages": [{"role": "user", "content": "weather?"}], "max_tokens": 60,
        "temperature": 0, "tools": tools, "tool_choice": "required"});
    let reply = chat(&s.addr, &r);
    let choice = &reply["choices"][0];
    if choice["finish_reason"] != "length" {
        assert_eq!(choice["finish_reason"], "tool_calls", "{reply}");
        let call = &choice["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!((1..=3).contains(&args["days"].as_i64().unwrap()), "{args}");
    }

    // 16 requests at once over three models, greedy, against the same ones sent one at a time.
    let requests: Vec<Value> = (0..16)
        .map(|i| {
            let model = ["tiny", "a", "b"][i % 3];
            let mut r = ask(model, &format!("question {i}"));
            r["max_tokens"] = json!(8 + i % 5);
            r
        })
        .collect();
    let alone: Vec<String> = requests.iter().map(|r| text(&chat(&s.addr, r), 0)).collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests.iter().map(|r| scope.spawn(|| text(&chat(&s.addr, r), 0))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
}

#[test]
fn bad_requests_get_the_protocols_error_and_the_server_keeps_serving() {
    let s = serve();
    let (code, e) = error(&s.addr, b"{\"model\": \"tiny\", \"messages\": [");
    assert_eq!(code, 400);
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"), "{e}");

    let (code, e) = error(&s.addr, ask("nope", "hi").to_string().as_bytes());
    assert_eq!((code, e["code"].as_str()), (404, Some("model_not_found")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("tiny, a, b"), "{e}");

    let mut r = ask("tiny", "hi");
    r["max_tokens"] = json!(1_000_000);
    let (code, e) = error(&s.addr, r.to_string().as_bytes());
    assert_eq!(
        (code, e["code"].as_str(), e["param"].as_str()),
        (400, Some("context_length_exceeded"), Some("max_tokens"))
    );

    let mut r = ask("tiny", "hi");
    r["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a+$"}}});
    let (code, e) = error(&s.addr, r.to_string().as_bytes());
    assert_eq!(code, 400);
    assert!(e["message"].as_str().unwrap().contains("pattern"), "the keyword is named: {e}");

    let mut r = ask("tiny", "hi");
    r["temprature"] = json!(0.5);
    let (code, e) = error(&s.addr, r.to_string().as_bytes());
    assert_eq!((code, e["param"].as_str()), (400, Some("temprature")));
    let mut r = ask("tiny", "hi");
    r["logprobs"] = json!(true);
    assert_eq!(error(&s.addr, r.to_string().as_bytes()).0, 400);
    assert_eq!(raw(&s.addr, "DELETE", "/v1/models", b"").0, 405);
    assert_eq!(raw(&s.addr, "GET", "/v1/nothing", b"").0, 404);

    // A client that leaves mid-stream: the server drops its sequence and goes on.
    let mut r = ask("a", "a long one");
    r["max_tokens"] = json!(400);
    r["stream"] = json!(true);
    for _ in 0..3 {
        let body = r.to_string();
        let mut c = TcpStream::connect(&s.addr).unwrap();
        write!(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .unwrap();
        let mut first = [0u8; 64];
        c.read_exact(&mut first).unwrap();
        drop(c);
    }
    let reply = chat(&s.addr, &ask("tiny", "still there?"));
    assert_eq!(reply["choices"][0]["message"]["role"], "assistant");
}

/// The `openai` Python client the protocol test runs.
const OPENAI_PYTHON: &str = "3.63.0";

/// A virtual environment with the official `openai` client, made once in trex's cache (`pip
/// install openai==OPENAI_PYTHON`, a few seconds) and reused; its python.
fn openai_python() -> std::path::PathBuf {
    let venv = trex_assets::cache_dir().join("venvs").join(format!("openai-{OPENAI_PYTHON}"));
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import openai, pydantic; assert openai.__version__ == '{OPENAI_PYTHON}'")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&py) {
        return py;
    }
    // Built beside its final place and renamed into it, so a half-made environment is never used.
    let parent = venv.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let work = tempfile::Builder::new().prefix(".new-openai-").tempdir_in(parent).unwrap();
    let made = Command::new("python3").args(["-m", "venv"]).arg(work.path()).status();
    assert!(made.is_ok_and(|s| s.success()), "python3 -m venv failed: install python3 and python3-venv");
    let pip = Command::new(work.path().join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", &format!("openai=={OPENAI_PYTHON}")])
        .status();
    assert!(pip.is_ok_and(|s| s.success()), "pip install openai=={OPENAI_PYTHON} failed (is PyPI reachable?)");
    // The environment's scripts name its folder, so it is made again in place after the move.
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::rename(work.keep(), &venv).unwrap();
    let fixed = Command::new("python3").args(["-m", "venv", "--upgrade"]).arg(&venv).status();
    assert!(fixed.is_ok_and(|s| s.success()));
    assert!(ready(&py), "the openai client does not import from {}", venv.display());
    py
}

#[test]
fn the_official_openai_python_client_reads_every_reply() {
    let py = openai_python();
    let s = serve();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(py).arg(&script).arg(format!("http://{}/v1", s.addr)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", script.display());
    let passed: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
    assert_eq!(passed, ["models", "plain", "stream", "n=2", "stop", "adapter", "json_schema", "tool_call", "errors"]);
}

#[test]
fn search_with_serve_serves_the_best_adapter_when_it_ends() {
    trex_tests::build_plugins();
    let f = crate::search::fixture(40, crate::search::QUICK, "", trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let mut child = crate::search::trex_host(&f)
        .args(["search", "--strategy", "greedy", "--nodes", "2", "--serve=127.0.0.1:0", "--run-dir"])
        .arg(&run_dir)
        .arg(&f.task)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let addr = loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("the search ended without serving:\n{printed}");
        }
        printed.push_str(&line);
        if let Some(rest) = line.strip_prefix("trex serve: http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    let s = Serve { child, addr, _dir: tempfile::tempdir().unwrap() };
    assert!(printed.contains("best"), "the search's summary came first:\n{printed}");
    let (code, body) = raw(&s.addr, "GET", "/v1/models", b"");
    assert_eq!(code, 200, "{body}");
    let models: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[1], "best");
    let reply = chat(
        &s.addr,
        &json!({"model": "best", "messages": [{"role": "user", "content": "w12"}], "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(reply["model"], "best");
}

#[test]
fn bench_serve_loads_the_server_with_mixed_adapters_and_prints_a_row_per_round() {
    let s = serve();
    let out = trex_host()
        .args(["bench", "serve", "--url", &format!("http://{}/v1", s.addr), "--models", "a,b,tiny"])
        .args(["--concurrency", "1,3", "--requests", "6", "--max-tokens", "4", "--label", "trex"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> =
        stdout.lines().filter(|l| l.starts_with("| trex")).map(|l| l.split(" | ").collect()).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, c) in rows.iter().zip(["1", "3"]) {
        assert_eq!((row[1], row[2], row[3]), ("a, b, tiny", c, "6"), "{stdout}");
        let tokens: u64 = row[4].parse().unwrap();
        assert!((6..=24).contains(&tokens), "6 requests of at most 4 tokens: {stdout}");
    }
    // A server that is not there: an error naming the URL.
    let out = trex_host().args(["bench", "serve", "--url", "http://127.0.0.1:9/v1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
}
