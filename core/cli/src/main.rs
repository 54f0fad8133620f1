//! `trex-host`: parse the command line and dispatch; every command lives in `commands/`.

use std::process::ExitCode;

use clap::Parser;
use trex_cli::commands::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    trex_cli::init_logging(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.execute(&cli.global)) {
        Ok(code) => code,
        Err(e) => {
            // Errors quote plugin output: escaped and bounded before they reach the terminal.
            eprintln!("error: {}", trex_plugin_host::text::for_terminal(&format!("{e:#}"), 16_000));
            ExitCode::FAILURE
        }
    }
}
