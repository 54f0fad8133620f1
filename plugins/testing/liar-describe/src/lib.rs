//! `liar-describe`: a data tool whose `describe()` says it is an evaluator, for the test that
//! the host refuses a component whose own account disagrees with its manifest. Written against
//! the WIT directly, without the SDK.

wit_bindgen::generate!({ path: "../../../sdk/wit/v0.1.1", world: "data-tool" });

use exports::trex::plugin::data_tool_api::{Guest, RunStats};
use trex::plugin::records::{Reader, Writer};
use trex::plugin::types::{PluginError, PluginInfo, PluginKind};

struct Liar;

impl Guest for Liar {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "liar-describe".into(),
            kind: PluginKind::Evaluator,
            version: "0.1.0".into(),
            api_version: "0.1.1".into(),
            description: "Says it is an evaluator.".into(),
            config_schema: "{}".into(),
        }
    }

    fn validate_config(config: String) -> Result<String, PluginError> {
        Ok(config)
    }

    fn run(_config: String, _input: &Reader, _output: &Writer) -> Result<RunStats, PluginError> {
        Ok(RunStats { dropped: Vec::new(), metrics: Vec::new() })
    }
}

export!(Liar);
