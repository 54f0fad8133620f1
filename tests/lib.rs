//! Shared helpers for the end-to-end tests: building the plugin components and laying out
//! throw-away plugin folders with their own manifests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// Build every plugin (standard and testing) for wasm32-wasip2, once per test process.
/// Cargo makes this a no-op when nothing changed.
pub fn build_plugins() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let plugins = root().join("plugins");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(&plugins)
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .expect("cargo can be started");
            assert!(
                out.status.success(),
                "building the plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            plugins.join("target/wasm32-wasip2/release")
        })
        .clone()
}

/// The built component of the plugin crate whose library is named `lib`.
pub fn component(lib: &str) -> PathBuf {
    build_plugins().join(format!("{lib}.wasm"))
}

/// Lay out `dir/<folder>/plugin.toml` with `manifest` and a copy of component `lib` as `<lib>.wasm`.
pub fn install(dir: &Path, folder: &str, lib: &str, manifest: &str) -> PathBuf {
    let target = dir.join(folder);
    std::fs::create_dir_all(&target).expect("create plugin folder");
    std::fs::copy(component(lib), target.join(format!("{lib}.wasm"))).expect("copy component");
    std::fs::write(target.join("plugin.toml"), manifest).expect("write manifest");
    target.join("plugin.toml")
}

/// A manifest for component `lib` under `name` and `kind`, with extra TOML appended.
pub fn manifest(name: &str, kind: &str, lib: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"{kind}\"\nversion = \"0.1.0\"\napi_version = \"0.1.1\"\nwasm = \"{lib}.wasm\"\n{extra}\n"
    )
}

/// Copies of the standard plugins (as `--plugins` expects them) in a fresh folder.
pub fn standard_plugins(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    for (folder, lib) in [
        ("chat-format", "chat_format"),
        ("filter-length", "filter_length"),
        ("dedup-exact", "dedup_exact"),
        ("dedup-near", "dedup_near"),
        ("clean-text", "clean_text"),
        ("load-bfcl", "load_bfcl"),
        ("exact-match", "exact_match"),
        ("random-researcher", "random_researcher"),
        ("heuristic-researcher", "heuristic_researcher"),
        ("llm-researcher", "llm_researcher"),
        ("select", "select"),
        ("load-csv", "load_csv"),
        ("augment", "augment"),
        ("filter-lang", "filter_lang"),
        ("llm-data", "llm_data"),
        ("bfcl-ast", "bfcl_ast"),
        ("smiles", "smiles"),
    ] {
        let text =
            std::fs::read_to_string(root().join("plugins").join(folder).join("plugin.toml")).expect("read manifest");
        install(&plugins, folder, lib, &text);
    }
    plugins
}

/// A loopback server that speaks just enough of the OpenAI chat-completions protocol to play
/// back a script of replies (good ones, errors, slow ones, garbage) and record every request.
pub mod llm_server {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// One scripted reply.
    #[derive(Debug, Clone)]
    pub enum Reply {
        /// An HTTP status and a body.
        Status(u16, String),
        /// Wait, then answer 200 with this body.
        Slow(Duration, String),
        /// Close the connection without answering (the request read, no byte written back).
        Reset,
        /// Hold the reply until this many requests carrying a `Barrier` reply are waiting
        /// together, then answer 200 with this body: proof that the requests were in flight at
        /// the same time (one after another, they would never meet).
        Barrier(usize, String),
    }

    /// A request as the server saw it.
    #[derive(Debug, Clone)]
    pub struct Request {
        /// Request line and headers, lower-cased header names.
        pub head: String,
        /// The JSON body.
        pub body: serde_json::Value,
    }

    /// The running server.
    #[derive(Debug)]
    pub struct Server {
        /// `http://127.0.0.1:PORT/v1`.
        pub base_url: String,
        /// Requests received so far.
        pub requests: Arc<Mutex<Vec<Request>>>,
    }

