//! Seeded generators of the synthetic FT-Bench-lite tasks (`cargo xtask gen-task-data`). Every
//! record is generated, not collected; each task's README says so and gives the rules. The
//! answers follow from the stated rules alone, so a model can learn them from the training split.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use trex_sdk::rng::SplitMix64;

/// One generated example: the user prompt, the answer and a tag for bad-case grouping.
struct Example {
    prompt: String,
    answer: String,
    tag: String,
}

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// A value in [lo, hi] rounded to a multiple of `step`.
fn between(rng: &mut SplitMix64, lo: f64, hi: f64, step: f64) -> f64 {
    ((lo + rng.unit() * (hi - lo)) / step).round() * step
}

/// Finance: rate a company's liquidity (current ratio) or leverage (debt-to-equity) from two
/// balance-sheet figures, with the bands stated in the system prompt.
fn finance(rng: &mut SplitMix64) -> Example {
    if rng.below(2) == 0 {
        // Keep ratios at least 4% away from the band edges so that rounding never decides.
        let ratio = loop {
            let r = between(rng, 0.5, 2.6, 0.01);
            if (r - 1.0).abs() > 0.04 && (r - 1.5).abs() > 0.06 {
                break r;
            }
        };
        let liabilities = between(rng, 80.0, 900.0, 10.0);
        let assets = (ratio * liabilities).round();
        let answer = if assets / liabilities >= 1.5 {
            "strong"
        } else if assets / liabilities >= 1.0 {
            "adequate"
        } else {
            "weak"
        };
        let phrasing = pick(
            rng,
            &[
                "Current assets {a}; current liabilities {l}. Liquidity?",
                "A firm reports current liabilities of {l} and current assets of {a}. Rate its liquidity.",
                "Liquidity rating for current assets {a} and current liabilities {l}?",
            ],
        );
        let prompt = phrasing.replace("{a}", &assets.to_string()).replace("{l}", &liabilities.to_string());
        Example { prompt, answer: answer.into(), tag: "liquidity".into() }
    } else {
        let ratio = loop {
            let r = between(rng, 0.1, 2.8, 0.01);
            if (r - 0.5).abs() > 0.03 && (r - 1.5).abs() > 0.06 {
                break r;
            }
        };
        let equity = between(rng, 100.0, 1200.0, 10.0);
        let debt = (ratio * equity).round();
        let answer = if debt / equity > 1.5 {
            "high"
        } else if debt / equity > 0.5 {
            "moderate"
        } else {
            "low"
        };
        let phrasing = pick(
            rng,
            &[
                "Total debt {d}; shareholders' equity {e}. Leverage?",
                "A company has equity of {e} and total debt of {d}. Rate its leverage.",
                "Leverage rating for debt {d} and equity {e}?",
            ],
        );
        let prompt = phrasing.replace("{d}", &debt.to_string()).replace("{e}", &equity.to_string());
        Example { prompt, answer: answer.into(), tag: "leverage".into() }
    }
}

/// Clinical: the findings line of a note from a set of vital signs, by fixed thresholds.
fn clinical(rng: &mut SplitMix64) -> Example {
    // Each sign is abnormal about a quarter of the time.
    let abnormal = |rng: &mut SplitMix64| rng.below(4) == 0;
    let temp = if abnormal(rng) { between(rng, 38.1, 40.0, 0.1) } else { between(rng, 36.1, 37.7, 0.1) };
    let hr = if abnormal(rng) {
        if rng.below(2) == 0 { between(rng, 105.0, 150.0, 1.0) } else { between(rng, 38.0, 55.0, 1.0) }
    } else {
        between(rng, 62.0, 97.0, 1.0)
    };
    let (sbp, dbp) = if abnormal(rng) {
        if rng.below(2) == 0 {
            (between(rng, 145.0, 185.0, 1.0), between(rng, 92.0, 115.0, 1.0))
        } else {
            (between(rng, 72.0, 86.0, 1.0), between(rng, 40.0, 55.0, 1.0))
        }
    } else {
        (between(rng, 98.0, 135.0, 1.0), between(rng, 60.0, 85.0, 1.0))
    };
    let spo2 = if abnormal(rng) { between(rng, 82.0, 90.0, 1.0) } else { between(rng, 94.0, 100.0, 1.0) };
    let mut findings = Vec::new();
    if temp >= 38.0 {
        findings.push("fever");
    }
    if hr > 100.0 {
        findings.push("tachycardia");
    }
    if hr < 60.0 {
        findings.push("bradycardia");
    }
    if sbp >= 140.0 || dbp >= 90.0 {
        findings.push("hypertension");
    }
    if sbp < 90.0 {
        findings.push("hypotension");
    }
    if spo2 < 92.0 {
        findings.push("hypoxemia");
    }
    let answer = if findings.is_empty() { "no abnormal findings".to_string() } else { findings.join(", ") };
    let tag = if findings.is_empty() { "normal".to_string() } else { format!("{}-findings", findings.len()) };
    let prompt = format!("Vitals: T {temp:.1} C, HR {hr}, BP {sbp}/{dbp}, SpO2 {spo2}%. Findings?");
    Example { prompt, answer, tag }
}

