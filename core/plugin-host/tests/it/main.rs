//! trex-plugin-host's integration tests, in one binary: the OpenAI-compatible client against the
//! scripted loopback server.

mod llm;
