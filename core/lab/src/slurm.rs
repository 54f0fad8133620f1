//! Running nodes as Slurm jobs: `sbatch --parsable` submits a node's [`crate::worker`] spec,
//! `squeue` (then `sacct`, where the cluster keeps accounting) follows the job, and `scancel`
//! stops it. The tree, the journal and the Researcher stay with the search; a job runs exactly
//! one experiment and writes its outcome into the run folder, which must be on storage the
//! compute nodes share.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use trex_sdk::types::FailureKind;

use crate::executor::NodeFailure;
use crate::tree::{Cost, JobSeconds, NodeResult};
use crate::worker;

/// What went wrong talking to Slurm.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// An option cannot be used (names the field).
    #[error("{0}")]
    Options(String),
    /// A Slurm command is not installed here.
    #[error("cannot run `{program}`: {source} (is Slurm installed here, and are its commands on PATH?)")]
    Missing {
        /// The command.
        program: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// A Slurm command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// `sbatch --parsable` printed something else than a job id.
    #[error("sbatch printed `{0}`, not a job id")]
    NotAJobId(String),
    /// A file of the node could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How jobs are submitted: the `[slurm]` section of a task, or `--slurm-*` on the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    /// `--partition` (default: the cluster's default partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--account` to charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `--time`, a job's time limit in Slurm's format (`MINUTES`, `HH:MM:SS`, `D-HH:MM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `--cpus-per-task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `--mem`, e.g. `8G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// GPUs per job (`--gres=gpu:N`); nodes then train on CUDA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Further `sbatch` flags, passed as given (e.g. `--qos=short`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch_args: Vec<String>,
    /// Seconds between two looks at a job's state.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
}

fn default_poll() -> f64 {
    2.0
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            account: None,
            time: None,
            cpus: None,
            mem: None,
            gpus: None,
            sbatch_args: Vec::new(),
            poll_seconds: default_poll(),
        }
    }
}

impl SlurmOptions {
    /// `self` with every option `other` sets taken from `other` (the command line over the task);
    /// `other`'s extra flags come after `self`'s, and the poll interval stays `self`'s.
    pub fn overridden_by(&self, other: &SlurmOptions) -> SlurmOptions {
        let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone());
        let mut sbatch_args = self.sbatch_args.clone();
        sbatch_args.extend(other.sbatch_args.iter().cloned());
        SlurmOptions {
            partition: pick(&self.partition, &other.partition),
            account: pick(&self.account, &other.account),
            time: pick(&self.time, &other.time),
            cpus: other.cpus.or(self.cpus),
            mem: pick(&self.mem, &other.mem),
            gpus: other.gpus.or(self.gpus),
            sbatch_args,
            poll_seconds: self.poll_seconds,
        }
    }

    /// The `sbatch` flags these options stand for.
    pub fn sbatch_flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                f.push(format!("--{flag}={v}"));
            }
        };
        push("partition", self.partition.clone());
        push("account", self.account.clone());
        push("time", self.time.clone());
        push("cpus-per-task", self.cpus.map(|c| c.to_string()));
        push("mem", self.mem.clone());
        push("gres", self.gpus.map(|g| format!("gpu:{g}")));
        f.extend(self.sbatch_args.iter().cloned());
        f
    }

    /// Why these options cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), SlurmError> {
        self.problem().map_or(Ok(()), |p| Err(SlurmError::Options(p)))
    }

    fn problem(&self) -> Option<String> {
        if !(self.poll_seconds > 0.0 && self.poll_seconds <= 600.0) {
            return Some(format!("slurm.poll_seconds = {}: must be in (0, 600]", self.poll_seconds));
        }
        if self.cpus == Some(0) {
            return Some("slurm.cpus = 0: a job needs at least one CPU".into());
        }
        if self.gpus == Some(0) {
            return Some("slurm.gpus = 0: leave it out to ask for no GPU".into());
        }
        for a in &self.sbatch_args {
            if !a.starts_with('-') {
                return Some(format!("slurm.sbatch_args: `{a}` is not a flag (each must start with `-`)"));
            }
            if a.starts_with("--output") || a.starts_with("--parsable") || a.starts_with("--chdir") {
                return Some(format!("slurm.sbatch_args: `{a}` is set by trex itself"));
            }
        }
        None
    }
}

/// Where a job stands, as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Queued, running, or on its way in or out (the state's name).
    Active(String),
    /// Ended (the state's name: `COMPLETED`, `FAILED`, `TIMEOUT`, `CANCELLED`, …).
    Ended(String),
    /// Slurm no longer knows the job (or could not be asked).
    Unknown(String),
}

const ENDED: [&str; 10] = [
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
];

fn parse_state(text: &str) -> Option<JobState> {
    // `sacct` writes `CANCELLED by 0`; a job array or steps give several lines: the first is the job.
    let word = text.lines().map(str::trim).find(|l| !l.is_empty())?.split_whitespace().next()?.to_string();
    let word = word.trim_end_matches('+').to_string();
    Some(if ENDED.contains(&word.as_str()) { JobState::Ended(word) } else { JobState::Active(word) })
}

