//! trex-lab's integration tests, in one binary: the example tasks load, validate and keep their
//! splits apart.

mod tasks;
