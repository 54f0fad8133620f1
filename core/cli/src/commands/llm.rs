//! `trex-host llm check`: what an OpenAI-compatible server supports, before a search relies on
//! it.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Subcommand;
use trex_plugin_host::llm::{OpenAiClient, OpenAiConfig, TokenMeter};
use trex_plugin_host::text;

/// Talk to an LLM server the way the `llm` Researcher and `llm-data` do.
#[derive(Subcommand, Debug)]
pub enum LlmCommand {
    /// Send one tiny request per structured-output format (json_schema, json_object + schema,
    /// json_object, schema in the prompt) and print which the server accepts, how fast it
    /// answers, and whether it reports token counts. `search` runs the same check once at start.
    ///
    /// Example:
    ///
    ///   trex-host llm check --llm-base-url http://127.0.0.1:8000/v1 --llm-model smollm2
    #[command(verbatim_doc_comment)]
    Check {
        /// OpenAI-compatible server root up to /v1.
        #[arg(long)]
        llm_base_url: String,
        /// Model name for the server.
        #[arg(long)]
        llm_model: String,
        /// Environment variable holding the API key (the key never leaves the host).
        #[arg(long)]
        llm_api_key_env: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl LlmCommand {
    /// Run it.
    pub async fn execute(self) -> Result<ExitCode> {
        let LlmCommand::Check { llm_base_url, llm_model, llm_api_key_env, json } = self;
        let config = OpenAiConfig {
            base_url: llm_base_url,
            model: llm_model,
            api_key_env: llm_api_key_env,
            timeout_s: 60.0,
            ..OpenAiConfig::default()
        };
        let client = OpenAiClient::new(config, Arc::new(TokenMeter::new(None)))?;
        let probe = client.probe().await;
        if json {
            println!("{}", serde_json::to_string_pretty(&probe)?);
        } else {
            println!("server {}", probe.server);
            println!("{:<22} {:<4} {:>9}  DETAIL", "FORMAT", "OK", "LATENCY");
            for c in &probe.checks {
                println!(
                    "{:<22} {:<4} {:>6.0} ms  {}",
                    c.format.as_str(),
                    if c.ok { "yes" } else { "no" },
                    c.latency_ms,
                    text::line(&c.detail, 200)
                );
            }
            println!(
                "token usage: {}",
                if probe.usage_reported { "reported" } else { "not reported (trex estimates it)" }
            );
            match probe.chosen {
                Some(f) => println!("trex uses: {}", f.as_str()),
                None => println!("trex cannot use this server"),
            }
        }
        Ok(match probe.failure() {
            None => ExitCode::SUCCESS,
            Some(why) => {
                eprintln!("error: {}", text::for_terminal(&why, 4000));
                ExitCode::FAILURE
            }
        })
    }
}