/// What each ended state means, for the node's lesson.
fn meaning(state: &str) -> &'static str {
    match state {
        "TIMEOUT" => "it ran past its time limit: give jobs more time (--slurm-time) or train less",
        "OUT_OF_MEMORY" => "it ran out of memory: ask for more (--slurm-mem)",
        "CANCELLED" => "it was cancelled (scancel, or an administrator)",
        "PREEMPTED" => "a job of higher priority preempted it",
        "NODE_FAIL" | "BOOT_FAIL" => "its compute node failed",
        "DEADLINE" => "it reached its deadline",
        "FAILED" => "the worker exited with an error",
        "COMPLETED" => "the worker finished without writing a result",
        _ => "Slurm no longer knows it, and it wrote no result",
    }
}

fn run(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SlurmError::Missing { program: program.to_string(), source })?;
    if !out.status.success() {
        return Err(SlurmError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cluster the search submits to: its options and the jobs it has in flight.
#[derive(Debug)]
pub struct Cluster {
    options: SlurmOptions,
    /// The program every job runs (`trex-host`, on storage the compute nodes share).
    program: PathBuf,
    outstanding: Mutex<BTreeSet<String>>,
}

/// A job the search waits on: its id and the node's files.
#[derive(Debug, Clone)]
pub struct Job {
    /// Slurm's job id.
    pub id: String,
    /// The node.
    pub node: u64,
    /// The node's folder.
    pub dir: PathBuf,
    /// When it was submitted, in seconds since the Unix epoch.
    pub submitted_unix: f64,
}

impl Job {
    /// The job's output file (`sbatch --output`).
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("slurm-{}.out", self.id))
    }
}

impl Cluster {
    /// A cluster with `options`, whose jobs run `program`.
    pub fn new(options: SlurmOptions, program: PathBuf) -> Cluster {
        Cluster { options, program, outstanding: Mutex::new(BTreeSet::new()) }
    }

    /// Submit node `node` whose spec is `spec` (in the node's folder `dir`); the job id.
    pub fn submit(&self, node: u64, job_name: &str, dir: &Path, spec: &Path) -> Result<Job, SlurmError> {
        let script = dir.join("job.sh");
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let body = format!(
            "#!/bin/sh\n# trex node {node}: one experiment, run by `trex-host worker`.\nexec {} worker {}\n",
            quote(&self.program),
            quote(spec)
        );
        std::fs::write(&script, body).map_err(|source| SlurmError::File { path: script.clone(), source })?;
        // A result left by an earlier, lost job of this node must not be read as this job's.
        let _ = std::fs::remove_file(worker::outcome_path(dir));
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={job_name}"),
            format!("--output={}", dir.join("slurm-%j.out").display()),
            format!("--chdir={}", dir.display()),
        ];
        args.extend(self.options.sbatch_flags());
        args.push(script.display().to_string());
        let out = run("sbatch", &args)?;
        // `--parsable` prints `ID` or `ID;CLUSTER`.
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(SlurmError::NotAJobId(out.trim().to_string()));
        }
        self.outstanding.lock().expect("not poisoned").insert(id.clone());
        Ok(Job { id, node, dir: dir.to_path_buf(), submitted_unix: worker::unix_now() })
    }

    /// Take back a job submitted by an earlier session (after `resume`).
    pub fn adopt(&self, job: &Job) {
        self.outstanding.lock().expect("not poisoned").insert(job.id.clone());
    }

    /// The job's state: `squeue` while the controller remembers it, then `sacct`.
    pub fn state(job: &str) -> JobState {
        let args = ["-h", "-t", "all", "-j", job, "-o", "%T"].map(String::from);
        match run("squeue", &args) {
            Ok(out) => {
                if let Some(s) = parse_state(&out) {
                    return s;
                }
            }
            Err(SlurmError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => {}
            Err(e) => return JobState::Unknown(e.to_string()),
        }
        let args = ["-n", "-X", "-P", "-j", job, "-o", "State"].map(String::from);
        match run("sacct", &args) {
            Ok(out) => parse_state(&out).unwrap_or_else(|| JobState::Unknown("sacct has no record of it".into())),
            Err(e) => JobState::Unknown(e.to_string()),
        }
    }

    /// `scancel` every job still in flight; the ids cancelled.
    pub fn cancel_all(&self) -> Vec<String> {
        let jobs: Vec<String> =
            std::mem::take(&mut *self.outstanding.lock().expect("not poisoned")).into_iter().collect();
        if !jobs.is_empty()
            && let Err(e) = run("scancel", &jobs)
        {
            tracing::warn!("cancelling Slurm jobs {jobs:?}: {e}");
        }
        jobs
    }

    /// Jobs in flight.
    pub fn outstanding(&self) -> usize {
        self.outstanding.lock().expect("not poisoned").len()
    }

    /// Wait for `job` to end, then read what it wrote: the node's outcome.
    pub async fn wait(self: Arc<Self>, job: Job) -> Result<NodeResult, NodeFailure> {
        let started = Instant::now();
        let poll = Duration::from_secs_f64(self.options.poll_seconds);
        let mut unknown = 0;
        let state = loop {
            let id = job.id.clone();
            let state = tokio::task::spawn_blocking(move || Cluster::state(&id))
                .await
                .unwrap_or_else(|e| JobState::Unknown(e.to_string()));
            match state {
                JobState::Active(_) => unknown = 0,
                JobState::Ended(s) => break s,
                // A controller restarting, or a job just gone from its memory: look a few times.
                JobState::Unknown(why) => {
                    unknown += 1;
                    if worker::outcome_path(&job.dir).is_file() || unknown >= 5 {
                        tracing::debug!("Slurm job {}: {why}", job.id);
                        break "UNKNOWN".into();
                    }
                }
            }
            tokio::time::sleep(poll).await;
        };
        self.outstanding.lock().expect("not poisoned").remove(&job.id);
        collect(&job, &state, started.elapsed().as_secs_f64())
    }
}

