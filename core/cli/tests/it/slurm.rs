//! `--executor slurm` against a real Slurm: the single-node cluster `cargo xtask test` starts
//! (`SLURM_CONF` points here to it). Each node is an `sbatch` job running `trex-host worker`.
//! Without a cluster these tests skip, loudly, unless `TREX_REQUIRE_SLURM` is set (as in CI).

use std::path::Path;
use std::time::{Duration, Instant};

use trex_lab::journal::Event;
use trex_lab::run::view;
use trex_lab::slurm::{Cluster, JobState};
use trex_lab::tree::NodeStatus;

use crate::search::{Fixture, QUICK, SLOW, events, fixture, output, slow_config, trex_host};

/// Whether a Slurm controller answers; panics where one is required.
fn cluster_up(test: &str) -> bool {
    match trex_lab::slurm::available() {
        Ok(()) => true,
        Err(e) if std::env::var_os("TREX_REQUIRE_SLURM").is_some() => {
            panic!("{test}: TREX_REQUIRE_SLURM is set but no Slurm controller answers: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED {test}: no Slurm controller answers ({e}); `cargo xtask slurm up` starts a test cluster ***\n"
            );
            false
        }
    }
}

fn jobs(run_dir: &Path) -> Vec<(u64, String)> {
    events(run_dir)
        .into_iter()
        .filter_map(|e| if let Event::Submitted { node, job } = e { Some((node, job)) } else { None })
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_slurm_search_runs_each_node_as_a_job_and_grows_the_tree_a_local_run_grows() {
    if !cluster_up("a_slurm_search_runs_each_node_as_a_job") {
        return;
    }
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let search = |run: &str, extra: &[&str]| {
        let run_dir = f.dir.path().join(run);
        let (ok, stdout, err) = output(
            trex_host(&f)
                .args(["search", "--strategy", "greedy", "--nodes", "2", "--workers", "2", "--no-experiment-cache"])
                .args(extra)
                .arg("--run-dir")
                .arg(&run_dir)
                .arg(&f.task),
        );
        assert!(ok, "{run}: {err}");
        (run_dir, stdout, err)
    };
    let (local, _, _) = search("local", &[]);
    let (slurm, stdout, err) = search("slurm", &["--executor", "slurm", "--slurm-time", "10", "--slurm-poll", "0.3"]);
    assert!(stdout.contains("#2 "), "{stdout}");
    // Both experiments went to Slurm, each as its own job, and the journal holds their ids.
    let submitted = jobs(&slurm);
    assert_eq!(submitted.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2], "{submitted:?}\n{err}");
    assert_ne!(submitted[0].1, submitted[1].1);
    for (node, job) in &submitted {
        assert!(job.chars().all(|c| c.is_ascii_digit()), "a Slurm job id: {job}");
        assert!(err.contains(&format!("submitted as Slurm job {job}")), "{err}");
        let dir = slurm.join(format!("nodes/{node}"));
        let log = std::fs::read_to_string(dir.join(format!("slurm-{job}.out"))).unwrap();
        assert!(log.contains(&format!("trex worker: node {node}")), "the job ran the worker: {log}");
        let spec = std::fs::read_to_string(dir.join("spec.json")).unwrap();
        assert!(spec.contains("\"proposal\""), "{spec}");
        let outcome = trex_lab::worker::read_outcome(&dir.join("outcome.json")).unwrap();
        assert_eq!(outcome.job.as_deref(), Some(job.as_str()), "the outcome names the job that wrote it");
    }
    // The same tree as the local run: parents, recipes, scores.
    let (a, b) = (view(&local).unwrap(), view(&slurm).unwrap());
    assert_eq!(a.nodes.len(), 3);
    assert_eq!(a.nodes.len(), b.nodes.len());
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!((x.id, x.parent, x.status()), (y.id, y.parent, y.status()));
        assert_eq!(x.proposal, y.proposal, "node {}", x.id);
        let (rx, ry) = (x.result().unwrap(), y.result().unwrap());
        assert_eq!((rx.score, rx.passed, rx.total), (ry.score, ry.passed, ry.total), "node {}", x.id);
        assert_eq!(rx.train.as_ref().map(|t| t.final_loss), ry.train.as_ref().map(|t| t.final_loss), "node {}", x.id);
        assert_eq!(y.job.is_some(), y.id != 0, "node {}: its job is on the node", y.id);
        if y.id != 0 {
            let t = ry.cost.job.as_deref().expect("a job's node says where the seconds around it went");
            assert!(t.queued >= 0.0 && t.setup > 0.0 && t.collected >= 0.0, "{t:?}");
        }
    }
    assert_eq!(a.final_result.unwrap().best_test, b.final_result.unwrap().best_test);
    // `show` says which job ran each node.
    let (ok, shown, _) = output(trex_host(&f).arg("show").arg(&slurm));
    assert!(ok && shown.contains(&format!("slurm job {}", submitted[0].1)), "{shown}");
    assert!(shown.contains("slurm: queued ") && shown.contains("nodes as Slurm jobs"), "{shown}");
}

