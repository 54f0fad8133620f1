//! The trex plugin SDK.

#[cfg(feature = "guest")]
extern crate self as trex_sdk;

#[cfg(feature = "guest")]
pub mod guest;
pub mod types;

#[cfg(feature = "guest")]
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}
