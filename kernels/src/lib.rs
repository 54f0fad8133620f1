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
}

impl Real for f32 {}
impl Real for f64 {}
