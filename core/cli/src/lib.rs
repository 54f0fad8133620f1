//! `trex-host`, the trex command line: one file per subcommand ([`commands`]), the terminal's
//! progress bars ([`progress`]), text renderings ([`render`], [`report`]), the HTML page of runs
//! ([`html`]), the benchmarks
//! ([`bench`](mod@bench)) and the registry fetches behind model and data-set names ([`assets`]).
//!
//! Architecture Invariant: this is the only crate that prints, parses arguments or sets up
//! logging; the libraries below it report through return values and observers.

#![forbid(unsafe_code)]

pub mod assets;
pub mod bench;
pub mod commands;
pub mod html;
pub mod progress;
pub mod render;
pub mod report;

/// Log to standard error: warnings, and trex's own information lines, unless `-v` or `RUST_LOG`
/// say otherwise.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,trex=info",
        1 => "debug,wasmtime=info,cranelift=info",
        _ => "trace,cranelift=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
