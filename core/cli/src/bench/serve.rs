//! `bench serve`: load on an OpenAI-compatible chat-completions server (`trex-host serve`,
//! llama.cpp's server, vLLM, ...). At each concurrency, that many clients send greedy requests
//! back to back until the round's requests are answered; requests cycle through the given model
//! names (one name: a single adapter; several: adapters mixed in one batch). Prints requests/s,
//! generated tokens/s (from each reply's `usage`) and latency percentiles.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// What `bench serve` runs.
#[derive(Debug, Clone)]
pub struct ServeBench {
    /// `http://HOST:PORT/v1`.
    pub url: String,
    /// Model names, cycled through request by request.
    pub models: Vec<String>,
    /// Clients at once, one round each.
    pub concurrency: Vec<usize>,
    /// Requests per round (`None`: 4 per client, at least 8).
    pub requests: Option<usize>,
    /// `max_tokens` of each request.
    pub max_tokens: usize,
    /// The first column of the table.
    pub label: String,
}

/// One round's figures.
#[derive(Debug, Clone)]
pub struct Round {
    /// Clients at once.
    pub concurrency: usize,
    /// Requests answered.
    pub requests: usize,
    /// Tokens generated, by the replies' `usage`.
    pub completion_tokens: u64,
    /// Wall time of the round.
    pub seconds: f64,
    /// Latency of each request, sorted.
    pub latencies: Vec<f64>,
}

/// The prompts, varied so that no two neighbours share a reply.
fn prompt(i: usize) -> String {
    const ASKS: [&str; 8] = [
        "Convert {} kilometres to miles.",
        "Write one sentence about the number {}.",
        "What is {} times 7? Explain briefly.",
        "Name {} fruits and say what colour each is.",
        "Give a short title for a story about {} cats.",
        "How many minutes are in {} hours?",
        "List three facts about the year 19{}.",
        "Describe a city with {} bridges in two sentences.",
    ];
    ASKS[i % ASKS.len()].replace("{}", &(10 + i * 7 % 83).to_string())
}

/// `host:port` and the path prefix of a base URL.
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("http://").with_context(|| format!("--url {url}: give an http:// URL"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((host.to_string(), format!("/{}", path.trim_end_matches('/'))))
}

/// One request; the reply's body.
fn post(host: &str, path: &str, body: &str) -> Result<Value> {
    let mut s = TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    write!(
        s,
        "POST {path}/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").context("the server's reply has no HTTP head")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("HTTP {status}: {}", body.chars().take(300).collect::<String>());
    }
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    serde_json::from_str(&body)
        .with_context(|| format!("the reply is not JSON: {}", body.chars().take(300).collect::<String>()))
}

/// The body of a chunked HTTP/1.1 reply.
fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
    }
    out
}

/// Run one round at `concurrency`.
fn round(opts: &ServeBench, (host, path): (&str, &str), concurrency: usize, requests: usize) -> Result<Round> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<Result<Vec<(f64, u64)>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(f64, u64)>> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            return Ok(mine);
                        }
                        let model = &opts.models[i % opts.models.len()];
                        let body = json!({"model": model, "messages": [{"role": "user", "content": prompt(i)}],
                            "max_tokens": opts.max_tokens, "temperature": 0})
                        .to_string();
                        let t = Instant::now();
                        let reply = post(host, path, &body).with_context(|| format!("request {i} ({model})"))?;
                        let tokens = reply["usage"]["completion_tokens"]
                            .as_u64()
                            .with_context(|| format!("request {i}: the reply has no usage.completion_tokens"))?;
                        mine.push((t.elapsed().as_secs_f64(), tokens));
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a client thread panicked")).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut completion_tokens = 0;
    for r in results {
        for (latency, tokens) in r? {
            latencies.push(latency);
            completion_tokens += tokens;
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Round { concurrency, requests, completion_tokens, seconds, latencies })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The table's header.
pub const HEADER: &str = "| server | models | concurrency | requests | generated tokens | req/s | generated tok/s | latency p50 | latency p95 |\n|---|---|---|---|---|---|---|---|---|";

/// One table row.
pub fn row(opts: &ServeBench, r: &Round) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} s | {:.1} s |",
        opts.label,
        opts.models.join(", "),
        r.concurrency,
        r.requests,
        r.completion_tokens,
        r.requests as f64 / r.seconds,
        r.completion_tokens as f64 / r.seconds,
        percentile(&r.latencies, 0.5),
        percentile(&r.latencies, 0.95),
    )
}

/// Run every round, printing each row as it finishes (after one warm-up request).
pub fn serve(opts: &ServeBench) -> Result<Vec<Round>> {
    if opts.models.is_empty() || opts.concurrency.is_empty() || opts.concurrency.contains(&0) {
        bail!("give at least one model and positive concurrency levels (e.g. --concurrency 1,8,32)");
    }
    let (host, path) = split_url(&opts.url)?;
    let warm = json!({"model": opts.models[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    post(&host, &path, &warm.to_string()).with_context(|| format!("the warm-up request to {} failed", opts.url))?;
    println!("{HEADER}");
    let mut rounds = Vec::new();
    for &c in &opts.concurrency {
        let n = opts.requests.unwrap_or((4 * c).max(8));
        let r = round(opts, (&host, &path), c, n)?;
        println!("{}", row(opts, &r));
        rounds.push(r);
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_prefix() {
        assert_eq!(split_url("http://127.0.0.1:8000/v1").unwrap(), ("127.0.0.1:8000".into(), "/v1".into()));
        assert_eq!(split_url("http://h:1/v1/").unwrap(), ("h:1".into(), "/v1".into()));
        assert!(split_url("https://h/v1").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(unchunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.95)), (3.0, 5.0));
    }
}
