//! The architecture invariants of `ARCHITECTURE.md`, checked: each rule below fails this test
//! when the code breaks it, naming the file or crate.
//!
//! - The dependency rules between crates (from `cargo metadata`, transitive normal dependencies).
//! - `unsafe` only in `trex-kernels` and at the one marked place of the plugin host, each block
//!   with a `SAFETY:` comment; the crates that need none forbid it.
//! - Only the command line prints.
//! - Every module says what it is for in a `//!` line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(trex_tests::root()).unwrap_or(path).display().to_string()
}

/// The lines of `text` with `//` comments and the contents of string literals blanked out
/// (roughly: enough to find keywords and macro calls in code, not in prose).
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block_comment = false;
    // A quote as a character literal does not start a string.
    let text = text.replace("'\"'", "' '").replace("'\\\"'", "' '");
    for line in text.lines() {
        let mut code = String::new();
        let mut chars = line.chars().peekable();
        let mut in_str = false;
        while let Some(c) = chars.next() {
            if in_block_comment {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block_comment = false;
                }
                continue;
            }
            if in_str {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_str = false;
                    code.push('"');
                }
                continue;
            }
            match c {
                '"' => {
                    in_str = true;
                    code.push('"');
                }
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block_comment = true;
                }
                _ => code.push(c),
            }
        }
        out.push(code);
    }
    out
}

/// The transitive normal (non-dev, non-build) dependencies of workspace crate `krate` on this
/// platform, by package name, as `cargo tree` shows them.
fn dependencies(krate: &str) -> BTreeSet<String> {
    // The host links the SDK without its `guest` feature (the wit-bindgen macros); that is the
    // SDK the rules are about.
    let features: &[&str] = if krate == "trex-sdk" { &["--no-default-features"] } else { &[] };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(trex_tests::root())
        .args(["tree", "--offline", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .args(features)
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree -p {krate} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1) // the crate itself
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// The workspace's crates.
const CRATES: &[&str] = &[
    "trex-sdk",
    "trex-kernels",
    "trex-model",
    "trex-plugin-host",
    "trex-lab",
    "trex-assets",
    "trex-cli",
    "trex-tests",
];

#[test]
fn crates_depend_only_downwards() {
    let deps: BTreeMap<&str, BTreeSet<String>> = CRATES.iter().map(|c| (*c, dependencies(c))).collect();
    // (crate, packages it must not depend on, even indirectly, and why)
    let rules: &[(&str, &[&str], &str)] = &[
        (
            "trex-sdk",
            &["trex-kernels", "trex-model", "trex-plugin-host", "trex-lab", "trex-cli", "anyhow"],
            "the SDK is the plugin contract: it depends on nothing in core or kernels and does not expose anyhow",
        ),
        (
            "trex-kernels",
            &["trex-model", "trex-plugin-host", "trex-lab", "trex-cli", "wasmtime"],
            "the kernels know nothing about models, plugins or the search",
        ),
        (
            "trex-model",
            &["wasmtime", "wasmtime-wasi", "tokio", "clap", "trex-plugin-host", "trex-lab", "trex-cli"],
            "the engine needs no sandbox, async runtime or argument parser",
        ),
        (
            "trex-plugin-host",
            &["trex-model", "trex-kernels", "trex-lab", "trex-cli", "tokenizers"],
            "the sandbox knows neither the model nor the GPU (it counts tokens through TokenCounter)",
        ),
        (
            "trex-lab",
            &["trex-cli", "clap", "indicatif", "tracing-subscriber", "trex-assets"],
            "the lab neither parses arguments nor draws; the caller resolves what to fetch",
        ),
        (
            "trex-assets",
            &["trex-model", "trex-plugin-host", "trex-lab", "trex-cli", "wasmtime"],
            "fetching is independent of everything it fetches for",
        ),
    ];
    for (krate, banned, why) in rules {
        let have = &deps[krate];
        for b in *banned {
            assert!(!have.contains(*b), "{krate} depends on {b} (through `cargo tree -p {krate} -i {b}`): {why}");
        }
    }
    // Only the command line uses the terminal crates.
    for (krate, have) in &deps {
        if *krate == "trex-cli" {
            continue;
        }
        for ui in ["clap", "indicatif", "tracing-subscriber"] {
            assert!(!have.contains(ui), "{krate} depends on {ui}: only trex-cli parses arguments and draws");
        }
    }
}

/// Crate source folders that hold library code (what the printing and doc rules cover).
fn library_dirs() -> Vec<PathBuf> {
    let root = trex_tests::root();
    ["core/model/src", "core/plugin-host/src", "core/lab/src", "core/assets/src", "kernels/src", "sdk/src"]
        .iter()
        .map(|d| root.join(d))
        .collect()
}

#[test]
fn unsafe_lives_in_the_kernels_and_at_the_wasm_boundary_with_a_safety_comment() {
    let root = trex_tests::root();
    let allowed_outside_kernels = [root.join("core/plugin-host/src/engine.rs")];
    let mut dirs: Vec<PathBuf> =
        ["core", "kernels/src", "sdk/src", "tests", "xtask/src"].iter().map(|d| root.join(d)).collect();
    dirs.dedup();
    for file in dirs.iter().flat_map(|d| rust_files(d)) {
        if file.ends_with("tests/it/tidy.rs") {
            continue;
        }
        let text = read(&file);
        let lines = code_lines(&text);
        let raw: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let has_unsafe = line.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|w| w == "unsafe");
            if !has_unsafe || line.contains("unsafe_code") || line.contains("unsafe_op_in_unsafe_fn") {
                continue;
            }
            let in_kernels = file.starts_with(root.join("kernels"));
            assert!(
                in_kernels || allowed_outside_kernels.contains(&file),
                "{}:{}: `unsafe` outside trex-kernels and the plugin host's component cache",
                rel(&file),
                i + 1
            );
            if line.contains("unsafe {") || line.trim_end().ends_with("unsafe") {
                let window = &raw[i.saturating_sub(12)..=i];
                assert!(
                    window.iter().any(|l| l.contains("SAFETY:")),
                    "{}:{}: an `unsafe` block without a `// SAFETY:` comment above it",
                    rel(&file),
                    i + 1
                );
            }
        }
    }
    for (lib, attr) in [
        ("core/lab/src/lib.rs", "#![forbid(unsafe_code)]"),
        ("core/cli/src/lib.rs", "#![forbid(unsafe_code)]"),
        ("core/assets/src/lib.rs", "#![forbid(unsafe_code)]"),
        ("core/plugin-host/src/lib.rs", "#![deny(unsafe_code)]"),
    ] {
        assert!(read(&root.join(lib)).contains(attr), "{lib} must say {attr}");
    }
}

