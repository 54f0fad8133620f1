//! The terminal face of a search: messages printed above one progress bar per running node.

use std::collections::BTreeMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use trex_lab::observer::{NodeProgress, Observer};

/// Characters of one message shown at most.
const MESSAGE_MAX: usize = 4000;

/// An [`Observer`] that draws progress bars on standard error.
#[derive(Debug, Default)]
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<u64, ProgressBar>>,
}

impl Bars {
    /// Bars on standard error (hidden when it is not a terminal).
    pub fn new() -> Self {
        Self::default()
    }

    fn bar(&self, node: u64) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(node)
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("node {prefix:>3} {bar:24} {pos}/{len} {msg} [{elapsed}]")
                        .expect("valid template"),
                );
                bar.set_prefix(node.to_string());
                bar
            })
            .clone()
    }
}

impl Observer for Bars {
    fn message(&self, line: &str) {
        // Messages quote what plugins and LLMs wrote (rationales, errors): no escape sequence
        // or carriage return reaches the terminal.
        let line = trex_plugin_host::text::for_terminal(line, MESSAGE_MAX);
        self.multi.suspend(|| eprintln!("{line}"));
    }

    fn progress(&self, node: u64, p: &NodeProgress) {
        let bar = self.bar(node);
        bar.set_length(p.total);
        bar.set_position(p.done);
        if p.detail.is_empty() {
            bar.set_message(p.stage.as_str());
        } else {
            bar.set_message(format!("{} {}", p.stage.as_str(), p.detail));
        }
    }

    fn node_ended(&self, node: u64) {
        let bar = self.bars.lock().unwrap_or_else(|e| e.into_inner()).remove(&node);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
}
