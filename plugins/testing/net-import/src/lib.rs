//! `net-import`: a data tool whose component imports `wasi:http/outgoing-handler@0.3.0`, for the
//! test that the host refuses it naming the import. Written against the WIT directly.

wit_bindgen::generate!({ path: "wit", world: "net-tool", generate_all });

use exports::trex::plugin::data_tool_api::{Guest, RunStats};
use trex::plugin::records::{Reader, Writer};
use trex::plugin::types::{PluginError, PluginInfo, PluginKind};

struct Net;

impl Guest for Net {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "net-import".into(),
            kind: PluginKind::DataTool,
            version: "0.1.0".into(),
            api_version: "0.1.1".into(),
            description: "Imports HTTP.".into(),
            config_schema: "{}".into(),
        }
    }

    fn validate_config(config: String) -> Result<String, PluginError> {
        Ok(config)
    }

    fn run(_config: String, _input: &Reader, _output: &Writer) -> Result<RunStats, PluginError> {
        let status = wasi::http::outgoing_handler::handle("http://example.com/");
        Err(PluginError { message: format!("fetched with status {status}"), field: None })
    }
}

export!(Net);