#[test]
fn only_the_command_line_prints() {
    for file in library_dirs().iter().flat_map(|d| rust_files(d)) {
        for (i, line) in code_lines(&read(&file)).iter().enumerate() {
            for mac in ["println!", "eprintln!", "print!", "eprint!", "dbg!"] {
                let hit = line
                    .match_indices(mac)
                    .any(|(at, _)| at == 0 || !line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                assert!(
                    !hit,
                    "{}:{}: `{mac}` in a library crate: report through a return value, an observer or `tracing`",
                    rel(&file),
                    i + 1
                );
            }
        }
    }
}

#[test]
fn every_module_says_what_it_is_for() {
    let root = trex_tests::root();
    let mut dirs = library_dirs();
    dirs.extend(["core/cli/src", "xtask/src", "plugins"].iter().map(|d| root.join(d)));
    for file in dirs.iter().flat_map(|d| rust_files(d)) {
        let text = read(&file);
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(first.starts_with("//!"), "{}: the module has no `//!` line saying what it is for", rel(&file));
    }
}

#[test]
fn library_apis_return_typed_errors() {
    for file in library_dirs().iter().flat_map(|d| rust_files(d)) {
        let lines = code_lines(&read(&file));
        for (i, line) in lines.iter().enumerate() {
            let start = line.trim_start();
            if !(start.starts_with("pub fn ") || start.starts_with("pub async fn ")) {
                continue;
            }
            // The whole signature, up to its body or its end.
            let mut sig = String::new();
            for l in &lines[i..] {
                sig.push_str(l);
                if l.contains('{') || l.trim_end().ends_with(';') {
                    break;
                }
            }
            let returns = sig.split("->").nth(1).unwrap_or("").split('{').next().unwrap_or("");
            let compact: String = returns.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(
                !(compact.contains("Result<") && compact.contains(",String>")),
                "{}:{}: a public function of a library crate returns `Result<_, String>`: give it a typed error",
                rel(&file),
                i + 1
            );
        }
    }
}
