//! CPU backend: rayon for parallelism, the `gemm` crate (or the system OpenBLAS, with
//! `TREX_BLAS=openblas`) for matrix products.

mod attention;
mod blas;
mod denormals;
mod elementwise;
mod matmul;
mod norm;
mod rope;

pub use attention::{AttentionShape, attention_backward, attention_cached, attention_forward};
pub use blas::backend as blas_backend;
pub use denormals::{flush_denormals, flush_denormals_on_this_thread};
pub use elementwise::{add_assign, cross_entropy, scale, swiglu_backward, swiglu_forward};
pub use matmul::{Trans, matmul, matmul_serial, matmul_strided};
pub use norm::{rms_norm_backward, rms_norm_forward};
pub use rope::{RopeLayout, RopeTable, rope_backward, rope_forward};

#[cfg(test)]
pub(crate) mod testing;
