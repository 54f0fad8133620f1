//! Fuzzing the host's parsers of untrusted bytes on the stable toolchain: a seeded mutational
//! fuzzer (no coverage guidance; cargo-fuzz needs nightly). Each target starts from valid
//! inputs made here, mutates them (bit flips, special bytes and numbers, truncation, repeated
//! and spliced chunks) and hands the result to the parser, which may refuse it with an error
//! but must not panic. The input being tried is written to `target/fuzz/<target>-<seed>.current`
//! first, so even an abort leaves it behind; a panic's input is kept as
//! `target/fuzz/<target>-crash-<hash>`.
//!
//! The CI run tries `TREX_FUZZ_ITERS` inputs per target (default 300). `TREX_FUZZ_SECONDS`
//! gives each target that long instead, and `TREX_FUZZ_MINUTES` (what `cargo xtask fuzz
//! --minutes N` sets) shares that many minutes among all targets; either prints the inputs tried
//! per target.
//! `TREX_FUZZ_SEED` picks another sequence of inputs (for runs side by side).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trex_sdk::rng::SplitMix64;

/// One parser, fed the bytes of one file in `dir`.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: fn(&[u8], &Path),
}

fn mutate(rng: &mut SplitMix64, seeds: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = 1 + rng.next_u64() % 4;
    for _ in 0..rounds {
        let len = b.len().max(1);
        let at = (rng.next_u64() as usize) % len;
        match rng.next_u64() % 9 {
            0 if !b.is_empty() => b[at] ^= 1 << (rng.next_u64() % 8),
            1 if !b.is_empty() => b[at] = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'[', b'\n'][rng.next_u64() as usize % 8],
            2 => b.truncate(at),
            3 => {
                let end = (at + 1 + rng.next_u64() as usize % 64).min(b.len());
                let chunk = b[at.min(end)..end].to_vec();
                for _ in 0..(1 + rng.next_u64() % 8) {
                    b.splice(at..at, chunk.iter().copied());
                }
            }
            4 => {
                let n = [b"4294967295".as_slice(), b"-1", b"18446744073709551615", b"1e308", b"NaN", b"0"];
                let pick = n[rng.next_u64() as usize % n.len()];
                b.splice(at.min(b.len())..at.min(b.len()), pick.iter().copied());
            }
            5 if b.len() >= 8 => {
                // A length or count field set to something huge.
                let at = at.min(b.len() - 8);
                b[at..at + 8]
                    .copy_from_slice(&[u64::MAX, 1 << 40, u32::MAX as u64][rng.next_u64() as usize % 3].to_le_bytes());
            }
            6 => {
                let other = &seeds[rng.next_u64() as usize % seeds.len()];
                let from = rng.next_u64() as usize % other.len().max(1);
                b.truncate(at);
                b.extend_from_slice(&other[from.min(other.len())..]);
            }
            7 if !b.is_empty() => {
                let end = (at + 1 + rng.next_u64() as usize % 32).min(b.len());
                b.drain(at..end);
            }
            _ => b.insert(at.min(b.len()), rng.next_u64() as u8),
        }
    }
    b
}