    /// A 200 reply carrying `content` with the given token usage.
    pub fn completion(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Reply {
        Reply::Status(200, completion_body(content, prompt_tokens, completion_tokens))
    }

    /// The body of a chat completion carrying `content`.
    pub fn completion_body(content: &str, prompt_tokens: u64, completion_tokens: u64) -> String {
        serde_json::json!({
            "id": "chatcmpl-test", "object": "chat.completion", "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })
        .to_string()
    }

    /// Serve `script` in order (one reply per request; 500 once it runs out).
    pub fn start(script: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let waiting = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let script = script.clone();
                let seen = seen.clone();
                let waiting = waiting.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                    let mut head = String::new();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&lower);
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    seen.lock().expect("lock").push(Request { head, body });
                    let reply = script
                        .lock()
                        .expect("lock")
                        .pop_front()
                        .unwrap_or(Reply::Status(500, "{\"error\": \"script exhausted\"}".into()));
                    let (status, body) = match reply {
                        Reply::Reset => {
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        Reply::Status(s, b) => (s, b),
                        Reply::Slow(d, b) => {
                            std::thread::sleep(d);
                            (200, b)
                        }
                        Reply::Barrier(n, b) => {
                            let (count, met) = &*waiting;
                            let mut c = count.lock().expect("lock");
                            *c += 1;
                            met.notify_all();
                            while *c < n {
                                c = met.wait(c).expect("lock");
                            }
                            (200, b)
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                });
            }
        });
        Server { base_url: format!("http://127.0.0.1:{port}/v1"), requests }
    }
}

/// A Hugging Face `tokenizer.json` for a word-level vocabulary `w0` .. `w{vocab-1}` split on
/// whitespace (unknown words become `w0`).
pub fn word_level_tokenizer(vocab: usize) -> serde_json::Value {
    let words: serde_json::Map<String, serde_json::Value> =
        (0..vocab).map(|i| (format!("w{i}"), serde_json::Value::from(i))).collect();
    serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "w0"}})
}

/// A byte-level BPE `tokenizer.json` (as GPT-2 and SmolLM2 use): the 256 bytes (ids 0..255), a
/// few merges (JSON punctuation, a space before a quote), then `<|im_start|>` and `<|im_end|>`
/// (the end of a turn). `vocab` of a model using it: [`BYTE_LEVEL_VOCAB`].
pub fn byte_level_tokenizer() -> serde_json::Value {
    let chars = trex_model::tokenizer::byte_level_chars();
    let c = |b: u8| chars[b as usize].to_string();
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        (0..=255u8).map(|b| (c(b), serde_json::Value::from(b as u32))).collect();
    let pairs = [(b'{', b'"'), (b'"', b':'), (b'"', b','), (b' ', b'"'), (b'a', b'm'), (b'e', b'r')];
    let mut merges = Vec::new();
    for (i, (a, b)) in pairs.iter().enumerate() {
        vocab.insert(format!("{}{}", c(*a), c(*b)), serde_json::Value::from(256 + i as u32));
        merges.push(format!("{} {}", c(*a), c(*b)));
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let n = 256 + pairs.len();
    serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(n, "<|im_start|>"), special(n + 1, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}})
}

/// The vocabulary size of [`byte_level_tokenizer`].
pub const BYTE_LEVEL_VOCAB: usize = 256 + 6 + 2;

/// A tiny chat model with random weights (seed `seed`) and [`byte_level_tokenizer`] (ChatML,
/// `<|im_end|>` ends a turn), exported as a Hugging Face folder `dir/chat-model`; returns it.
pub fn tiny_chat_model(dir: &Path, seed: u64) -> PathBuf {
    let config = trex_model::LlamaConfig { vocab: BYTE_LEVEL_VOCAB, max_pos: 512, ..trex_model::LlamaConfig::tiny() };
    let tok_path = dir.join("tokenizer.json");
    std::fs::write(&tok_path, byte_level_tokenizer().to_string()).expect("write tokenizer.json");
    let cfg = serde_json::json!({"eos_token": "<|im_end|>", "bos_token": null});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).expect("write tokenizer_config.json");
    let tokenizer = trex_model::Tokenizer::from_file(&tok_path).expect("the tokenizer loads");
    let model_dir = dir.join("chat-model");
    let weights = trex_model::Weights::<f32>::random(&config, seed);
    trex_model::export_hf_dir(&model_dir, &config, &weights, &tokenizer).expect("export the tiny model");
    model_dir
}

/// A tiny model with random weights (seed 1) and [`word_level_tokenizer`], exported as a
/// Hugging Face folder `dir/model` the way a user would export one; returns that folder.
pub fn tiny_model(dir: &Path, config: &trex_model::LlamaConfig) -> PathBuf {
    let tok_path = dir.join("tokenizer.json");
    std::fs::write(&tok_path, word_level_tokenizer(config.vocab).to_string()).expect("write tokenizer.json");
    let tokenizer = trex_model::Tokenizer::from_file(&tok_path).expect("the tokenizer loads");
    let model_dir = dir.join("model");
    let weights = trex_model::Weights::<f32>::random(config, 1);
    trex_model::export_hf_dir(&model_dir, config, &weights, &tokenizer).expect("export the tiny model");
    model_dir
}
