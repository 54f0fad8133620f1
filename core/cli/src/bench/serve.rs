//! `bench serve`: load on an OpenAI-compatible chat-completions server (`trex-host serve`,
//! llama.cpp's server, vLLM, ...). At each concurrency, that many clients send greedy requests
//! back to back until the round's requests are answered; requests cycle through the given model
//! names (one name: a single adapter; several: adapters mixed in one batch). Prints requests/s,
//! generated tokens/s (from each reply's `usage`) and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use trex_plugin_host::llm::{ChatRequest, OpenAiClient, OpenAiConfig, TokenMeter};
use trex_sdk::types::ChatMessage;

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

/// One client per model name, through the same OpenAI client the searches use, with no retries:
/// a failed request fails the benchmark instead of hiding in its latency.
fn clients(opts: &ServeBench) -> Result<Vec<Arc<OpenAiClient>>> {
    let meter = Arc::new(TokenMeter::new(None));
    opts.models
        .iter()
        .map(|model| {
            let config = OpenAiConfig {
                base_url: opts.url.clone(),
                model: model.clone(),
                timeout_s: 600.0,
                max_retries: 0,
                ..OpenAiConfig::default()
            };
            Ok(Arc::new(OpenAiClient::new(config, meter.clone())?))
        })
        .collect()
}

/// A greedy request for `prompt` with at most `max_tokens` new tokens.
fn request(prompt: String, max_tokens: usize) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage { role: "user".into(), content: prompt }],
        temperature: Some(0.0),
        max_tokens: Some(max_tokens as u32),
        response_schema: None,
    }
}

/// Run one round at `concurrency`.
async fn round(opts: &ServeBench, clients: &[Arc<OpenAiClient>], concurrency: usize, requests: usize) -> Result<Round> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (next, clients, models, max_tokens) =
            (next.clone(), clients.to_vec(), opts.models.clone(), opts.max_tokens);
        workers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, anyhow::Error>(mine);
                }
                let model = &models[i % models.len()];
                let t = Instant::now();
                let reply = clients[i % clients.len()]
                    .complete(&request(prompt(i), max_tokens))
                    .await
                    .with_context(|| format!("request {i} ({model})"))?;
                if !reply.usage_reported {
                    bail!("request {i} ({model}): the reply has no usage.completion_tokens");
                }
                mine.push((t.elapsed().as_secs_f64(), u64::from(reply.completion_tokens)));
            }
        });
    }
    let mut latencies = Vec::new();
    let mut completion_tokens = 0;
    while let Some(done) = workers.join_next().await {
        for (latency, tokens) in done.context("a client task panicked")?? {
            latencies.push(latency);
            completion_tokens += tokens;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
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
pub async fn serve(opts: &ServeBench) -> Result<Vec<Round>> {
    if opts.models.is_empty() || opts.concurrency.is_empty() || opts.concurrency.contains(&0) {
        bail!("give at least one model and positive concurrency levels (e.g. --concurrency 1,8,32)");
    }
    if !opts.url.starts_with("http://") && !opts.url.starts_with("https://") {
        bail!("--url {}: give the server's base URL, e.g. http://127.0.0.1:8000/v1", opts.url);
    }
    let clients = clients(opts)?;
    clients[0]
        .complete(&request("hi".into(), 4))
        .await
        .with_context(|| format!("the warm-up request to {} failed", opts.url))?;
    println!("{HEADER}");
    let mut rounds = Vec::new();
    for &c in &opts.concurrency {
        let n = opts.requests.unwrap_or((4 * c).max(8));
        let r = round(opts, &clients, c, n).await?;
        println!("{}", row(opts, &r));
        rounds.push(r);
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.95)), (3.0, 5.0));
    }
}
