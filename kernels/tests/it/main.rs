//! trex-kernels' integration tests, in one binary: with the `cuda` feature, every kernel compiles
//! through NVRTC (no GPU needed) and, on a GPU, every CUDA op matches the CPU reference.

mod cuda_parity;
mod nvrtc;
