//! Every example task under `examples/tasks` loads (the ones on real data fetch it from PyPI into
//! the cache, as a user's first search would), every plugin it names exists and accepts its
//! config, its splits are non-empty, and no example of one split appears in another (prompts
//! compared normalized: case, spacing and punctuation ignored).

use std::collections::BTreeSet;

use trex_lab::task::{AssetError, Assets, Task};
use trex_plugin_host::{HostConfig, PluginHost};

/// The data sets and models the example tasks name, fetched as `trex-host` fetches them.
struct Fetch;

impl Assets for Fetch {
    fn dataset(&self, name: &str) -> Result<std::path::PathBuf, AssetError> {
        trex_assets::datasets::fetch(name).map_err(|e| AssetError(e.to_string()))
    }

    fn model(&self, _name: &str) -> Result<Option<std::path::PathBuf>, AssetError> {
        // The base model is not needed to check a task.
        Ok(None)
    }
}

/// A prompt as the split check compares it: lower case, letters and digits, one space between
/// words.
fn normalized(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn examples(path: &std::path::Path, by_answer: bool) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let prompt =
                v["prompt"].as_str().unwrap_or_else(|| panic!("{}: a record without `prompt`", path.display()));
            let answer = v.get("completion").or_else(|| v.get("response")).and_then(|a| a.as_str()).unwrap_or_default();
            // MOSES prompts are short SMILES prefixes that several molecules share: there the
            // molecule (prompt and answer, exactly) is the example.
            if by_answer { format!("{prompt}\u{0}{answer}") } else { normalized(prompt) }
        })
        .collect()
}

#[test]
fn every_example_task_loads_validates_and_keeps_its_test_split_apart() {
    trex_tests::build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let host = runtime.block_on(PluginHost::discover(&plugins, HostConfig::default())).unwrap();
    let tasks = Task::folders(&trex_tests::root().join("examples/tasks")).unwrap();
    assert!(tasks.len() >= 7, "{tasks:?}");
    let mut domains = BTreeSet::new();
    for folder in &tasks {
        let (mut task, file) = Task::load(folder, &Fetch).unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(task.validate_with(&host, &file)).unwrap_or_else(|e| panic!("{e}"));
        assert!(folder.join("README.md").is_file(), "{}: no README.md", folder.display());
        let by_answer = task.name.contains("moses");
        let split = |f: &std::path::Path| examples(&task.dataset_dir.join(f), by_answer);
        let (train, validation, test) =
            (split(&task.splits.train), split(&task.splits.validation), split(&task.splits.test));
        assert!(train.len() >= 100 && validation.len() >= 40 && test.len() >= 40, "{}: splits too small", task.name);
        for (a, an, b, bn) in [
            (&train, "train", &validation, "validation"),
            (&train, "train", &test, "test"),
            (&validation, "validation", &test, "test"),
        ] {
            let seen: BTreeSet<&String> = a.iter().collect();
            let leaked: Vec<&String> = b.iter().filter(|p| seen.contains(p)).collect();
            assert!(
                leaked.is_empty(),
                "{}: {} {bn} examples also appear in {an}, e.g. {:?}",
                task.name,
                leaked.len(),
                leaked.first()
            );
        }
        domains.insert(task.domain.clone());
    }
    assert!(domains.len() >= 6, "{domains:?}");
}
