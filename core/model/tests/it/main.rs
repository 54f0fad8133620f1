//! trex-model's integration tests, in one binary: the engine end to end on tiny random models,
//! parity with the reference implementation on the real SmolLM2 GGUF, and (with a GPU) the CUDA
//! engine against the CPU engine.

mod cuda_train;
mod engine;
mod parity;
mod serving;
