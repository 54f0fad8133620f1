//! The TOML files users write (`plugin.toml`, pipeline files, `task.toml`) name their keys in
//! snake_case. The kebab-case spellings earlier versions used (`api-version`, `timeout-ms`,
//! `dataset-dir`, ...) are still read, for one more version, and reported so that the caller can
//! warn. Plugin configs (`config = { ... }`) belong to their plugin and are left as they are.

use serde::de::DeserializeOwned;

/// `text` deserialized, with the old spellings it used (`old → new`, in key order). A file
/// written in snake_case is read directly, so errors keep their line and column.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<(T, Vec<String>), TomlError> {
    let fail = |e: toml::de::Error| TomlError(e.to_string().trim_end().to_string());
    let table: toml::Table = toml::from_str(text).map_err(fail)?;
    let mut renamed = Vec::new();
    let fixed = snake_case(toml::Value::Table(table), &mut renamed);
    if renamed.is_empty() {
        return toml::from_str(text).map(|v| (v, renamed)).map_err(fail);
    }
    let value = T::deserialize(fixed).map_err(fail)?;
    Ok((value, renamed))
}

/// Why a user's TOML file could not be read: the parser's message, with the line and column
/// where it has them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TomlError(pub String);

/// A warning for the old spellings `renamed` in `file`.
pub fn deprecation(file: &std::path::Path, renamed: &[String]) -> Option<String> {
    (!renamed.is_empty()).then(|| {
        format!(
            "{}: {} {} the old spelling; trex reads it for now, and from 0.3 on only the snake_case one: rename it",
            file.display(),
            renamed.join(", "),
            if renamed.len() == 1 { "is" } else { "are" }
        )
    })
}

fn snake_case(v: toml::Value, renamed: &mut Vec<String>) -> toml::Value {
    match v {
        toml::Value::Table(t) => {
            let mut out = toml::Table::new();
            for (k, v) in t {
                // A plugin's config is the plugin's business.
                let v = if k == "config" { v } else { snake_case(v, renamed) };
                let key = if k.contains('-') {
                    let new = k.replace('-', "_");
                    renamed.push(format!("`{k}` → `{new}`"));
                    new
                } else {
                    k
                };
                out.insert(key, v);
            }
            toml::Value::Table(out)
        }
        toml::Value::Array(items) => toml::Value::Array(items.into_iter().map(|i| snake_case(i, renamed)).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct File {
        api_version: String,
        limits: Limits,
        steps: Vec<Step>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        timeout_ms: u64,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Step {
        config: toml::Value,
    }

    #[test]
    fn old_spellings_are_read_and_named_and_plugin_configs_are_left_alone() {
        let text = "api-version = '0.1.1'\n[limits]\ntimeout-ms = 5\n[[steps]]\nconfig = { on-bad = 1 }\n";
        let (f, renamed): (File, _) = parse(text).unwrap();
        assert_eq!((f.api_version.as_str(), f.limits.timeout_ms), ("0.1.1", 5));
        assert!(f.steps[0].config.get("on-bad").is_some(), "{:?}", f.steps);
        assert_eq!(renamed, ["`api-version` → `api_version`", "`timeout-ms` → `timeout_ms`"]);
        let (_, renamed): (File, _) = parse("api_version = '1'\nsteps = []\n[limits]\ntimeout_ms = 5\n").unwrap();
        assert!(renamed.is_empty());
        let err = parse::<File>("api_version = '1'\nsteps = []\n[limits]\ntimeout_mss = 5\n").unwrap_err().0;
        assert!(err.contains("timeout_mss") && err.contains("line 4"), "{err}");
        let err = parse::<File>("api-version = '1'\nsteps = []\n[limits]\ntimeout_mss = 5\n").unwrap_err().0;
        assert!(err.contains("timeout_mss"), "with an old spelling the field is still named: {err}");
    }
}