/// Try `target` on mutated inputs until `iterations` or `deadline`: the inputs tried, or the
/// file keeping the input it panicked on.
fn fuzz(
    target: &Target,
    seed: u64,
    iterations: Option<u64>,
    deadline: Option<Instant>,
    out: &Path,
) -> Result<u64, PathBuf> {
    let dir = ram_tempdir();
    let mut rng = SplitMix64(seed ^ hash(target.name.as_bytes()));
    let current = out.join(format!("{}-{seed}.current", target.name));
    // Kept open and rewritten in place: closing a file just truncated makes ext4 flush it, and
    // that once per input left the fuzzer waiting on the disk most of the time. The kernel
    // keeps what was written if the process dies.
    let mut current_file = std::fs::File::create(&current).unwrap();
    let mut tried = 0;
    loop {
        if iterations.is_some_and(|n| tried >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let seed = &target.seeds[rng.next_u64() as usize % target.seeds.len()];
        let input = if tried == 0 { seed.clone() } else { mutate(&mut rng, &target.seeds, seed) };
        {
            use std::io::{Seek, Write};
            current_file.set_len(0).unwrap();
            current_file.rewind().unwrap();
            current_file.write_all(&input).unwrap();
        }
        let run = target.run;
        let path = dir.path().to_path_buf();
        if std::panic::catch_unwind(AssertUnwindSafe(|| run(&input, &path))).is_err() {
            let kept = out.join(format!("{}-crash-{:016x}", target.name, hash(&input)));
            std::fs::write(&kept, &input).unwrap();
            return Err(kept);
        }
        tried += 1;
    }
    drop(current_file);
    let _ = std::fs::remove_file(&current);
    Ok(tried)
}

/// A temporary folder in memory (`/dev/shm`) where there is one: the targets rewrite their
/// files once per input, and on a disk that is I/O rather than parsing.
fn ram_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir().then(|| tempfile::tempdir_in(shm)) {
        Some(Ok(d)) => d,
        _ => tempfile::tempdir().unwrap(),
    }
}

fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn root() -> PathBuf {
    trex_tests::root()
}

/// A small valid model in the Hugging Face layout, whose files the model targets start from.
fn model_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = ram_tempdir();
    let model = trex_tests::tiny_model(dir.path(), &trex_model::LlamaConfig::tiny());
    (dir, model)
}

/// The standard plugins, loaded once for the targets that fuzz a plugin's parser through the
/// host (a plugin may refuse an input with an error; a panic, trap, hang or memory blow-up is a
/// crash).
struct Plugins {
    rt: tokio::runtime::Runtime,
    host: trex_plugin_host::PluginHost,
    _dir: tempfile::TempDir,
}

impl Plugins {
    /// The standard plugins on a host of their own, with `llm` behind `llm.chat`.
    fn load(llm: Option<std::sync::Arc<dyn trex_plugin_host::llm::LlmClient>>) -> Plugins {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let folder = trex_tests::standard_plugins(dir.path());
        let config = trex_plugin_host::HostConfig { llm, ..crate::test_config(dir.path().join("s")) };
        let host = rt.block_on(trex_plugin_host::PluginHost::discover(&folder, config)).unwrap();
        Plugins { rt, host, _dir: dir }
    }
}

fn plugins() -> &'static Plugins {
    static PLUGINS: std::sync::OnceLock<Plugins> = std::sync::OnceLock::new();
    PLUGINS.get_or_init(|| Plugins::load(None))
}

/// Panics (so that the fuzzer keeps the input) when a plugin call ended in a crash rather than
/// an error the plugin chose to return.
fn survived<T>(result: Result<T, trex_plugin_host::PluginError>) {
    use trex_plugin_host::PluginError as E;
    if let Err(e @ (E::Panic { .. } | E::Trap { .. } | E::Timeout { .. } | E::Memory { .. } | E::Fuel { .. })) = result
    {
        panic!("{e}");
    }
}

/// An evaluator run on one item: the first line of `bytes` is the example (JSON), the rest the
/// model's output.
fn evaluate_one(plugin: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (example, output) = text.split_once('\n').unwrap_or(("{}", &text));
    let example = serde_json::from_str(example).unwrap_or(serde_json::json!({}));
    let items = [trex_plugin_host::EvalItem { id: "0".into(), example, output: output.into() }];
    let p = plugins();
    survived(p.rt.block_on(p.host.evaluate(plugin, &serde_json::json!({}), &items, 1, &Default::default())));
}

/// A loopback server that answers every request, one at a time, with the body last given to
/// [`reply_with`] (one server for the whole run: a server per input would exhaust the process's
/// file descriptors within minutes).
fn reply_server() -> &'static (String, std::sync::Mutex<String>) {
    static SERVER: std::sync::OnceLock<(String, std::sync::Mutex<String>)> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &reply_server().1.lock().unwrap().clone());
            }
        });
        (base_url, std::sync::Mutex::new(String::new()))
    })
}

