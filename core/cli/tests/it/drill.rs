//! The crash drill: a real search on a small model, SIGKILLed again and again at seeded random
//! moments of its nodes' lives and resumed each time, must end with the tree an uninterrupted
//! run grows, with no finished node lost or finished twice and nothing half-written left in the
//! run folder. `TREX_DRILL_KILLS` sets the number of kills (default 5, as in CI);
//! `cargo xtask crash-drill --kills N` runs it with more and prints where the kills landed.
//! Every fifth kill lands in the middle of an adapter's write (held open by
//! `TREX_TEST_HOLD_WRITES_MS`; see `trex_model::files`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use trex_lab::journal::{Event, Journal};
use trex_lab::run::view;
use trex_sdk::rng::SplitMix64;

use crate::runs::{adapters, assert_every_adapter_loads, assert_finished_at_most_once, assert_same_tree, count};
use crate::search::{events, fixture, output, slow_config, trex_host};

/// Where in a run a kill landed, read from the journal and the node folders at the moment of the kill.
fn stage(run_dir: &Path) -> &'static str {
    if !Journal::path_in(run_dir).is_file() {
        return "before the journal";
    }
    let ev = events(run_dir);
    let finished =
        |id: u64| ev.iter().any(|e| matches!(e, Event::Done { node, .. } | Event::Failed { node, .. } if *node == id));
    let running = ev.iter().rev().find_map(|e| match e {
        Event::Started { node } if !finished(*node) => Some(*node),
        _ => None,
    });
    match running {
        Some(0) => "scoring the base model",
        Some(id) => {
            let dir = run_dir.join(format!("nodes/{id}"));
            if writing_a_folder(&dir) {
                "writing the adapter"
            } else if dir.join("evaluation.jsonl").is_file() {
                "after evaluation, before the journal"
            } else if dir.join("adapter/adapter_model.safetensors").is_file() {
                "generation or evaluation"
            } else {
                "data or training"
            }
        }
        None if ev.iter().any(|e| matches!(e, Event::Final(_))) => "after the final scoring",
        None => "between nodes",
    }
}

/// Whether a folder is being written in `dir` under a temporary name (an adapter, before the
/// rename that puts it in place).
fn writing_a_folder(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".tmp") && e.file_type().is_ok_and(|t| t.is_dir()))
}

/// Whether any node of the run is writing a folder (see [`writing_a_folder`]).
fn writing_an_adapter(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir.join("nodes")).into_iter().flatten().flatten().any(|n| writing_a_folder(&n.path()))
}

/// Every file whose name marks it as written under a temporary name (left by a kill mid-write).
fn temporaries(dir: &Path, found: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if e.file_name().to_string_lossy().starts_with(".tmp") {
            found.push(path);
        } else if path.is_dir() {
            temporaries(&path, found);
        }
    }
}

#[test]
fn a_search_killed_again_and_again_and_resumed_grows_the_tree_of_an_uninterrupted_run() {
    trex_tests::build_plugins();
    let kills: usize = std::env::var("TREX_DRILL_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(5);
    let config = slow_config();
    let recipe = "lora_rank = 4\ntargets = [\"q_proj\", \"v_proj\"]\nlearning_rate = 1e-2\nepochs = 20.0\nbatch_size = 1\nmax_seq_len = 64";
    let f = fixture(40, recipe, "", config.clone());
    // Enough experiments that the run outlasts the kills (a session gets about half a node done).
    let nodes = (kills.div_ceil(2) + 1).max(3).to_string();
    let search = |run_dir: &Path, cache: bool| {
        let mut c = trex_host(&f);
        c.args(["search", "--strategy", "greedy", "--nodes", &nodes, "--run-dir"]).arg(run_dir).arg(&f.task);
        if !cache {
            c.arg("--no-experiment-cache");
        }
        c
    };
    // The uninterrupted run (no experiment cache, so that the drilled run cannot reuse it).
    let reference = f.dir.path().join("reference");
    let (ok, _, err) = output(&mut search(&reference, false));
    assert!(ok, "{err}");
    // Kills land anywhere from a session's start to a node and a half into it.
    let r = view(&reference).unwrap();
    let node_ms = 1000.0 * r.nodes[1..].iter().map(|n| n.cost().seconds).sum::<f64>() / (r.nodes.len() - 1) as f64;
    let span = (1.5 * (node_ms + 1000.0)) as u64;

    let run_dir = f.dir.path().join("drilled");
    // Every adapter the drilled sessions write is held complete under its temporary name for a
    // moment before it is renamed into place, so that a kill can land in the middle of the write.
    let spawn = |c: &mut std::process::Command| -> Child {
        c.env("TREX_TEST_HOLD_WRITES_MS", "300").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let mut child = spawn(&mut search(&run_dir, true));
    let mut rng = SplitMix64(0x5EED);
    let mut landed: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = 0;
    let mut resumes = 0;
    while done < kills {
        // Each kill waits for a moment of its own kind, in turn: a random time into the session,
        // a node's adapter just written (generation and evaluation follow), a node just
        // journaled as finished (the next proposal follows), a node just started (its data
        // recipe runs), a node's adapter in the middle of its write.
        let kind = done % 5;
        let counts = || {
            let done = count(&run_dir, |e| matches!(e, Event::Done { .. }));
            (done, adapters(&run_dir), count(&run_dir, |e| matches!(e, Event::Started { .. })))
        };
        let before = counts();
        let delay = Duration::from_millis(100 + rng.next_u64() % span);
        let started = Instant::now();
        let mut exited = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            let now = counts();
            let hit = match kind {
                0 => started.elapsed() >= delay,
                1 => now.1 > before.1,
                2 => now.0 > before.0,
                3 => now.2 > before.2,
                _ => writing_an_adapter(&run_dir),
            };
            // A moment that does not come within a node and a half is replaced by a random one.
            if hit || started.elapsed() >= delay + Duration::from_millis(span) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if exited {
            break; // the run finished before every kill landed
        }
        landed.entry(stage(&run_dir)).and_modify(|n| *n += 1).or_insert(1);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        done += 1;
        // After every kill the run folder reads as a run, with no node finished twice.
        if Journal::path_in(&run_dir).is_file() {
            assert_finished_at_most_once(&run_dir, &format!("after kill {done}"));
            assert_every_adapter_loads(&run_dir, &config, &format!("after kill {done}"));
            child = spawn(trex_host(&f).arg("resume").arg(&run_dir));
            resumes += 1;
        } else {
            // Killed before the journal's first line: nothing to resume, start again.
            let _ = std::fs::remove_dir_all(&run_dir);
            child = spawn(&mut search(&run_dir, true));
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the last session failed: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("crash drill: {done} kills, {resumes} resumes; where they landed:");
    for (stage, n) in &landed {
        eprintln!("  {n:>3}  {stage}");
    }
    assert!(done >= kills.min(3), "the run finished after {done} kills: too fast to drill");

    // The same tree as the uninterrupted run, and nothing half-written left.
    assert_same_tree(&reference, &run_dir, &config);
    let mut left = Vec::new();
    temporaries(&run_dir, &mut left);
    assert!(left.is_empty(), "files left half-written under temporary names: {left:?}");
}