/// Law: apply a deposit statute (stated in the system prompt) to the facts of a tenancy.
fn statute(rng: &mut SplitMix64) -> Example {
    let names = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kemal", "Lena"];
    let tenant = pick(rng, &names);
    let landlord = pick(rng, &["Mr Ortiz", "Ms Patel", "Acme Lettings", "Mrs Novak", "Riverside Homes"]);
    let damage = rng.below(4) == 0;
    let days = loop {
        let d = 1 + rng.below(40);
        if d != 14 {
            break d;
        }
    };
    let returned = rng.below(6) != 0;
    let timing = if returned {
        format!("returned the deposit {days} days after the tenancy ended")
    } else {
        "has not returned the deposit, 45 days after the tenancy ended".into()
    };
    let evidence = if damage {
        pick(rng, &["documented damage at move-out", "recorded damage in a signed move-out report"]).to_string()
    } else {
        pick(rng, &["documented no damage", "made no record of any damage"]).to_string()
    };
    let answer = if damage {
        "may keep"
    } else if returned && days <= 14 {
        "lawful"
    } else {
        "owes double"
    };
    let prompt = format!("{landlord} {evidence} when {tenant} moved out and {timing}. Outcome?");
    Example { prompt, answer: answer.into(), tag: answer.replace(' ', "-") }
}

/// Sentiment: label a product review built from opinion phrases (some negated) as positive,
/// negative or mixed.
fn sentiment(rng: &mut SplitMix64) -> Example {
    const PRODUCTS: &[&str] = &[
        "blender",
        "headset",
        "backpack",
        "kettle",
        "phone case",
        "desk lamp",
        "rain jacket",
        "router",
        "coffee grinder",
        "keyboard",
        "tent",
        "e-reader",
    ];
    const GOOD: &[&str] = &[
        "works perfectly",
        "is well made",
        "arrived early",
        "is worth the price",
        "feels sturdy",
        "is easy to set up",
        "exceeded my expectations",
        "is quiet",
    ];
    const BAD: &[&str] = &[
        "broke within a week",
        "is flimsy",
        "arrived damaged",
        "is overpriced",
        "stopped charging",
        "is hard to set up",
        "smells of plastic",
        "is noisy",
    ];
    // Negated phrases flip polarity: "is not flimsy" is praise, "is not worth the price" a complaint.
    const NOT_GOOD: &[&str] =
        &["is not worth the price", "does not work as described", "is not sturdy", "is not easy to set up"];
    const NOT_BAD: &[&str] = &["is not flimsy", "is not noisy", "did not arrive damaged", "is not overpriced"];
    const FILLER: &[&str] = &[
        "I bought it last month.",
        "It came in a plain box.",
        "I use it every day.",
        "It was a gift for my brother.",
        "The colour is grey.",
    ];
    let product = pick(rng, PRODUCTS);
    let kind = rng.below(3);
    let (mut pos, mut neg) = match kind {
        0 => (1 + rng.below(2), 0),
        1 => (0, 1 + rng.below(2)),
        _ => (1, 1),
    };
    let mut clauses = Vec::new();
    while pos + neg > 0 {
        if pos > 0 && (neg == 0 || rng.below(2) == 0) {
            pos -= 1;
            clauses.push(if rng.below(4) == 0 { *pick(rng, NOT_BAD) } else { *pick(rng, GOOD) });
        } else {
            neg -= 1;
            clauses.push(if rng.below(4) == 0 { *pick(rng, NOT_GOOD) } else { *pick(rng, BAD) });
        }
    }
    let mut text = format!("The {product} {}", clauses[0]);
    for c in &clauses[1..] {
        text.push_str(if kind == 2 { ", but it " } else { " and it " });
        text.push_str(c);
    }
    text.push('.');
    if rng.below(2) == 0 {
        text = format!("{} {text}", pick(rng, FILLER));
    }
    let answer = ["positive", "negative", "mixed"][kind as usize];
    Example { prompt: format!("Review: {text} Sentiment?"), answer: answer.into(), tag: answer.into() }
}

/// Makes one example from the random stream.
type Generator = fn(&mut SplitMix64) -> Example;

/// A prompt as the split check compares it: lower case, letters and digits, one space between
/// words (so a spacing or case variant counts as the same prompt).
pub fn normalized(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    for word in prompt.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word.to_lowercase());
    }
    out
}

