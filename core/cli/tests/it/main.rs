//! trex-host's integration tests, in one binary: the commands end to end, and searches on a tiny
//! model through the command line and the library.

mod browser;
mod cli;
mod diskfull;
mod drill;
mod interop;
mod new;
mod runs;
mod search;
mod serve;
mod slurm;
mod ui;
