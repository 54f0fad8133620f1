//! Shared helpers for the end-to-end tests: building the plugin components and laying out
//! throw-away plugin folders with their own manifests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// Build every plugin (standard and testing) for wasm32-wasip2, once per test process.
/// Cargo makes this a no-op when nothing changed.
pub fn build_plugins() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let plugins = root().join("plugins");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(&plugins)
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .expect("cargo can be started");
            assert!(
                out.status.success(),
                "building the plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            plugins.join("target/wasm32-wasip2/release")
        })
        .clone()
}

/// The built component of the plugin crate whose library is named `lib`.
pub fn component(lib: &str) -> PathBuf {
    build_plugins().join(format!("{lib}.wasm"))
}

/// Lay out `dir/<folder>/plugin.toml` with `manifest` and a copy of component `lib` as `<lib>.wasm`.
pub fn install(dir: &Path, folder: &str, lib: &str, manifest: &str) -> PathBuf {
    let target = dir.join(folder);
    std::fs::create_dir_all(&target).expect("create plugin folder");
    std::fs::copy(component(lib), target.join(format!("{lib}.wasm"))).expect("copy component");
    std::fs::write(target.join("plugin.toml"), manifest).expect("write manifest");
    target.join("plugin.toml")
}

/// A manifest for component `lib` under `name` and `kind`, with extra TOML appended.
pub fn manifest(name: &str, kind: &str, lib: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"{kind}\"\nversion = \"0.1.0\"\napi-version = \"0.1.0\"\nwasm = \"{lib}.wasm\"\n{extra}\n"
    )
}

/// Copies of the standard plugins (as `--plugins` expects them) in a fresh folder.
pub fn standard_plugins(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    for (folder, lib) in [
        ("chat-format", "chat_format"),
        ("filter-length", "filter_length"),
        ("dedup-exact", "dedup_exact"),
        ("dedup-near", "dedup_near"),
        ("clean-text", "clean_text"),
        ("load-bfcl", "load_bfcl"),
        ("exact-match", "exact_match"),
        ("random-researcher", "random_researcher"),
        ("heuristic-researcher", "heuristic_researcher"),
        ("llm-researcher", "llm_researcher"),
    ] {
        let text =
            std::fs::read_to_string(root().join("plugins").join(folder).join("plugin.toml")).expect("read manifest");
        install(&plugins, folder, lib, &text);
    }
    plugins
}