/// Write train / validation / test splits for one generator. No prompt (normalized) of one
/// split appears in another.
fn write_splits(dir: &Path, seed: u64, sizes: (usize, usize, usize), generate: Generator) -> Result<()> {
    let mut rng = SplitMix64(seed);
    let line = |e: &Example, id: String| {
        json!({"id": id, "prompt": e.prompt, "response": e.answer, "tags": [e.tag]}).to_string()
    };
    // Prompts of the splits written so far; the training split may repeat its own prompts.
    let mut seen = BTreeSet::new();
    let mut take = |n: usize, prefix: &str, repeats: bool, rng: &mut SplitMix64| {
        let mut out = Vec::with_capacity(n);
        let mut own = BTreeSet::new();
        let mut tries = 0usize;
        while out.len() < n {
            tries += 1;
            anyhow::ensure!(tries < 1000 * n + 10_000, "{}: the generator ran out of distinct prompts", dir.display());
            let e = generate(rng);
            let key = normalized(&e.prompt);
            if seen.contains(&key) || (!repeats && own.contains(&key)) {
                continue;
            }
            own.insert(key);
            out.push(line(&e, format!("{prefix}-{}", out.len())));
        }
        seen.extend(own);
        Ok::<_, anyhow::Error>(out)
    };
    let train = take(sizes.0, "train", true, &mut rng)?;
    let validation = take(sizes.1, "val", false, &mut rng)?;
    let test = take(sizes.2, "test", false, &mut rng)?;
    std::fs::create_dir_all(dir)?;
    for (name, lines) in [("train.jsonl", &train), ("validation.jsonl", &validation), ("test.jsonl", &test)] {
        std::fs::write(dir.join(name), lines.join("\n") + "\n")?;
    }
    eprintln!("wrote {} / {} / {} records to {}", train.len(), validation.len(), test.len(), dir.display());
    Ok(())
}

/// Regenerate every synthetic task's data under `examples/tasks/<task>/data`.
pub fn generate_all(root: &Path) -> Result<()> {
    let tasks: [(&str, u64, Generator); 4] = [
        ("finance-ratios", 11, finance),
        ("clinical-vitals", 12, clinical),
        ("deposit-statute", 13, statute),
        ("review-sentiment", 14, sentiment),
    ];
    for (name, seed, generate) in tasks {
        write_splits(
            &root.join("examples/tasks").join(name).join("data"),
            20_261_127 + seed,
            (480, 120, 100),
            generate,
        )?;
    }
    for (base, seed) in [("review-sentiment", 21), ("finance-ratios", 22)] {
        noisy_variant(root, base, 20_261_202 + seed)?;
    }
    Ok(())
}

/// How a scraped answer is written instead of the bare label.
const SCRAPED: &[&str] = &["The answer is {a}.", "{A}!", "I would say {a}.", "Answer: {a}", "{a} (I think)"];

/// `<base>-noisy`: the task `base` with documented noise injected into its training split (the
/// validation and test splits are the base task's, unchanged). 45% of the training records are
/// replaced by "scraped" copies whose answer is written in a sentence instead of the bare label,
/// a quarter of those with the wrong label, and one in eight scraped records is repeated. The
/// bare-label records are untouched, so a cleaning step that keeps only well-formed answers
/// (and a dedup) recovers a clean, smaller training split.
fn noisy_variant(root: &Path, base: &str, seed: u64) -> Result<()> {
    let from = root.join("examples/tasks").join(base).join("data");
    let to = root.join("examples/tasks").join(format!("{base}-noisy")).join("data");
    std::fs::create_dir_all(&to)?;
    for split in ["validation.jsonl", "test.jsonl"] {
        std::fs::copy(from.join(split), to.join(split))?;
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(from.join("train.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let labels: Vec<String> = records
        .iter()
        .filter_map(|r| r["response"].as_str().map(String::from))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(records.len() * 11 / 10);
    let (mut scraped, mut wrong, mut repeated) = (0, 0, 0);
    for r in records {
        if rng.unit() >= 0.45 {
            out.push(r.to_string());
            continue;
        }
        let mut label = r["response"].as_str().unwrap_or_default().to_string();
        if rng.unit() < 0.25 {
            let others: Vec<&String> = labels.iter().filter(|l| **l != label).collect();
            label = pick(&mut rng, &others).to_string();
            wrong += 1;
        }
        let text = pick(&mut rng, SCRAPED).replace("{a}", &label).replace("{A}", &label.to_uppercase());
        let mut noisy = r.clone();
        noisy["id"] = format!("{}-scraped", r["id"].as_str().unwrap_or_default()).into();
        noisy["response"] = text.into();
        noisy["tags"] = json!(["scraped"]);
        scraped += 1;
        out.push(noisy.to_string());
        if rng.below(8) == 0 {
            out.push(noisy.to_string());
            repeated += 1;
        }
    }
    std::fs::write(to.join("train.jsonl"), out.join("\n") + "\n")?;
    eprintln!(
        "wrote {} training records to {} ({scraped} scraped, {wrong} of them mislabelled, {repeated} repeated)",
        out.len(),
        to.display()
    );
    Ok(())
}
