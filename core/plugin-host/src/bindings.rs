//! Host-side bindings generated from `sdk/wit/v0.1.1` (the current contract; components built against 0.1.0 link to it by semver) by wasmtime's `bindgen!`.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

/// `world data-tool`; also the home of the shared `host`, `llm`, `tokenizer`, `types` and `records` modules.
pub mod data_tool {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit/v0.1.1",
        world: "data-tool",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "trex:plugin/records.reader": crate::records::HostReader,
            "trex:plugin/records.writer": crate::records::HostWriter,
        },
    });
}

/// `world evaluator`.
pub mod evaluator {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit/v0.1.1",
        world: "evaluator",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "trex:plugin/types": super::data_tool::trex::plugin::types,
            "trex:plugin/host": super::data_tool::trex::plugin::host,
            "trex:plugin/llm": super::data_tool::trex::plugin::llm,
            "trex:plugin/tokenizer": super::data_tool::trex::plugin::tokenizer,
        },
    });
}

/// `world researcher`.
pub mod researcher {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit/v0.1.1",
        world: "researcher",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "trex:plugin/types": super::data_tool::trex::plugin::types,
            "trex:plugin/host": super::data_tool::trex::plugin::host,
            "trex:plugin/llm": super::data_tool::trex::plugin::llm,
            "trex:plugin/tokenizer": super::data_tool::trex::plugin::tokenizer,
        },
    });
}

pub use data_tool::trex::plugin::{host, llm, records, tokenizer, types};
