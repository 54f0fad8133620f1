//! Untrusted text made safe to print and to store: what plugins and LLMs write (error messages,
//! logs, rationales, tags, explanations) reaches terminals, journals and reports, so control
//! characters are escaped and lengths are capped wherever it enters the host.

/// `text` on one line: every control character (C0 including line breaks, DEL, C1), and the
/// Unicode characters that reorder or hide text on a terminal (bidirectional overrides and
/// isolates, zero-width joiners' cousins), written as `\u{..}` escapes; cut to `max` characters
/// with a note of how much was left out.
pub fn line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 16));
    for (shown, (i, c)) in text.char_indices().enumerate() {
        if shown >= max {
            out.push_str(&format!("…({} more bytes)", text.len() - i));
            return out;
        }
        if needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` as at most `max_lines` lines (the last ones) of at most `max_chars` each, each made
/// safe by [`line()`].
pub fn tail_lines(text: &str, max_lines: usize, max_chars: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].iter().map(|l| line(l, max_chars)).collect()
}

/// `text` for a terminal: line breaks kept (the host's own multi-line messages), every other
/// control character escaped as in [`line()`], and the whole cut to `max` characters.
pub fn for_terminal(text: &str, max: usize) -> String {
    text.split('\n').map(|l| line(l, max)).collect::<Vec<_>>().join("\n").chars().take(max + 32).collect()
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        let forged = "ok\r\u{1b}]0;title\u{7}node 1 done: score 1.000\nnext\u{202e}gnp.exe";
        let safe = line(forged, 1000);
        assert!(!safe.chars().any(needs_escape), "{safe}");
        assert_eq!(safe, "ok\\u{d}\\u{1b}]0;title\\u{7}node 1 done: score 1.000\\u{a}next\\u{202e}gnp.exe");
        assert_eq!(line("plain text, ünïcode", 100), "plain text, ünïcode");
    }

    #[test]
    fn long_text_is_cut_with_a_note() {
        let big = "x".repeat(100_000);
        let cut = line(&big, 50);
        assert!(cut.starts_with(&"x".repeat(50)) && cut.ends_with("…(99950 more bytes)"), "{cut}");
        let lines = tail_lines(&"line\n".repeat(100), 3, 10);
        assert_eq!(lines, vec!["line"; 3]);
        let t = for_terminal("first\nsecond \u{1b}[2J", 100);
        assert_eq!(t, "first\nsecond \\u{1b}[2J");
    }
}
