//! End-to-end tests across the trex crates, in one binary.

mod augment;
mod contract;
mod data_tools;
mod evaluators;
mod fuzz;
mod hostile;
mod load;
mod roundtrip;
mod sandbox;
mod soak;
mod tidy;

use std::path::PathBuf;

use trex_plugin_host::HostConfig;

/// Host settings for tests: a shared compile cache under `target/` so each component is
/// compiled once per machine rather than once per test.
pub fn test_config(scratch_root: PathBuf) -> HostConfig {
    HostConfig {
        cache_dir: Some(trex_tests::root().join("target/test-component-cache")),
        scratch_root: Some(scratch_root),
        ..HostConfig::default()
    }
}
