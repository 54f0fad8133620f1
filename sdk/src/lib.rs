//! The trex plugin SDK: the contract between the trex host and its WebAssembly plugins.
//!
//! - [`types`]: the JSON documents that cross the boundary (recipes, proposals, research
//!   contexts, outcomes), each with a JSON Schema, each rejecting unknown fields.
//! - [`guest`] (feature `guest`, on by default): what a plugin author writes against: the
//!   [`guest::DataTool`], [`guest::Evaluator`] and [`guest::Researcher`] traits, the
//!   `export_*!` macros, and the host functions (`log`, `progress`, `cancelled`, `chat`,
//!   `complete`, `count_tokens`).
//! - `wit/v0.1.1/trex.wit`: the WIT package `trex:plugin@0.1.1`, the single source of truth for
//!   the ABI; both the guest bindings here and the host bindings in `trex-plugin-host` are
//!   generated from it. Every published version stays in its own folder (`wit/v0.1.0/` is
//!   frozen), and the host serves components built against any of them.
//!
//! API Boundary: this crate is a semver boundary. The host adapts to it, never the reverse; it
//! depends on nothing in the host crates (`core/`) or `trex-kernels`, and never exposes `anyhow`.

#[cfg(feature = "guest")]
extern crate self as trex_sdk;

#[cfg(feature = "guest")]
pub mod guest;
pub mod rng;
pub mod types;

#[cfg(feature = "guest")]
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// The README's plugin example, compiled as a doctest so it cannot rot.
#[cfg(all(doctest, feature = "guest"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
