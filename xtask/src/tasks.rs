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
    Ok(())
}
