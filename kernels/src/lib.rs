//! The tensor ops trex's trainer needs, forward and backward.
//!
//! The CPU backend ([`cpu`]) is the numerical reference: every op is generic over the float
//! type so that its backward can be checked against finite differences in `f64`, while the
//! trainer runs it in `f32`. Matrices are row-major slices with explicit shapes; a tensor here is
//! just a `&[T]` plus the dimensions the function documents, which keeps the ops free of
//! allocation policy and lets the caller own every buffer.
//!
//! The CUDA backend (the `cuda` feature, module `cuda`) runs the same ops on a GPU; its
//! results are checked against the CPU backend.
//!
//! Architecture Invariant: this crate knows nothing about plugins, tasks, search or models; it
//! offers ops. Model structure lives in `trex-model`.

#![deny(unsafe_code)]

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

/// The float types the ops are generic over (`f32` for training, `f64` for checks).
pub trait Real:
    num_traits::Float
    + num_traits::FromPrimitive
    + Copy
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + std::iter::Sum
    + 'static
{
    /// The slice as `f32`, when `Self` is `f32` (lets f32 products go to a system BLAS).
    fn as_f32(_x: &[Self]) -> Option<&[f32]> {
        None
    }
    /// The mutable slice as `f32`, when `Self` is `f32`.
    fn as_f32_mut(_x: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl Real for f32 {
    fn as_f32(x: &[f32]) -> Option<&[f32]> {
        Some(x)
    }
    fn as_f32_mut(x: &mut [f32]) -> Option<&mut [f32]> {
        Some(x)
    }
}
impl Real for f64 {}
