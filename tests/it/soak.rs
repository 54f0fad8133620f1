//! Soak: hostile and well-behaved plugin calls side by side for a while, on one host.
//!
//! - **Each attack, several at once.** `TREX_SOAK_PARALLEL` copies (default 4) of one attack run
//!   together, for every attack in turn; each ends in the error of its own limit, and the host's
//!   peak resident memory over that time is printed next to the limit it was held to.
//! - **Mixed workers.** `TREX_SOAK_WORKERS` workers (default 8) loop through hostile attacks and
//!   normal calls at once for `TREX_SOAK_SECONDS` (default 4, as in CI). Every normal call
//!   returns exactly what it should while the attacks fail around it (no call's limits or state
//!   reach another's), and the host's resident memory after the last round is within a margin
//!   of what it was after the first (memory stays flat).
//!
//! `cargo xtask soak --minutes N` runs it longer and prints both tables.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use trex_plugin_host::{CallEnv, PluginError, PluginHost};

use crate::hostile::LIMITS;
use crate::sandbox::{Sampler, rss_mib};
use crate::test_config;

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An attack of the hostile plugin (limits: [`LIMITS`]), what it is held to, and whether its
/// error is the one that limit gives.
struct Attack {
    name: &'static str,
    limit: &'static str,
    expected: fn(&PluginError) -> bool,
}

const ATTACKS: &[Attack] = &[
    Attack {
        name: "memory-bomb",
        limit: "memory 64 MiB",
        expected: |e| matches!(e, PluginError::Memory { limit_mib: 64, .. }),
    },
    Attack {
        name: "infinite-loop",
        limit: "time 1500 ms",
        expected: |e| matches!(e, PluginError::Timeout { limit_ms: 1500, .. }),
    },
    Attack {
        name: "huge-output",
        limit: "output 4 MiB",
        expected: |e| matches!(e, PluginError::Output { limit_mib: 4, .. }),
    },
    Attack {
        name: "tiny-records",
        limit: "output 4 MiB",
        expected: |e| matches!(e, PluginError::Output { limit_mib: 4, .. }),
    },
    Attack { name: "panic", limit: "(traps)", expected: |e| matches!(e, PluginError::Panic { .. }) },
    Attack { name: "stack-overflow", limit: "wasm stack", expected: |e| e.to_string().contains("stack overflow") },
];

/// A host with the hostile plugin under [`LIMITS`] and `dedup-exact` under its own.
async fn soak_host(dir: &std::path::Path) -> (PluginHost, CallEnv) {
    let plugins = dir.join("plugins");
    let hostile = trex_tests::manifest("hostile", "data-tool", "hostile", LIMITS);
    let dedup = std::fs::read_to_string(trex_tests::root().join("plugins/dedup-exact/plugin.toml")).unwrap();
    let paths = [
        trex_tests::install(&plugins, "hostile", "hostile", &hostile),
        trex_tests::install(&plugins, "dedup-exact", "dedup_exact", &dedup),
    ];
    let mut host = PluginHost::new(test_config(dir.join("scratch-root"))).unwrap();
    for p in &paths {
        host.load(p).await.unwrap();
    }
    let env = CallEnv { scratch_parent: Some(dir.join("scratch")), ..CallEnv::default() };
    std::fs::create_dir_all(dir.join("scratch")).unwrap();
    (host, env)
}

async fn run_attack(host: &PluginHost, env: &CallEnv, name: &str) -> Result<Vec<String>, PluginError> {
    let records = vec![json!({"k": 1}).to_string()];
    host.run_data_tool("hostile", &json!({"attack": name}), records, env).await.map(|r| r.records)
}

