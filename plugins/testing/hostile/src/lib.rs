//! `hostile`: a data tool that misbehaves on request, for the host's containment tests and the
//! call-overhead benchmark. Never install it in a real plugin folder.
//!
//! `attack` selects the behaviour: `echo` (write records back: the well-behaved control), `pass`
//! (keep them by position),
//! `infinite-loop`, `memory-bomb`, `panic`, `huge-output`, `huge-stdout`, `read-file` (`path`),
//! `write-file` (`path`, `content`; the file is read back in the same call), `env` (report the
//! environment and arguments it can see), `connect` (open a TCP connection to
//! `127.0.0.1:port`), `sleep` (`millis`), `tiny-records` (`{}` until stopped), `scratch-files`
//! (files in /scratch until stopped), `scratch-bytes` (one growing file in /scratch),
//! `scratch-links` (links out of /scratch, left behind), `count-tokens` (`size` bytes in one
//! `tokenizer.count`), `count-many` (`size` one-word texts in one call), `forge` (terminal escapes and carriage returns in a log line and in a
//! `size`-byte error), `bad-record` (`content` written as a record as is), `stack-overflow`,
//! `exit` (`exit(0)` in the middle of the call), `scratch-rendezvous` (write `content` to
//! /scratch, ask the LLM, read it back).

use std::io::Write;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{ChatOptions, DataTool, LogLevel, PluginError, RecordReader, RecordWriter, RunStats};
use trex_sdk::types::ChatMessage;

unsafe extern "C" {
    /// wasi-libc's `symlink(2)` (std's is unstable on WASI).
    #[link_name = "symlink"]
    fn libc_symlink(target: *const std::ffi::c_char, link: *const std::ffi::c_char) -> std::ffi::c_int;
}

/// A symbolic link `link` pointing at `target`.
fn symlink(target: &str, link: &str) -> Result<(), PluginError> {
    let (t, l) = (std::ffi::CString::new(target).unwrap(), std::ffi::CString::new(link).unwrap());
    // SAFETY: both arguments are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc_symlink(t.as_ptr(), l.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(PluginError::new(format!("symlink {link} -> {target} failed"))) }
}

/// Recursion with a large frame, to overflow the stack.
#[inline(never)]
fn deep(n: u64) -> u64 {
    let frame = std::hint::black_box([n as u8; 64 * 1024]);
    if n == 0 { frame[0] as u64 } else { deep(n - 1) + frame[100] as u64 }
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    attack: String,
    path: String,
    content: String,
    port: u16,
    millis: u64,
    size: u64,
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
                let back = std::fs::read_to_string(&config.path).unwrap_or_default();
                output.push(&serde_json::json!({ "wrote": config.path, "read_back": back }))?;
            }
            "tiny-records" => loop {
                output.push_raw("{}".to_string())?;
            },
            "scratch-files" => {
                for i in 0u64.. {
                    std::fs::write(format!("/scratch/f{i}"), b"x")
                        .map_err(|e| PluginError::new(format!("cannot write file {i}: {e}")))?;
                }
            }
            "scratch-bytes" => {
                let chunk = vec![b'z'; 1 << 20];
                let mut f = std::fs::File::create("/scratch/big").map_err(|e| PluginError::new(e.to_string()))?;
                loop {
                    f.write_all(&chunk).map_err(|e| PluginError::new(format!("cannot write: {e}")))?;
                }
            }
            "scratch-links" => {
                symlink("..", "/scratch/up")?;
                symlink("../../../etc/passwd", "/scratch/x")?;
                output.push(&serde_json::json!({ "links": 2 }))?;
            }
            "count-many" => {
                let texts = vec!["w".to_string(); config.size as usize];
                let counts = trex_sdk::guest::count_tokens(&texts)?;
                output.push(&serde_json::json!({ "counted": counts.len() }))?;
            }
            "count-tokens" => {
                let text = "word ".repeat((config.size / 5) as usize);
                let counts = trex_sdk::guest::count_tokens(&[text])?;
                output.push(&serde_json::json!({ "counts": counts }))?;
            }
            "forge" => {
                trex_sdk::guest::log(LogLevel::Warn, "fine\r\u{1b}[2Knode 1 done: score 1.000 gain +9.999");
                let mut message = String::from("\u{1b}]0;pwned\u{7}\rnode 1 done: score 1.000 gain +9.999\n");
                message.push_str(&"y".repeat(config.size as usize));
                return Err(PluginError::new(message));
            }
            "bad-record" => output.push_raw(config.content.clone())?,
            "stack-overflow" => {
                let n = deep(100_000);
                output.push(&serde_json::json!({ "n": n }))?;
            }
            "exit" => std::process::exit(0),
            "scratch-rendezvous" => {
                std::fs::write("/scratch/mine.txt", &config.content).map_err(|e| PluginError::new(e.to_string()))?;
                let reply = trex_sdk::guest::chat(
                    &[ChatMessage { role: "user".into(), content: config.content.clone() }],
                    &ChatOptions::default(),
                )?;
                let back = std::fs::read_to_string("/scratch/mine.txt").map_err(|e| PluginError::new(e.to_string()))?;
                let seen: Vec<String> = std::fs::read_dir("/scratch")
                    .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                output.push(&serde_json::json!({ "read_back": back, "reply": reply.content, "scratch": seen }))?;
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
