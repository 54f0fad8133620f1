//! Bindings generated from `sdk/wit` by wit-bindgen. Plugin authors use the safe wrappers in
//! [`crate::guest`] instead; these are public only so the `export_*!` macros can reach them.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

/// The imports every plugin may use, generated once and shared by the three worlds.
pub mod imports {
    wit_bindgen::generate!({
        path: "wit/v0.1.1",
        world: "imports",
        runtime_path: "::trex_sdk::__private::wit_bindgen::rt",
    });
}

/// `world data-tool`.
pub mod data_tool {
    wit_bindgen::generate!({
        path: "wit/v0.1.1",
        world: "data-tool",
        runtime_path: "::trex_sdk::__private::wit_bindgen::rt",
        with: {
            "trex:plugin/types@0.1.1": crate::guest::bindings::imports::trex::plugin::types,
            "trex:plugin/host@0.1.1": crate::guest::bindings::imports::trex::plugin::host,
            "trex:plugin/llm@0.1.1": crate::guest::bindings::imports::trex::plugin::llm,
            "trex:plugin/tokenizer@0.1.1": crate::guest::bindings::imports::trex::plugin::tokenizer,
            "trex:plugin/records@0.1.1": crate::guest::bindings::imports::trex::plugin::records,
        },
        pub_export_macro: true,
        export_macro_name: "export_data_tool_world",
        default_bindings_module: "::trex_sdk::guest::bindings::data_tool",
    });
}

/// `world evaluator`.
pub mod evaluator {
    wit_bindgen::generate!({
        path: "wit/v0.1.1",
        world: "evaluator",
        runtime_path: "::trex_sdk::__private::wit_bindgen::rt",
        with: {
            "trex:plugin/types@0.1.1": crate::guest::bindings::imports::trex::plugin::types,
            "trex:plugin/host@0.1.1": crate::guest::bindings::imports::trex::plugin::host,
            "trex:plugin/llm@0.1.1": crate::guest::bindings::imports::trex::plugin::llm,
            "trex:plugin/tokenizer@0.1.1": crate::guest::bindings::imports::trex::plugin::tokenizer,
        },
        pub_export_macro: true,
        export_macro_name: "export_evaluator_world",
        default_bindings_module: "::trex_sdk::guest::bindings::evaluator",
    });
}

/// `world researcher`.
pub mod researcher {
    wit_bindgen::generate!({
        path: "wit/v0.1.1",
        world: "researcher",
        runtime_path: "::trex_sdk::__private::wit_bindgen::rt",
        with: {
            "trex:plugin/types@0.1.1": crate::guest::bindings::imports::trex::plugin::types,
            "trex:plugin/host@0.1.1": crate::guest::bindings::imports::trex::plugin::host,
            "trex:plugin/llm@0.1.1": crate::guest::bindings::imports::trex::plugin::llm,
            "trex:plugin/tokenizer@0.1.1": crate::guest::bindings::imports::trex::plugin::tokenizer,
        },
        pub_export_macro: true,
        export_macro_name: "export_researcher_world",
        default_bindings_module: "::trex_sdk::guest::bindings::researcher",
    });
}
