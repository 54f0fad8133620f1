//! trex's research loop: a task ([`task`]), the experiment tree and the strategies that grow it
//! ([`tree`]), the search loop ([`search`]) with its journal ([`journal`]), the Researcher's
//! compressed memory ([`memory`]), bad-case analysis ([`analysis`]), the executor that runs one
//! experiment ([`executor`]) in the search's process or as a Slurm job ([`slurm`], each job a
//! [`worker`]), the `search` / `resume` / `show` entry points ([`run`]) and data pipelines
//! outside a search ([`pipeline`]).
//!
//! Architecture Invariant: the lab does not print and does not parse arguments; what it has to
//! say goes to an [`observer::Observer`], and its errors are typed.

#![forbid(unsafe_code)]

pub mod abmcts;
pub mod analysis;
pub mod baseline;
pub mod cache;
pub mod early_stop;
pub mod error;
pub mod executor;
pub mod journal;
pub mod memory;
pub mod observer;
pub mod pipeline;
pub mod replay;
pub mod run;
pub mod search;
pub mod slurm;
pub mod task;
pub mod tree;
pub mod worker;

pub use error::LabError;
pub use search::{Ablation, RunState, Search, SearchSummary, Settings};