/// Read one HTTP request from `stream` and answer it with `body`, closing the connection.
fn answer(stream: std::net::TcpStream, body: &str) {
    use std::io::{BufRead, Read, Write};
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = std::io::BufReader::new(clone);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut request = vec![0u8; length.min(1 << 24)];
    let _ = reader.read_exact(&mut request);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Have the reply server answer with `body` from now on; its base URL.
fn reply_with(body: String) -> &'static str {
    let (base_url, slot) = reply_server();
    *slot.lock().unwrap() = body;
    base_url
}

/// A host with the `llm` Researcher, its LLM the reply server.
fn researcher_host() -> &'static Plugins {
    static HOST: std::sync::OnceLock<Plugins> = std::sync::OnceLock::new();
    HOST.get_or_init(|| Plugins::load(Some(crate::augment::llm_client(&reply_server().0))))
}

/// The `llm` Researcher's proposals in a fresh session whose LLM answers with `content`.
fn researcher_proposes(
    content: &str,
) -> Result<Vec<Result<trex_sdk::types::Proposal, trex_plugin_host::InvalidProposal>>, trex_plugin_host::PluginError> {
    reply_with(trex_tests::llm_server::completion_body(content, 40, 20));
    let p = researcher_host();
    let env = trex_plugin_host::CallEnv::default();
    p.rt.block_on(async {
        let mut r = p.host.open_researcher("llm", &serde_json::json!({}), &crate::roundtrip::brief(1), &env).await?;
        r.propose(&crate::roundtrip::context_at_node(), 2).await
    })
}

