//! `filter-lang`: charset and language heuristics. Keeps a record when its text is written in
//! the wanted scripts and looks like one of the wanted languages.
//!
//! The text is the concatenation of the configured fields (strings, or the `content` of each
//! turn of a chat transcript). Checks, in order, each with its drop reason:
//!
//! 1. `mojibake`: the text holds U+FFFD or the usual marks of UTF-8 read as Latin-1 (`Ã©`,
//!    `â€™`, ...).
//! 2. `too-few-letters`: letters are less than `min_letter_ratio` of the non-space characters.
//! 3. `wrong-script`: letters in the `scripts` wanted are less than `min_script_ratio` of all
//!    letters.
//! 4. `wrong-language`: the guessed language is not in `languages`. Latin-script languages are
//!    told apart by their most frequent function words; Cyrillic counts as `ru`, Greek `el`,
//!    Arabic `ar`, Hebrew `he`, Devanagari `hi`, kana `ja`, Hangul `ko` and Han alone `zh`. Text
//!    with fewer than `min_words` words, or with no telling word, is `unknown` and is kept
//!    unless `drop_unknown`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, RecordReader, RecordWriter, RunStats, text_fields};
use trex_sdk::types::OnBadRecord;

/// A writing system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Script {
    Latin,
    Greek,
    Cyrillic,
    Hebrew,
    Arabic,
    Devanagari,
    Han,
    Kana,
    Hangul,
    /// Letters of any other script.
    Other,
}

fn script_of(c: char) -> Script {
    match c as u32 {
        0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F | 0x1E00..=0x1EFF => Script::Latin,
        0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
        0x400..=0x52F => Script::Cyrillic,
        0x590..=0x5FF => Script::Hebrew,
        0x600..=0x6FF | 0x750..=0x77F => Script::Arabic,
        0x900..=0x97F => Script::Devanagari,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF => Script::Han,
        0x3040..=0x30FF => Script::Kana,
        0x1100..=0x11FF | 0xAC00..=0xD7AF => Script::Hangul,
        _ => Script::Other,
    }
}

/// The most frequent function words of the Latin-script languages told apart.
const STOPWORDS: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "the", "and", "of", "to", "is", "in", "that", "it", "for", "with", "are", "was", "this", "on", "what",
            "how", "many", "be", "you", "an",
        ],
    ),
    (
        "fr",
        &[
            "le", "la", "les", "et", "des", "est", "une", "un", "du", "que", "pour", "dans", "pas", "qui", "sur", "au",
            "avec", "ce", "sont", "combien",
        ],
    ),
    (
        "de",
        &[
            "der", "die", "und", "das", "ist", "nicht", "den", "ein", "eine", "zu", "mit", "sich", "auf", "dem", "des",
            "wie", "viele", "sind", "für", "von",
        ],
    ),
    (
        "es",
        &[
            "el", "los", "las", "y", "del", "es", "una", "que", "por", "para", "con", "no", "se", "al", "como",
            "cuántos", "son", "está", "su", "lo",
        ],
    ),
    (
        "it",
        &[
            "il", "di", "che", "è", "gli", "della", "per", "non", "sono", "una", "con", "del", "le", "quanti", "si",
            "da", "come", "nel", "alla", "questo",
        ],
    ),
    (
        "pt",
        &[
            "o", "os", "de", "que", "não", "uma", "do", "da", "em", "para", "com", "são", "quantos", "se", "como",
            "mais", "no", "na", "ao", "é",
        ],
    ),
    (
        "nl",
        &[
            "de", "het", "een", "en", "van", "is", "niet", "dat", "op", "te", "zijn", "met", "voor", "hoeveel", "er",
            "ook", "als", "aan", "maar", "wat",
        ],
    ),
];

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Fields whose text is checked (those present are concatenated).
    fields: Vec<String>,
    /// Wanted scripts; empty means any.
    scripts: Vec<Script>,
    /// Least share of letters that must be in `scripts`.
    min_script_ratio: f64,
    /// Wanted languages (`en`, `fr`, `de`, `es`, `it`, `pt`, `nl`, `ru`, `el`, `ar`, `he`, `hi`,
    /// `ja`, `ko`, `zh`); empty means any.
    languages: Vec<String>,
    /// Fewest words for a language guess; shorter text is `unknown`.
    min_words: usize,
    /// Drop text whose language is `unknown` (only when `languages` is set).
    drop_unknown: bool,
    /// Least share of letters among the non-space characters.
    min_letter_ratio: f64,
    /// Drop text with U+FFFD or signs of double-encoded UTF-8.
    drop_mojibake: bool,
    /// What to do with a record that has none of the fields.
    on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fields: ["messages", "completion", "prompt", "response", "text"].map(String::from).to_vec(),
            scripts: Vec::new(),
            min_script_ratio: 0.9,
            languages: Vec::new(),
            min_words: 4,
            drop_unknown: false,
            min_letter_ratio: 0.0,
            drop_mojibake: true,
            on_bad_record: OnBadRecord::Skip,
        }
    }
}

