//! `hostile`: a data tool that misbehaves on request, for the host's containment tests and the
//! call-overhead benchmark. Never install it in a real plugin folder.
//!
//! `attack` selects the behaviour: `echo` (write records back: the well-behaved control), `pass`
//! (keep them by position),
//! `infinite-loop`, `memory-bomb`, `panic`, `huge-output`, `huge-stdout`, `read-file` (`path`),
//! `write-file` (`path`, `content`), `env` (report the environment and arguments it can see),
//! `connect` (open a TCP connection to `127.0.0.1:port`), `sleep` (`millis`).

use std::io::Write;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, RecordReader, RecordWriter, RunStats};

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    attack: String,
    path: String,
    content: String,
    port: u16,
    millis: u64,
}

struct Hostile;

impl DataTool for Hostile {
    type Config = Config;
    const NAME: &'static str = "hostile";
    const DESCRIPTION: &'static str = "Misbehaves on request; for containment tests only.";

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        match config.attack.as_str() {
            "echo" => {
                while let Some(r) = input.next_raw() {
                    output.push_raw(r)?;
                }
            }
            "pass" => {
                while input.next_text().is_some() {
                    output.pass(input.position())?;
                }
            }
            "infinite-loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 16 << 20];
                    chunk[0] = 1;
                    hoard.push(std::hint::black_box(chunk));
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "huge-output" => {
                let blob = "x".repeat(64 * 1024);
                loop {
                    output.push(&serde_json::json!({ "blob": blob }))?;
                }
            }
            "huge-stdout" => {
                let line = "y".repeat(1024);
                let mut out = std::io::stdout();
                for _ in 0..200_000 {
                    let _ = writeln!(out, "{line}");
                }
            }
            "read-file" => {
                let text = std::fs::read_to_string(&config.path)
                    .map_err(|e| PluginError::new(format!("cannot read {}: {e}", config.path)))?;
                output.push(&serde_json::json!({ "path": config.path, "content": text }))?;
            }
            "write-file" => {
                std::fs::write(&config.path, &config.content)
                    .map_err(|e| PluginError::new(format!("cannot write {}: {e}", config.path)))?;
                output.push(&serde_json::json!({ "wrote": config.path }))?;
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let args: Vec<String> = std::env::args().collect();
                let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default();
                output.push(&serde_json::json!({ "vars": vars, "args": args, "cwd": cwd }))?;
            }
            "connect" => {
                let addr = format!("127.0.0.1:{}", config.port);
                std::net::TcpStream::connect(&addr)
                    .map_err(|e| PluginError::new(format!("cannot connect to {addr}: {e}")))?;
                output.push(&serde_json::json!({ "connected": addr }))?;
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_millis(config.millis)),
            other => return Err(PluginError::field("attack", format!("unknown attack `{other}`"))),
        }
        Ok(RunStats::default())
    }
}

trex_sdk::export_data_tool!(Hostile);
