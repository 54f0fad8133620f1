//! `spin-describe`: a data tool whose `describe()` never returns, for the test that a plugin
//! spinning there cannot hold up the commands that list plugins. Written against the WIT
//! directly, without the SDK (whose `describe` is generated).

wit_bindgen::generate!({ path: "../../../sdk/wit/v0.1.1", world: "data-tool" });

use exports::trex::plugin::data_tool_api::{Guest, RunStats};
use trex::plugin::records::{Reader, Writer};
use trex::plugin::types::{PluginError, PluginInfo};

struct Spin;

impl Guest for Spin {
    fn describe() -> PluginInfo {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn validate_config(config: String) -> Result<String, PluginError> {
        Ok(config)
    }

    fn run(_config: String, _input: &Reader, _output: &Writer) -> Result<RunStats, PluginError> {
        Ok(RunStats { dropped: Vec::new(), metrics: Vec::new() })
    }
}

export!(Spin);