fn targets() -> Vec<Target> {
    let (_keep, model) = model_dir();
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let config = trex_model::LlamaConfig::tiny();
    // An adapter of the tiny model, saved the way a node saves one.
    let adapter_dir = tempfile::tempdir().unwrap();
    let recipe = trex_sdk::types::TrainRecipe::default();
    let adapter = trex_model::LoraAdapter::from_recipe(&config, &recipe);
    trex_model::train::peft::save_adapter(adapter_dir.path(), &adapter, "tiny").unwrap();
    let gguf = {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let w: Vec<f32> = (0..64).map(|i| i as f32 / 7.0).collect();
        trex_model::gguf::write_gguf(
            &p,
            &[
                ("general.architecture", trex_model::gguf::Value::Str("llama".into())),
                ("llama.block_count", trex_model::gguf::Value::U64(1)),
            ],
            &[
                ("w", &[8, 8], &w, trex_model::gguf::TensorType::F32),
                ("v", &[64], &w, trex_model::gguf::TensorType::F16),
            ],
        )
        .unwrap();
        read(p)
    };
    let texts = |dir: &str, file: &str| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .flatten()
            .flat_map(|e| {
                let p = e.path();
                if p.is_dir() { std::fs::read_dir(p).unwrap().flatten().map(|e| e.path()).collect() } else { vec![p] }
            })
            .flat_map(|p| if p.is_dir() { vec![p.join(file)] } else { vec![p] })
            .filter(|p| p.file_name().is_some_and(|n| n == file))
            .filter_map(|p| std::fs::read(p).ok())
            .collect();
        v.sort();
        v.truncate(12);
        v
    };
    let journal = {
        // A real journal: a one-node search on the tiny task is more than this test should
        // run, so the events are written as a search writes them.
        let (task, _) = trex_lab::task::Task::load(
            &root().join("examples/tasks/unit-conversion/task.toml"),
            &trex_lab::task::LocalFiles,
        )
        .unwrap();
        let task = serde_json::to_value(task).unwrap();
        let start = serde_json::json!({"t": 0.0, "event": "start", "format": 1, "task_file": "task.toml",
            "task": task, "settings": serde_json::to_value(trex_lab::Settings::default()).unwrap(), "model": "m"});
        let lines = [
            start,
            serde_json::json!({"t": 0.0, "event": "session", "resumed": false}),
            serde_json::json!({"t": 0.1, "event": "created", "node": 0, "parent": null, "proposal": null, "llm_tokens": 0}),
            serde_json::json!({"t": 0.2, "event": "started", "node": 0}),
            serde_json::json!({"t": 0.3, "event": "failed", "node": 0, "error": "x", "lesson": "y",
                "cost": serde_json::to_value(trex_lab::tree::Cost::default()).unwrap()}),
            serde_json::json!({"t": 0.4, "event": "finished", "reason": "done"}),
        ];
        lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes()
    };
    vec![
        Target {
            name: "gguf",
            seeds: vec![gguf],
            run: |b, d| {
                if let Ok(g) = trex_model::gguf::GgufFile::open(&write(d, "m.gguf", b)) {
                    for name in g.tensors.keys() {
                        let _ = g.tensor_f32(name);
                    }
                }
            },
        },
        Target {
            name: "safetensors",
            seeds: vec![
                read(model.join("model.safetensors")),
                read(adapter_dir.path().join("adapter_model.safetensors")),
            ],
            run: |b, d| drop(trex_model::read_safetensors_file(&write(d, "m.safetensors", b))),
        },
        Target {
            name: "tokenizer-json",
            seeds: vec![read(model.join("tokenizer.json"))],
            run: |b, d| {
                if let Ok(t) = trex_model::Tokenizer::from_file(&write(d, "tokenizer.json", b)) {
                    let _ = t.encode("w1 w2 w3 unknown");
                }
            },
        },
        Target {
            name: "hf-config-json",
            seeds: vec![read(model.join("config.json"))],
            run: |b, d| {
                let (_keep, model) = model_dir();
                std::fs::write(model.join("config.json"), b).unwrap();
                let _ = d;
                drop(trex_model::BaseModel::load(&model));
            },
        },
        Target {
            name: "peft-adapter-config",
            seeds: vec![read(adapter_dir.path().join("adapter_config.json"))],
            run: |b, d| {
                let dir = d.join("adapter");
                std::fs::create_dir_all(&dir).unwrap();
                let weights = trex_model::LoraAdapter::from_recipe(
                    &trex_model::LlamaConfig::tiny(),
                    &trex_sdk::types::TrainRecipe::default(),
                );
                trex_model::train::peft::save_adapter(&dir, &weights, "tiny").unwrap();
                std::fs::write(dir.join("adapter_config.json"), b).unwrap();
                drop(trex_model::train::peft::load_adapter(&dir, &trex_model::LlamaConfig::tiny()));
            },
        },
        Target {
            name: "plugin-toml",
            seeds: texts("plugins", "plugin.toml"),
            run: |b, d| {
                let text = String::from_utf8_lossy(b);
                drop(trex_plugin_host::Manifest::parse(&text, &d.join("plugin.toml")));
            },
        },
        Target {
            name: "task-toml",
            seeds: texts("examples/tasks", "task.toml"),
            run: |b, d| drop(trex_lab::task::Task::load(&write(d, "task.toml", b), &trex_lab::task::LocalFiles)),
        },
        Target {
            name: "journal",
            seeds: vec![journal],
            run: |b, d| {
                write(d, "journal.jsonl", b);
                if let Ok(entries) = trex_lab::journal::Journal::read(d) {
                    let _ = trex_lab::RunState::replay(&entries);
                }
            },
        },
        Target {
            name: "records-jsonl",
            seeds: vec![
                std::fs::read(root().join("examples/pipelines/unit-conversion/data/validation.jsonl"))
                    .unwrap()
                    .into_iter()
                    .take(4000)
                    .collect(),
            ],
            run: |b, d| drop(trex_lab::pipeline::read_jsonl(&write(d, "r.jsonl", b))),
        },
        Target {
            name: "records-csv",
            seeds: vec![
                b"q,a,split\n\"1,5 km\",1500,train\n2 km,2000,test\nbroken\n3 km,3000,train\n".to_vec(),
                b"SMILES,SPLIT\nCCO,train\n\"C(=O)\"\"O\",test\nc1ccccc1,train\n".to_vec(),
            ],
            run: |b, d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                write(&data, "t.csv", b);
                let env = trex_plugin_host::CallEnv { dataset_dir: Some(data), ..Default::default() };
                let p = plugins();
                for config in [
                    serde_json::json!({"path": "t.csv"}),
                    serde_json::json!({"path": "t.csv", "numbers": true, "where_column": "split", "where_equals": "train"}),
                ] {
                    survived(p.rt.block_on(p.host.run_data_tool("load-csv", &config, vec![], &env)));
                }
            },
        },
        Target {
            name: "llm-reply",
            seeds: vec![
                trex_tests::llm_server::completion_body("{\"rationale\": \"r\", \"data_recipe\": []}", 12, 7)
                    .into_bytes(),
                br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"finish_reason":"length","message":{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#.to_vec(),
            ],
            run: |b, _| {
                use trex_plugin_host::llm::LlmClient;
                let client = crate::augment::llm_client(reply_with(String::from_utf8_lossy(b).into_owned()));
                let request = trex_plugin_host::llm::ChatRequest {
                    messages: vec![trex_sdk::types::ChatMessage { role: "user".into(), content: "hi".into() }],
                    temperature: None,
                    max_tokens: Some(8),
                    response_schema: Some(serde_json::json!({"type": "object"})),
                };
                drop(plugins().rt.block_on(client.chat("fuzz", request)));
            },
        },
        Target {
            name: "llm-researcher-reply",
            // The reply's text, as the `llm` Researcher parses and checks it (the envelope around
            // it is the llm-reply target's).
            seeds: vec![
                serde_json::json!({"proposals": [{"rationale": "lower the rate", "data_recipe": {"steps": []},
                    "train_recipe": {"learning_rate": 1e-4, "epochs": 1.0, "lora_rank": 8}}]})
                .to_string()
                .into_bytes(),
                serde_json::json!({"proposals": [
                    {"rationale": "a", "data_recipe": {"steps": [{"plugin": "dedup-exact", "config": {}}]},
                     "train_recipe": {"learning_rate": 5e-4, "targets": ["q_proj", "v_proj"], "continue_from_parent": true}},
                    {"rationale": "b", "data_recipe": {"steps": []}, "train_recipe": {"lora_dropout": 0.1}}]})
                .to_string()
                .into_bytes(),
                b"Here is my plan:\n```json\n{\"proposals\": [{\"rationale\": \"r\"}]}\n```".to_vec(),
            ],
            run: |b, _| survived(researcher_proposes(&String::from_utf8_lossy(b))),
        },
        Target {
            name: "smiles",
            seeds: ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "C[C@@H](N)C(=O)O", "[Na+].[Cl-]", "C1CC2CCC1C2",
                "O=C(N)c1ccc[nH]1", "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1", "[13CH3:1]/C=C\\Br"]
                .iter()
                .map(|m| format!("{{}}\n{m}").into_bytes())
                .collect(),
            run: |b, _| evaluate_one("smiles", b),
        },
        Target {
            name: "bfcl-ast",
            seeds: vec![
                br#"{"answer": [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]}
[{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}]"#
                    .to_vec(),
                br#"{"answer": [{"f": {"a": [1]}}, {"g": {"b": ["x"]}}]}
[{"name": "g", "arguments": {"b": "x"}}, {"name": "f", "arguments": {"a": 1}}]"#
                    .to_vec(),
                br#"{"answer": [{"book": {"where": [{"city": ["Paris"], "days": [2, ""]}], "tags": [["a", "b"]]}}]}
calculate(where={'city': 'Paris'}, tags=["a", "b"], x=1.5e3)"#
                    .to_vec(),
            ],
            run: |b, _| evaluate_one("bfcl-ast", b),
        },
    ]
}