#[test]
fn a_search_killed_while_its_job_runs_resumes_by_reattaching_to_the_job() {
    if !cluster_up("a_search_killed_while_its_job_runs_resumes_by_reattaching") {
        return;
    }
    trex_tests::build_plugins();
    let f: Fixture = fixture(40, SLOW, "", slow_config());
    let run_dir = f.dir.path().join("run");
    let mut child = trex_host(&f)
        .args(["search", "--strategy", "sequential", "--nodes", "2", "--no-experiment-cache"])
        .args(["--executor", "slurm", "--slurm-time", "10", "--slurm-poll", "0.3", "--run-dir"])
        .arg(&run_dir)
        .arg(&f.task)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("node 1's submission", Duration::from_secs(300), || {
        assert!(child.try_wait().unwrap().is_none(), "the search ended before node 1 was submitted");
        trex_lab::journal::Journal::path_in(&run_dir).is_file() && !jobs(&run_dir).is_empty()
    });
    child.kill().unwrap(); // SIGKILL: the job goes on without the search
    child.wait().unwrap();
    let job = jobs(&run_dir)[0].1.clone();
    let before = Cluster::state(&job);
    assert!(matches!(before, JobState::Active(_) | JobState::Ended(_)), "{before:?}");
    let (ok, stdout, err) = output(trex_host(&f).arg("resume").arg(&run_dir));
    assert!(ok, "{err}");
    assert!(err.contains(&format!("node 1: re-attached to Slurm job {job}")), "{err}");
    assert!(stdout.contains("#2 "), "{stdout}");
    let ev = events(&run_dir);
    let submitted = jobs(&run_dir);
    assert_eq!(submitted.iter().filter(|(n, _)| *n == 1).count(), 1, "node 1 was not submitted again: {submitted:?}");
    assert_eq!(submitted.iter().filter(|(n, _)| *n == 2).count(), 1, "{submitted:?}");
    for id in [1u64, 2] {
        let done = ev.iter().filter(|e| matches!(e, Event::Done { node, .. } if *node == id)).count();
        assert_eq!(done, 1, "node {id} finished once");
    }
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Final { .. })).count(), 1);
}

#[test]
fn cancelled_and_timed_out_jobs_become_failed_nodes_and_the_search_goes_on() {
    if !cluster_up("cancelled_and_timed_out_jobs_become_failed_nodes") {
        return;
    }
    trex_tests::build_plugins();
    // Every recipe this task allows (40 000 steps) trains for far longer than the jobs' one-minute limit.
    let endless = "lora_rank = 4\ntargets = [\"q_proj\", \"v_proj\"]\nlearning_rate = 1e-2\nepochs = 100.0\nbatch_size = 1\nmax_seq_len = 64";
    let f = fixture(400, endless, "", slow_config());
    let task = std::fs::read_to_string(&f.task).unwrap().replace("epochs = [1.0, 2.0, 4.0, 40.0]", "epochs = [100.0]");
    std::fs::write(&f.task, task).unwrap();
    let run_dir = f.dir.path().join("run");
    let mut child = trex_host(&f)
        .args(["search", "--strategy", "greedy", "--nodes", "2", "--no-experiment-cache"])
        .args(["--executor", "slurm", "--slurm-time", "1", "--slurm-poll", "0.3", "--run-dir"])
        .arg(&run_dir)
        .arg(&f.task)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ended = false;
    wait_for("node 1's submission", Duration::from_secs(300), || {
        ended = child.try_wait().unwrap().is_some();
        ended || (trex_lab::journal::Journal::path_in(&run_dir).is_file() && !jobs(&run_dir).is_empty())
    });
    if ended {
        let out = child.wait_with_output().unwrap();
        panic!("the search ended before node 1 was submitted: {}", String::from_utf8_lossy(&out.stderr));
    }
    let first = jobs(&run_dir)[0].1.clone();
    let status = std::process::Command::new("scancel").arg(&first).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{err}");
    let ev = events(&run_dir);
    let failed: Vec<(u64, String, String)> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Failed { node, error, lesson, .. } => Some((*node, error.clone(), lesson.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}\n{err}");
    let (_, error, lesson) = &failed[0];
    assert!(error.contains(&format!("Slurm job {first} ended CANCELLED")) && error.contains("cancelled"), "{error}");
    assert!(lesson.contains("CANCELLED"), "the lesson says what happened: {lesson}");
    let (node, error, lesson) = &failed[1];
    assert_eq!(*node, 2, "after the cancelled job the search went on to another node");
    assert!(error.contains("ended TIMEOUT") && error.contains("time limit"), "{error}");
    assert!(error.contains("--- last lines of"), "the job's output is in the error: {error}");
    assert!(lesson.contains("TIMEOUT"), "{lesson}");
    let v = view(&run_dir).unwrap();
    assert!(v.nodes[1..].iter().all(|n| n.status() == NodeStatus::Failed));
    assert!(v.final_result.is_some(), "the search finished: {stdout}");
}

#[test]
fn slurm_options_without_the_slurm_executor_or_without_slurm_are_refused_up_front() {
    trex_tests::build_plugins();
    let f = fixture(40, QUICK, "", trex_model::LlamaConfig::tiny());
    let (ok, _, err) = output(trex_host(&f).args(["search", "--nodes", "1", "--slurm-time", "5"]).arg(&f.task));
    assert!(!ok && err.contains("--slurm-time applies to Slurm jobs: add --executor slurm"), "{err}");
    let (ok, _, err) = output(
        trex_host(&f).args(["search", "--nodes", "1", "--executor", "slurm", "--slurm-arg=--output=x"]).arg(&f.task),
    );
    assert!(!ok && err.contains("`--output=x` is set by trex itself"), "{err}");
    // No Slurm here (its commands are not on PATH): refused before anything is written.
    let run_dir = f.dir.path().join("run");
    let (ok, _, err) = output(
        trex_host(&f)
            .env("PATH", f.dir.path())
            .args(["search", "--nodes", "1", "--executor", "slurm", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(!ok && err.contains("--executor slurm: no Slurm controller answers here"), "{err}");
    assert!(err.contains("cannot run `sinfo`") && err.contains("is Slurm installed"), "{err}");
    assert!(!run_dir.exists(), "nothing was written: {err}");
}
