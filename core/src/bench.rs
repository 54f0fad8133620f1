//! `trex-host bench plugins`: what crossing the plugin boundary costs, printed as a table.
//!
//! Measures, each as the median of `repeat` runs:
//! - loading a component cold (compile with Cranelift) versus from the on-disk cache;
//! - one evaluator call in a fresh instance (instantiate + evaluate + aggregate), and the
//!   per-call cost of many one-item calls into one instance, next to a native Rust call;
//! - a 10 000-record batch through a pass-through data tool (pure boundary cost) and through
//!   `dedup-exact` (a real tool), next to moving the same records natively.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::plugin::{CallEnv, EvalItem, HostConfig, PluginHost};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn spread(v: &[Duration]) -> (Duration, Duration) {
    (*v.iter().min().unwrap_or(&Duration::ZERO), *v.iter().max().unwrap_or(&Duration::ZERO))
}

struct Row {
    what: String,
    trex: String,
    native: String,
    note: String,
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Synthetic records of about 120 bytes, 10% duplicated (generated, not real data).
fn records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let k = if i % 10 == 9 { i - 1 } else { i };
            serde_json::json!({
                "id": i,
                "prompt": format!("What is item number {k} in the catalogue?"),
                "completion": format!("Item {k} is a widget of size {}.", k % 17),
            })
            .to_string()
        })
        .collect()
}

/// Run the benchmark against the plugins in `plugins_dir` (and `plugins_dir/testing`).
pub async fn plugins(plugins_dir: &Path, repeat: usize) -> Result<()> {
    let repeat = repeat.max(3);
    let testing = plugins_dir.join("testing");
    let hostile_manifest = testing.join("hostile/plugin.toml");
    let dedup_manifest = plugins_dir.join("dedup-exact/plugin.toml");
    let exact_manifest = plugins_dir.join("exact-match/plugin.toml");
    for m in [&hostile_manifest, &dedup_manifest, &exact_manifest] {
        anyhow::ensure!(m.is_file(), "{} is missing: run `cargo xtask build-plugins` first", m.display());
    }
    let mut rows = Vec::new();

    // Cold versus cached load.
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let cache = tempfile::tempdir()?;
        let config = HostConfig { cache_dir: Some(cache.path().to_path_buf()), ..HostConfig::default() };
        let mut host = PluginHost::new(config.clone())?;
        let p = host.load(&dedup_manifest).await?;
        anyhow::ensure!(!p.load.from_cache, "the first load must compile");
        cold.push(p.load.load_time);
        let mut host = PluginHost::new(config)?;
        let p = host.load(&dedup_manifest).await?;
        anyhow::ensure!(p.load.from_cache, "the second load must come from the cache");
        cached.push(p.load.load_time);
    }
    let size = std::fs::metadata(plugins_dir.join("dedup-exact/dedup_exact.wasm")).map(|m| m.len()).unwrap_or(0);
    let cold_m = median(cold);
    let cached_m = median(cached);
    rows.push(Row {
        what: format!("load dedup-exact ({} KiB component)", size / 1024),
        trex: format!("cold {} / cached {}", ms(cold_m), ms(cached_m)),
        native: "-".into(),
        note: format!("cache is {:.0}x faster", cold_m.as_secs_f64() / cached_m.as_secs_f64().max(1e-9)),
    });

    let mut host = PluginHost::new(HostConfig { cache_dir: None, ..HostConfig::default() })?;
    host.load(&hostile_manifest).await?;
    host.load(&dedup_manifest).await?;
    host.load(&exact_manifest).await?;
    let env = CallEnv::default();
    let cfg = serde_json::json!({});

    // Evaluator: one call in a fresh instance, and many calls into one instance.
    let one = vec![EvalItem { id: "0".into(), example: serde_json::json!({"answer": "4"}), output: "4".into() }];
    let mut fresh = Vec::new();
    for _ in 0..repeat * 5 {
        let t = Instant::now();
        host.evaluate("exact-match", &cfg, &one, 1, &env).await?;
        fresh.push(t.elapsed());
    }
    let calls = 1000;
    let many: Vec<EvalItem> = (0..calls)
        .map(|i| EvalItem { id: i.to_string(), example: serde_json::json!({"answer": "4"}), output: "4".into() })
        .collect();
    let mut per_call = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        host.evaluate("exact-match", &cfg, &many, 1, &env).await?;
        per_call.push(t.elapsed() / calls as u32);
    }
    let native_call = {
        let t = Instant::now();
        let n = 1_000_000u32;
        for i in 0..n {
            std::hint::black_box(native_empty_evaluate(std::hint::black_box(i)));
        }
        t.elapsed() / n
    };
    rows.push(Row {
        what: "evaluator call, fresh instance (instantiate + evaluate + aggregate)".into(),
        trex: us(median(fresh)),
        native: format!("{:.1} ns", native_call.as_secs_f64() * 1e9),
        note: "once per evaluation".into(),
    });
    rows.push(Row {
        what: "evaluator call, warm instance, 1 item per call".into(),
        trex: us(median(per_call)),
        native: format!("{:.1} ns", native_call.as_secs_f64() * 1e9),
        note: "batch items to amortize".into(),
    });

    // Data tools: 10 000 records through echo and dedup-exact.
    let batch = records(10_000);
    let bytes: usize = batch.iter().map(String::len).sum();
    let echo_cfg = serde_json::json!({"attack": "echo"});
    let (mut echo, mut dedup, mut native) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat {
        let input = batch.clone();
        let t = Instant::now();
        let run = host.run_data_tool("hostile", &echo_cfg, input, &env).await?;
        echo.push(t.elapsed());
        anyhow::ensure!(run.records_out == 10_000, "echo lost records");
        let input = batch.clone();
        let t = Instant::now();
        let run = host.run_data_tool("dedup-exact", &cfg, input, &env).await?;
        dedup.push(t.elapsed());
        anyhow::ensure!(run.records_out == 9_000, "dedup-exact kept {} of 10000, expected 9000", run.records_out);
        let input = batch.clone();
        let t = Instant::now();
        let out: Vec<String> = std::hint::black_box(input).into_iter().collect();
        std::hint::black_box(out);
        native.push(t.elapsed());
    }
    let (echo_m, dedup_m) = (median(echo.clone()), median(dedup.clone()));
    let (lo, hi) = spread(&echo);
    rows.push(Row {
        what: format!("10 000-record batch through pass-through tool ({} KiB)", bytes / 1024),
        trex: format!("{} ({:.2} µs/record; {}..{})", ms(echo_m), echo_m.as_secs_f64() * 1e6 / 1e4, ms(lo), ms(hi)),
        native: ms(median(native)),
        note: "pure boundary cost".into(),
    });
    rows.push(Row {
        what: "10 000-record batch through dedup-exact".into(),
        trex: format!("{} ({:.0} records/s)", ms(dedup_m), 1e4 / dedup_m.as_secs_f64()),
        native: "-".into(),
        note: format!("boundary ≈ {:.0}% of it", 100.0 * echo_m.as_secs_f64() / dedup_m.as_secs_f64()),
    });

    println!("\n| measurement | trex (wasm plugin) | native Rust | note |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.trex, r.native, r.note);
    }
    println!(
        "\nmedian of {repeat} runs; cpu threads: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    Ok(())
}

#[inline(never)]
fn native_empty_evaluate(i: u32) -> (u32, f64) {
    (i, 1.0)
}