#[test]
fn the_parsers_of_untrusted_bytes_refuse_mutated_inputs_without_panicking() {
    let iterations = std::env::var("TREX_FUZZ_ITERS").ok().and_then(|n| n.parse().ok());
    let env = |name: &str| std::env::var(name).ok().and_then(|n| n.parse::<f64>().ok());
    let seed: u64 = std::env::var("TREX_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0xF022);
    let out = root().join("target/fuzz");
    std::fs::create_dir_all(&out).unwrap();
    // Panics are caught and reported by `fuzz`; keep the default hook from printing each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let targets = targets();
    let seconds = env("TREX_FUZZ_SECONDS").or(env("TREX_FUZZ_MINUTES").map(|m| m * 60.0 / targets.len() as f64));
    let mut table = Vec::new();
    let mut crashes = Vec::new();
    for t in &targets {
        let deadline = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
        let started = Instant::now();
        let n = match (iterations, deadline) {
            (None, None) => fuzz(t, seed, Some(300), None, &out),
            (i, d) => fuzz(t, seed, i, d, &out),
        };
        match n {
            Ok(n) => table.push((t.name, n, started.elapsed().as_secs_f64())),
            Err(kept) => crashes.push(format!("`{}` panicked on the input kept at {}", t.name, kept.display())),
        }
    }
    std::panic::set_hook(hook);
    assert!(crashes.is_empty(), "{}", crashes.join("\n"));
    eprintln!("fuzz (seed {seed}): target, inputs tried, seconds");
    for (name, n, s) in &table {
        eprintln!("  {name:<22} {n:>9} {s:>8.1}");
    }
}

/// Every input a fuzz run ever crashed on, committed under `tests/fixtures/fuzz/<target>/`, is
/// refused without a panic now.
#[test]
fn every_input_that_once_crashed_a_parser_is_refused_cleanly() {
    let targets = targets();
    let dir = root().join("tests/fixtures/fuzz");
    let mut replayed = 0;
    for t in &targets {
        for e in std::fs::read_dir(dir.join(t.name)).into_iter().flatten().flatten() {
            let input = std::fs::read(e.path()).unwrap();
            let scratch = tempfile::tempdir().unwrap();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input, scratch.path())));
            assert!(result.is_ok(), "{}: `{}` panicked", e.path().display(), t.name);
            replayed += 1;
        }
    }
    assert!(replayed > 0 || !dir.exists(), "the committed inputs under {} name no target", dir.display());
}