const LANGUAGES: &[&str] = &["en", "fr", "de", "es", "it", "pt", "nl", "ru", "el", "ar", "he", "hi", "ja", "ko", "zh"];

/// What the checks found in one text.
struct Profile {
    letters: usize,
    non_space: usize,
    by_script: BTreeMap<Script, usize>,
    language: &'static str,
    mojibake: bool,
}

fn profile(text: &str, min_words: usize) -> Profile {
    let mut by_script = BTreeMap::new();
    let (mut letters, mut non_space) = (0, 0);
    for c in text.chars() {
        if !c.is_whitespace() {
            non_space += 1;
        }
        if c.is_alphabetic() {
            letters += 1;
            *by_script.entry(script_of(c)).or_insert(0) += 1;
        }
    }
    let mojibake = text.contains('\u{FFFD}')
        || ["Ã©", "Ã¨", "Ã¤", "Ã¶", "Ã¼", "â€™", "â€œ", "â€", "Â "].iter().any(|m| text.contains(m));
    Profile { letters, non_space, language: guess_language(text, &by_script, min_words), by_script, mojibake }
}

fn guess_language(text: &str, by_script: &BTreeMap<Script, usize>, min_words: usize) -> &'static str {
    let Some((&script, _)) = by_script.iter().max_by_key(|(_, n)| **n) else {
        return "unknown";
    };
    match script {
        Script::Cyrillic => return "ru",
        Script::Greek => return "el",
        Script::Arabic => return "ar",
        Script::Hebrew => return "he",
        Script::Devanagari => return "hi",
        Script::Hangul => return "ko",
        Script::Kana => return "ja",
        Script::Han => return if by_script.contains_key(&Script::Kana) { "ja" } else { "zh" },
        Script::Latin => {}
        Script::Other => return "unknown",
    }
    let words: Vec<String> =
        text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect();
    if words.len() < min_words {
        return "unknown";
    }
    let mut best = ("unknown", 0usize);
    for (lang, list) in STOPWORDS {
        let hits = words.iter().filter(|w| list.contains(&w.as_str())).count();
        if hits > best.1 {
            best = (lang, hits);
        }
    }
    best.0
}

struct FilterLang;

impl DataTool for FilterLang {
    type Config = Config;
    const NAME: &'static str = "filter-lang";
    const DESCRIPTION: &'static str = "Keep records written in the wanted scripts and languages (script shares, a stopword language guess, letter share, mojibake check).";

    fn check(config: &Config) -> Result<(), PluginError> {
        for (name, v) in [("min_script_ratio", config.min_script_ratio), ("min_letter_ratio", config.min_letter_ratio)]
        {
            if !(0.0..=1.0).contains(&v) {
                return Err(PluginError::field(name, format!("must lie in [0, 1], not {v}")));
            }
        }
        for lang in &config.languages {
            if !LANGUAGES.contains(&lang.as_str()) {
                return Err(PluginError::field(
                    "languages",
                    format!("unknown language `{lang}` (known: {})", LANGUAGES.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let mut stats = RunStats::default();
        let mut kept_by_language: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut kept = 0u64;
        while let Some(record) = input.next_record()? {
            let Some(pieces) = text_fields(&record, &config.fields) else {
                let problem = format!("none of the fields {:?}", config.fields);
                stats.bad_record(config.on_bad_record, input.records_read(), &problem)?;
                continue;
            };
            let p = profile(&pieces.join("\n"), config.min_words);
            let in_scripts: usize =
                p.by_script.iter().filter(|(s, _)| config.scripts.contains(s)).map(|(_, n)| n).sum();
            let reason = if config.drop_mojibake && p.mojibake {
                Some("mojibake")
            } else if (p.letters as f64) < config.min_letter_ratio * p.non_space as f64 {
                Some("too-few-letters")
            } else if !config.scripts.is_empty() && (in_scripts as f64) < config.min_script_ratio * p.letters as f64 {
                Some("wrong-script")
            } else if !config.languages.is_empty()
                && (if p.language == "unknown" {
                    config.drop_unknown
                } else {
                    !config.languages.iter().any(|l| l == p.language)
                })
            {
                Some("wrong-language")
            } else {
                None
            };
            match reason {
                Some(r) => stats.drop_record(r),
                None => {
                    kept += 1;
                    *kept_by_language.entry(p.language).or_insert(0) += 1;
                    output.pass(input.position())?;
                }
            }
        }
        for (lang, n) in kept_by_language {
            stats.metrics.insert(format!("share-kept-{lang}"), n as f64 / kept.max(1) as f64);
        }
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(FilterLang);
