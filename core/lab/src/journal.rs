//! The run journal: one JSON event per line, appended and fsynced before the search moves on,
//! so a run killed at any point (SIGKILL included) can be rebuilt and resumed.
//!
//! A torn last line (the process died mid-write) is dropped on reopening; any other unreadable
//! line is an error naming the line.
//!
//! The events are the on-disk format, versioned by [`FORMAT`]: the start event records the
//! version that wrote the run, and a journal from a newer trex is refused with a message rather
//! than misread. The in-memory state ([`crate::RunState`]) is built from events by one `apply`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trex_sdk::types::Proposal;

use crate::search::Settings;
use crate::task::Task;
use trex_sdk::types::FailureKind;

use crate::tree::{Cost, NodeResult};

/// The journal format this trex writes (and the newest it reads).
pub const FORMAT: u32 = 1;

fn format_1() -> u32 {
    1
}

/// One journal event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The run began: everything needed to resume it.
    Start {
        /// The journal format version ([`FORMAT`] when written by this trex).
        #[serde(default = "format_1")]
        format: u32,
        /// The task file.
        task_file: PathBuf,
        /// The task as validated (configs with defaults filled in).
        task: Box<Task>,
        /// Search settings.
        settings: Box<Settings>,
        /// The resolved base model path.
        model: String,
    },
    /// A process (the first, or a resume) took over the run.
    Session {
        /// Whether this session resumed an earlier one.
        resumed: bool,
    },
    /// A node was created from a proposal (or the root, without one).
    Created {
        /// Node id.
        node: u64,
        /// Parent id.
        parent: Option<u64>,
        /// The experiment.
        proposal: Option<Proposal>,
        /// LLM tokens spent proposing it.
        #[serde(default)]
        llm_tokens: u64,
    },
    /// A node started running.
    Started {
        /// Node id.
        node: u64,
    },
    /// A node was submitted to Slurm as a job.
    Submitted {
        /// Node id.
        node: u64,
        /// Slurm's job id.
        job: String,
    },
    /// A node finished.
    Done {
        /// Node id.
        node: u64,
        /// Its result.
        result: Box<NodeResult>,
        /// Its lesson.
        lesson: String,
    },
    /// A node failed.
    Failed {
        /// Node id.
        node: u64,
        /// The error.
        error: String,
        /// Its lesson.
        lesson: String,
        /// What it cost before failing.
        cost: Cost,
        /// Why, when the host can tell (absent in journals written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<FailureKind>,
    },
    /// A proposal was refused before it became a node.
    Rejected {
        /// The node being expanded.
        parent: u64,
        /// Why.
        error: String,
        /// LLM tokens spent on it.
        #[serde(default)]
        llm_tokens: u64,
    },
    /// The Researcher had nothing (valid) left for a node; it is no longer expanded.
    Exhausted {
        /// Node id.
        node: u64,
    },
    /// The final best node was scored on the test split.
    Final(FinalResult),
    /// The LLM server was checked (at the start of a session) or changed the structured-output
    /// format it accepts: the format the client uses from here on.
    Llm {
        /// The server and model.
        server: String,
        /// The format in use (`None`: the server answered nothing).
        format: Option<trex_plugin_host::llm::ResponseFormat>,
        /// Whether its replies report token counts.
        usage_reported: bool,
    },
    /// The search stopped.
    Finished {
        /// Why (which budget, or no node left to expand).
        reason: String,
    },
}

/// The final choice scored on the test split (the only time the search touches it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalResult {
    /// The best node by validation score.
    pub best: u64,
    /// Its validation score.
    pub validation: f64,
    /// The base model's test score.
    pub base_test: f64,
    /// The best node's test score.
    pub best_test: f64,
    /// Normalized gain on the test split.
    pub test_gain: f64,
    /// The nodes re-scored on the whole validation split before the choice (when the search
    /// scored a limited part of it), with those scores; the best of them is `best`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rescored: Vec<(u64, f64)>,
    /// The no-model baselines on the same splits (absent in journals written before they were
    /// scored, and in replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselines: Option<crate::baseline::Baselines>,
}

/// A journal line: the event and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Seconds of search time since the run began, summed over sessions.
    pub t: f64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// [`Entry`] borrowed, for writing.