/// A normal call, checked: `dedup-exact` over `n` records with every tenth a repeat keeps the
/// others, in order; the hostile plugin's `echo` returns its input as it was.
async fn normal_call(host: &PluginHost, env: &CallEnv, worker: usize, round: usize) {
    let n = 500;
    let records: Vec<String> = (0..n)
        .map(|i| {
            let id = if i % 10 == 9 { i - 1 } else { i };
            json!({"prompt": format!("w{worker} r{round} #{id}"), "response": "ok"}).to_string()
        })
        .collect();
    let want: Vec<String> = records.iter().enumerate().filter(|(i, _)| i % 10 != 9).map(|(_, r)| r.clone()).collect();
    let run = host
        .run_data_tool("dedup-exact", &json!({"fields": ["prompt"]}), records.clone(), env)
        .await
        .unwrap_or_else(|e| panic!("worker {worker}, round {round}: a normal call failed beside the attacks: {e}"));
    assert_eq!(run.records, want, "worker {worker}, round {round}: dedup-exact");
    assert_eq!((run.records_in, run.records_out), (n as u64, want.len() as u64));
    assert_eq!(run.dropped.values().sum::<u64>(), (n / 10) as u64, "{:?}", run.dropped);
    let echoed = host
        .run_data_tool("hostile", &json!({"attack": "echo"}), records.clone(), env)
        .await
        .unwrap_or_else(|e| panic!("worker {worker}, round {round}: echo failed beside the attacks: {e}"));
    assert_eq!(echoed.records, records, "worker {worker}, round {round}: echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_and_normal_calls_side_by_side_keep_their_own_limits_and_memory_stays_flat() {
    let parallel = env_number("TREX_SOAK_PARALLEL", 4.0) as usize;
    let workers = env_number("TREX_SOAK_WORKERS", 8.0) as usize;
    let seconds = env_number("TREX_SOAK_SECONDS", 4.0);
    // Other tests in this binary allocate too; the sandbox's memory tests wait for this one.
    let _memory = crate::sandbox::MEMORY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (host, env) = soak_host(dir.path()).await;
    let (host, env) = (Arc::new(host), Arc::new(env));
    // Warm up: every plugin compiled and called once, so that later growth is the calls' own.
    normal_call(&host, &env, 0, 0).await;
    let base = rss_mib();

    // Each attack, `parallel` at once.
    let mut table = Vec::new();
    for a in ATTACKS {
        let sampler = Sampler::start();
        let calls: Vec<_> = (0..parallel)
            .map(|_| {
                let (host, env) = (host.clone(), env.clone());
                tokio::spawn(async move { run_attack(&host, &env, a.name).await })
            })
            .collect();
        for c in calls {
            let err = c.await.unwrap().expect_err(a.name);
            assert!((a.expected)(&err), "`{}` ended in the wrong error: {err}", a.name);
        }
        table.push((a.name, a.limit, sampler.peak() - base));
    }
    let resident = rss_mib();
    eprintln!("soak: each attack {parallel} at once (host resident memory {base:.0} MiB before)");
    eprintln!("  {:<15} {:<14} {:>22}", "attack", "limit", "peak growth (MiB)");
    for (name, limit, growth) in &table {
        eprintln!("  {name:<15} {limit:<14} {growth:>22.0}");
    }
    // `parallel` memory bombs hold at most `parallel` × 64 MiB of linear memory, and the
    // host's own buffers for outputs stop at 4 MiB a call (counted generously).
    let bound = parallel as f64 * (64.0 + 4.0 * 8.0) + 128.0;
    for (name, _, growth) in &table {
        assert!(*growth < bound, "`{name}` {parallel} at once grew the host by {growth:.0} MiB (bound {bound:.0})");
    }

    // Mixed workers, in rounds: worker w's call in round r is an attack or a normal call, in turn.
    let started = Instant::now();
    let mut after_round = Vec::new();
    let sampler = Sampler::start();
    let mut calls = 0usize;
    let mut round = 0;
    while round < 2 || started.elapsed().as_secs_f64() < seconds {
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (host, env) = (host.clone(), env.clone());
                tokio::spawn(async move {
                    if (w + round) % 2 == 0 {
                        normal_call(&host, &env, w, round).await;
                    } else {
                        let a = &ATTACKS[(w + round / 2) % ATTACKS.len()];
                        let err = run_attack(&host, &env, a.name).await.expect_err(a.name);
                        assert!((a.expected)(&err), "`{}` beside normal calls ended in the wrong error: {err}", a.name);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        calls += workers;
        round += 1;
        after_round.push(rss_mib());
    }
    let peak = sampler.peak();
    let left: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "every call's scratch folder is removed after it: {left:?}");
    let (first, last) = (after_round[0], *after_round.last().unwrap());
    eprintln!(
        "soak: {workers} mixed workers, {round} rounds, {calls} calls in {:.0} s; resident memory {resident:.0} MiB \
         before, {first:.0} after round 1, {last:.0} after round {round}, peak {peak:.0}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        last <= first.max(resident) + 128.0,
        "resident memory grew from {first:.0} MiB after round 1 to {last:.0} MiB after round {round}: {after_round:?}"
    );
}
