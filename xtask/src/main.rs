//! Project chores: `cargo xtask build-plugins | demo | test | ci | bench-plugins`.
//!
//! Rust instead of shell so the steps read the same everywhere and fail with clear messages.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <command>

commands:
  build-plugins   add the wasm32-wasip2 target if missing, build every plugin in plugins/ and
                  copy each component next to its plugin.toml
  demo            build the host and the plugins, then run the main job (see README)
  test            build the plugins and run the whole test suite (what CI runs)
  ci              check formatting, clippy, docs, then `test`
  bench-plugins   build in release mode and run the plugin-host benchmark
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-plugins") => build_plugins(),
        Some("demo") => demo(&args[1..]),
        Some("test") => test(),
        Some("ci") => ci(),
        Some("bench-plugins") => bench_plugins(),
        Some("-h" | "--help" | "help") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{HELP}"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") => Ok(()),
        Ok(_) => run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"])),
        Err(e) => bail!("rustup is needed to add the wasm32-wasip2 target: {e}"),
    }
}

/// Build the plugins workspace and place each component next to its manifest.
fn build_plugins() -> Result<()> {
    ensure_wasm_target()?;
    let plugins = root().join("plugins");
    run(cargo().current_dir(&plugins).args(["build", "--release", "--target", "wasm32-wasip2"]))?;
    let built = plugins.join("target/wasm32-wasip2/release");
    let mut placed = 0;
    let mut folders = Vec::new();
    for parent in [plugins.clone(), plugins.join("testing")] {
        for entry in std::fs::read_dir(&parent)? {
            folders.push(entry?.path());
        }
    }
    for dir in folders {
        let manifest = dir.join("plugin.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)?;
        let wasm = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("wasm").map(|r| r.trim_start().trim_start_matches('=').trim().trim_matches('"').to_string()))
            .with_context(|| format!("{}: no `wasm` field", manifest.display()))?;
        let from = built.join(&wasm);
        std::fs::copy(&from, dir.join(&wasm)).with_context(|| {
            format!("copy {} (does the crate's [lib] name match `wasm` in {}?)", from.display(), manifest.display())
        })?;
        placed += 1;
    }
    eprintln!("placed {placed} plugin components under {}", plugins.display());
    Ok(())
}

fn demo(extra: &[String]) -> Result<()> {
    build_plugins()?;
    let mut cmd = cargo();
    cmd.current_dir(root()).args(["run", "--release", "--quiet", "-p", "trex-core", "--bin", "trex-host", "--"]);
    cmd.args(["--plugins", "plugins", "pipeline", "examples/pipelines/support-faq/pipeline.toml"]);
    cmd.args(extra);
    run(&mut cmd)
}

fn test() -> Result<()> {
    build_plugins()?;
    run(cargo().current_dir(root()).args(["test", "--workspace", "--all-targets"]))?;
    run(cargo().current_dir(root()).args(["test", "--workspace", "--doc"]))
}

fn ci() -> Result<()> {
    ensure_wasm_target()?;
    run(cargo().current_dir(root()).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root().join("plugins")).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root()).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo()
        .current_dir(root().join("plugins"))
        .args(["clippy", "--release", "--target", "wasm32-wasip2", "--", "-D", "warnings"]))?;
    run(cargo().current_dir(root()).env("RUSTDOCFLAGS", "-D warnings").args(["doc", "--workspace", "--no-deps"]))?;
    test()
}

fn bench_plugins() -> Result<()> {
    build_plugins()?;
    run(cargo().current_dir(root()).args(["run", "--release", "-p", "trex-core", "--bin", "trex-host", "--", "--plugins", "plugins", "bench", "plugins"]))
}