#[derive(Serialize)]
struct EntryRef<'a> {
    t: f64,
    #[serde(flatten)]
    event: &'a Event,
}

/// An open journal, appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Whether each append is fsynced (every journal but a replay's, which can be run again).
    sync: bool,
}

/// Why a journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct JournalError {
    /// The journal file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl Journal {
    /// The journal file of a run folder.
    pub fn path_in(run_dir: &Path) -> PathBuf {
        run_dir.join("journal.jsonl")
    }

    /// Create a new journal; fails if one exists (a run folder is never silently reused).
    pub fn create(run_dir: &Path) -> Result<Journal, JournalError> {
        let path = Self::path_in(run_dir);
        let err = |m: String| JournalError { path: path.clone(), message: m };
        std::fs::create_dir_all(run_dir).map_err(|e| err(format!("cannot create the run folder: {e}")))?;
        let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                "a run already lives here: resume it with `trex-host resume`, or pick another --run-dir".into()
            } else {
                format!("cannot create it: {e}")
            })
        })?;
        Ok(Journal { file, path, sync: true })
    }

    /// [`Journal::create`] without the fsync after each event: for a replay of cached results,
    /// which loses nothing it cannot compute again in milliseconds.
    pub fn create_unsynced(run_dir: &Path) -> Result<Journal, JournalError> {
        Ok(Journal { sync: false, ..Self::create(run_dir)? })
    }

    /// Read every entry of a journal without changing it (a torn last line is left out).
    pub fn read(run_dir: &Path) -> Result<Vec<Entry>, JournalError> {
        Self::parse(run_dir, false).map(|(entries, _, _)| entries)
    }

    fn parse(run_dir: &Path, warn: bool) -> Result<(Vec<Entry>, usize, String), JournalError> {
        let path = Self::path_in(run_dir);
        let err = |m: String| JournalError { path: path.clone(), message: m };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(format!("cannot read it ({e}); is {} a trex run folder?", run_dir.display())))?;
        let mut entries = Vec::new();
        let mut good_len = 0usize;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let complete = line.ends_with('\n');
            match serde_json::from_str::<Entry>(line.trim_end()) {
                Ok(e) if complete => {
                    if let Event::Start { format, .. } = &e.event
                        && *format > FORMAT
                    {
                        return Err(err(format!(
                            "written by a newer trex (journal format {format}; this trex reads up to {FORMAT}): upgrade trex-host to resume or show it"
                        )));
                    }
                    entries.push(e);
                    good_len += line.len();
                }
                _ if i + 1 == lines.len() => {
                    if warn {
                        tracing::warn!(
                            "{}: dropping a torn last line (the run was killed while writing it)",
                            path.display()
                        );
                    }
                }
                Ok(_) => unreachable!("only the last line can lack its newline"),
                Err(e) => return Err(err(format!("line {}: not a journal event: {e}", i + 1))),
            }
        }
        Ok((entries, good_len, text))
    }

    /// Read every entry of an existing journal and open it for appending. A torn last line is
    /// cut off (with a warning).
    pub fn open(run_dir: &Path) -> Result<(Journal, Vec<Entry>), JournalError> {
        let (entries, good_len, text) = Self::parse(run_dir, true)?;
        let path = Self::path_in(run_dir);
        let err = |m: String| JournalError { path: path.clone(), message: m };
        if good_len < text.len() {
            let f = OpenOptions::new().write(true).open(&path).map_err(|e| err(e.to_string()))?;
            f.set_len(good_len as u64).map_err(|e| err(format!("cannot cut the torn line: {e}")))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
        }
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| err(format!("cannot append: {e}")))?;
        Ok((Journal { file, path, sync: true }, entries))
    }

    /// Append one event and fsync it.
    pub fn append(&mut self, t: f64, event: &Event) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(&EntryRef { t, event }).expect("journal events always serialize");
        line.push('\n');
        let err = |e: std::io::Error| JournalError { path: self.path.clone(), message: format!("cannot append: {e}") };
        self.file.write_all(line.as_bytes()).map_err(err)?;
        if self.sync { self.file.sync_data().map_err(err) } else { Ok(()) }
    }
}