/// The targets that go through a plugin or the LLM client reach the parser: their first seed
/// is accepted (a target whose every input fails early would fuzz nothing).
#[test]
fn the_plugin_and_client_targets_reach_their_parsers() {
    let p = plugins();
    let item = |example: serde_json::Value, output: &str| trex_plugin_host::EvalItem {
        id: "0".into(),
        example,
        output: output.into(),
    };
    let none = trex_plugin_host::CallEnv::default();
    let smiles = p.rt.block_on(p.host.evaluate(
        "smiles",
        &serde_json::json!({}),
        &[item(serde_json::json!({}), "CCO")],
        1,
        &none,
    ));
    assert!(smiles.unwrap().results[0].passed);
    let bfcl = targets().into_iter().find(|t| t.name == "bfcl-ast").unwrap();
    let text = String::from_utf8(bfcl.seeds[0].clone()).unwrap();
    let (example, output) = text.split_once('\n').unwrap();
    let items = [item(serde_json::from_str(example).unwrap(), output)];
    let report = p.rt.block_on(p.host.evaluate("bfcl-ast", &serde_json::json!({}), &items, 1, &none)).unwrap();
    assert!(report.results[0].passed, "{}", report.results[0].explanation);
    let csv = targets().into_iter().find(|t| t.name == "records-csv").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t.csv", &csv.seeds[0]);
    let env = trex_plugin_host::CallEnv { dataset_dir: Some(dir.path().to_path_buf()), ..Default::default() };
    let run = p.rt.block_on(p.host.run_data_tool("load-csv", &serde_json::json!({"path": "t.csv"}), vec![], &env));
    assert_eq!(run.unwrap().records.len(), 3, "three good rows, one short row skipped");
    let llm = targets().into_iter().find(|t| t.name == "llm-researcher-reply").unwrap();
    let proposals = researcher_proposes(&String::from_utf8(llm.seeds[0].clone()).unwrap()).unwrap();
    assert_eq!(proposals.len(), 1, "{proposals:?}");
    assert!(proposals[0].is_ok(), "the seed reply parses and passes the checks: {proposals:?}");
    let broken = researcher_proposes("{\"proposals\": [{\"rationale\": 3}]}");
    assert!(broken.is_err() || broken.unwrap().iter().all(Result::is_err), "a malformed reply is refused");
}
