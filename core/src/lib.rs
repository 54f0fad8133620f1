//! trex host runtime: the plugin host, data pipelines, benchmarks and the pieces behind the
//! `trex-host` binary. See `ARCHITECTURE.md` at the repository root for the map.

pub mod assets;
pub mod bench;
pub mod datasets;
pub mod generate;
pub mod llm;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod report;
pub mod search;
pub mod train;