/// The outcome `job` wrote, or the failure its end state `state` stands for.
pub fn collect(job: &Job, state: &str, seconds: f64) -> Result<NodeResult, NodeFailure> {
    let path = worker::outcome_path(&job.dir);
    if path.is_file() {
        return match worker::read_outcome(&path) {
            Ok(o) => {
                let times = JobSeconds {
                    queued: (o.started_unix - job.submitted_unix).max(0.0),
                    setup: o.setup_seconds,
                    collected: (worker::unix_now() - o.finished_unix).max(0.0),
                };
                match o.into_result() {
                    Ok(mut r) => {
                        r.cost.job = Some(Box::new(times));
                        Ok(r)
                    }
                    Err(mut f) => {
                        f.cost.job = Some(Box::new(times));
                        Err(f)
                    }
                }
            }
            Err(e) => Err(NodeFailure::new(
                FailureKind::Other,
                format!("Slurm job {} wrote an unreadable result: {e}", job.id),
                Cost { seconds, ..Cost::default() },
            )),
        };
    }
    let log = job.log();
    let tail = output_tail(&log, 20);
    let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)");
    let last: String = last.trim().chars().take(120).collect();
    let error = format!(
        "Slurm job {} ended {state}: {}; its output ends `{last}`\n--- last lines of {} ---\n{tail}",
        job.id,
        meaning(state),
        log.display()
    );
    Err(NodeFailure::new(FailureKind::Other, error, Cost { seconds, ..Cost::default() }))
}

/// The last `lines` lines of `path` (empty when it cannot be read).
fn output_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether Slurm's client commands are here and a controller answers.
pub fn available() -> Result<(), SlurmError> {
    run("sinfo", &["-h".into(), "-o".into(), "%P".into()]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_as_squeue_and_sacct_print_them() {
        assert_eq!(parse_state("RUNNING\n"), Some(JobState::Active("RUNNING".into())));
        assert_eq!(parse_state("PENDING"), Some(JobState::Active("PENDING".into())));
        assert_eq!(parse_state("CANCELLED by 0\n"), Some(JobState::Ended("CANCELLED".into())));
        assert_eq!(parse_state("TIMEOUT\nCANCELLED\n"), Some(JobState::Ended("TIMEOUT".into())));
        assert_eq!(parse_state("\n  \n"), None);
    }

    #[test]
    fn command_line_options_override_the_task_and_flags_follow() {
        let task = SlurmOptions {
            partition: Some("cpu".into()),
            time: Some("30".into()),
            sbatch_args: vec!["--qos=low".into()],
            ..SlurmOptions::default()
        };
        let cli = SlurmOptions { time: Some("5".into()), gpus: Some(1), ..SlurmOptions::default() };
        let o = task.overridden_by(&cli);
        assert_eq!(o.sbatch_flags(), ["--partition=cpu", "--time=5", "--gres=gpu:1", "--qos=low"]);
        assert!(o.check().is_ok());
        let bad = SlurmOptions { sbatch_args: vec!["--output=x".into()], ..SlurmOptions::default() };
        assert!(bad.check().unwrap_err().to_string().contains("set by trex"));
        let bad = SlurmOptions { sbatch_args: vec!["qos".into()], ..SlurmOptions::default() };
        assert!(bad.check().unwrap_err().to_string().contains("not a flag"));
    }

    #[test]
    fn a_job_that_wrote_nothing_fails_with_its_state_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job { id: "7".into(), node: 3, dir: dir.path().to_path_buf(), submitted_unix: 0.0 };
        std::fs::write(job.log(), "loading\nstep 1\nslurmstepd: error: *** JOB 7 CANCELLED DUE TO TIME LIMIT ***\n")
            .unwrap();
        let f = collect(&job, "TIMEOUT", 61.0).unwrap_err();
        let first = f.error.lines().next().unwrap();
        assert!(first.contains("Slurm job 7 ended TIMEOUT") && first.contains("time limit"), "{first}");
        assert!(first.contains("DUE TO TIME LIMIT"), "the output's last line is in the lesson: {first}");
        assert!(f.error.contains("step 1"), "{}", f.error);
        assert_eq!(f.cost.seconds, 61.0);
    }
}
