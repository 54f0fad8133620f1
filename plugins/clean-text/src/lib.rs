//! `clean-text`: normalizes and scrubs the text fields of each record, and filters records by
//! regular expressions.
//!
//! Applied to every configured field that is a string, and to the `content` of each turn of a
//! chat transcript, in this order: Unicode normalization (NFC or NFKC), removal of control
//! characters, whitespace normalization (runs collapsed, ends trimmed, line breaks kept), PII
//! scrubbing (email addresses and phone numbers replaced by placeholders). Then a record is kept
//! only if every `include` pattern matches its text and no `exclude` pattern does.

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, Record, RecordReader, RecordWriter, RunStats};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick, is_nfkc_quick};

/// Unicode normalization form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Form {
    /// Leave the text as it is.
    None,
    /// Canonical composition.
    #[default]
    Nfc,
    /// Compatibility composition (folds full-width forms, ligatures, superscripts).
    Nfkc,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Fields to clean (strings, or chat transcripts whose turn contents are cleaned).
    fields: Vec<String>,
    /// Unicode normalization form.
    unicode: Form,
    /// Collapse runs of spaces and tabs, trim each line and the whole text.
    whitespace: bool,
    /// Remove control characters other than line breaks and tabs.
    strip_control: bool,
    /// Replace email addresses with `[EMAIL]`.
    scrub_emails: bool,
    /// Replace phone numbers (7 or more digits, with the usual separators) with `[PHONE]`.
    scrub_phones: bool,
    /// Keep a record only if each of these patterns matches its cleaned text.
    include: Vec<String>,
    /// Drop a record if any of these patterns matches its cleaned text.
    exclude: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fields: ["messages", "completion", "prompt", "response", "text"].map(String::from).to_vec(),
            unicode: Form::Nfc,
            whitespace: true,
            strip_control: true,
            scrub_emails: false,
            scrub_phones: false,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

struct Cleaner {
    config: Config,
    email: Regex,
    phone: Regex,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    emails: u64,
    phones: u64,
}

fn compile(field: &str, patterns: &[String]) -> Result<Vec<Regex>, PluginError> {
    patterns
        .iter()
        .map(|p| Regex::new(p).map_err(|e| PluginError::field(field, format!("invalid regular expression `{p}`: {e}"))))
        .collect()
}

impl Cleaner {
    fn new(config: Config) -> Result<Self, PluginError> {
        Ok(Self {
            email: Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").expect("valid"),
            phone: Regex::new(
                r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,3}\b|\b\d{7,15}\b",
            )
            .expect("valid"),
            include: compile("include", &config.include)?,
            exclude: compile("exclude", &config.exclude)?,
            config,
            emails: 0,
            phones: 0,
        })
    }

    fn clean(&mut self, text: &str) -> String {
        // Most text is already normalized; the quick check skips the rewrite for it.
        let mut s: String = match self.config.unicode {
            Form::Nfc if is_nfc_quick(text.chars()) != IsNormalized::Yes => text.nfc().collect(),
            Form::Nfkc if is_nfkc_quick(text.chars()) != IsNormalized::Yes => text.nfkc().collect(),
            _ => text.to_string(),
        };
        if self.config.strip_control && s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            s.retain(|c| !c.is_control() || c == '\n' || c == '\t');
        }
        if self.config.whitespace {
            s = collapse_whitespace(&s);
        }
        if self.config.scrub_emails {
            let n = self.email.find_iter(&s).count() as u64;
            if n > 0 {
                self.emails += n;
                s = self.email.replace_all(&s, "[EMAIL]").into_owned();
            }
        }
        if self.config.scrub_phones {
            let n = self
                .phone
                .find_iter(&s)
                .filter(|m| m.as_str().chars().filter(char::is_ascii_digit).count() >= 7)
                .count() as u64;
            if n > 0 {
                self.phones += n;
                s = self
                    .phone
                    .replace_all(&s, |c: &regex::Captures<'_>| {
                        let m = &c[0];
                        if m.chars().filter(char::is_ascii_digit).count() >= 7 {
                            "[PHONE]".to_string()
                        } else {
                            m.to_string()
                        }
                    })
                    .into_owned();
            }
        }
        s
    }

    /// Clean the record in place; returns its cleaned text (for the filters) and whether
    /// anything changed.
    fn record(&mut self, record: &mut Record) -> (String, bool) {
        let mut all = String::new();
        let mut changed = false;
        let fields = self.config.fields.clone();
        for f in &fields {
            match record.get_mut(f) {
                Some(serde_json::Value::String(s)) => {
                    let cleaned = self.clean(s);
                    if cleaned != *s {
                        *s = cleaned;
                        changed = true;
                    }
                    push_line(&mut all, s);
                }
                Some(serde_json::Value::Array(turns)) => {
                    for t in turns.iter_mut() {
                        if let Some(serde_json::Value::String(c)) = t.get_mut("content") {
                            let cleaned = self.clean(c);
                            if cleaned != *c {
                                *c = cleaned;
                                changed = true;
                            }
                            push_line(&mut all, c);
                        }
                    }
                }
                _ => {}
            }
        }
        (all, changed)
    }
}

/// Append `piece` to the text the patterns see, one field (or turn) a line: `^…$` then matches a
/// one-field text exactly.
fn push_line(all: &mut String, piece: &str) {
    if !all.is_empty() {
        all.push('\n');
    }
    all.push_str(piece);
}

/// Runs of spaces, tabs and no-break spaces become one space; each line and the whole text are
/// trimmed; line breaks stay.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut gap = false;
        for c in line.trim().chars() {
            if matches!(c, ' ' | '\t' | '\u{a0}') {
                gap = true;
            } else {
                if gap {
                    out.push(' ');
                    gap = false;
                }
                out.push(c);
            }
        }
    }
    out.trim().to_string()
}

struct CleanText;

impl DataTool for CleanText {
    type Config = Config;
    const NAME: &'static str = "clean-text";
    const DESCRIPTION: &'static str = "Normalize text fields (Unicode NFC/NFKC, control characters, whitespace), scrub emails and phone numbers, and keep or drop records by regular expressions.";

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let mut cleaner = Cleaner::new(config)?;
        let mut stats = RunStats::default();
        while let Some(mut record) = input.next_record()? {
            let (text, changed) = cleaner.record(&mut record);
            if let Some(p) = cleaner.include.iter().find(|p| !p.is_match(&text)) {
                stats.drop_record(&format!("include `{}` did not match", p.as_str()));
                continue;
            }
            if let Some(p) = cleaner.exclude.iter().find(|p| p.is_match(&text)) {
                stats.drop_record(&format!("exclude `{}` matched", p.as_str()));
                continue;
            }
            // An unchanged record stays on the host as it came.
            if changed {
                output.push(&record)?;
            } else {
                output.pass(input.position())?;
            }
        }
        stats.metrics.insert("emails-scrubbed".into(), cleaner.emails as f64);
        stats.metrics.insert("phones-scrubbed".into(), cleaner.phones as f64);
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(CleanText);
