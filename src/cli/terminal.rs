//! Text from outside (Looker values, D365 and Entra messages) made safe to print: control and
//! bidirectional-override characters are shown escaped (`\u{202e}`) so they cannot reorder or
//! hide what the user reads, and a very long word (a runaway value) is cut with its length.

use std::fmt::Write;

/// Longest word printed whole; longer ones keep their first [`KEEP`] characters.
const MAX_WORD: usize = 300;
const KEEP: usize = 80;

/// Characters that change how the terminal or the bidi algorithm shows the text around them.
fn is_hazard(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `s` with hazardous characters escaped and over-long words shortened.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(64 * 1024));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let n = word.chars().count();
        if n > MAX_WORD {
            out.extend(word.chars().take(KEEP));
            let _ = write!(out, "…[{n} characters in all]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in s.chars() {
        if c == ' ' || c == '\n' || c == '\t' {
            flush(&mut word, &mut out);
            out.push(c);
        } else if is_hazard(c) {
            let _ = write!(word, "\\u{{{:x}}}", c as u32);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_bidi_and_control_characters() {
        assert_eq!(
            clean("Fee\u{202E}exe.txt\x1b[2J ok\n"),
            "Fee\\u{202e}exe.txt\\u{1b}[2J ok\n"
        );
    }

    #[test]
    fn cuts_a_runaway_word_and_says_how_long_it_was() {
        let long = "Q".repeat(10_000);
        let t = clean(&format!("value `{long}` is bad"));
        assert!(t.len() < 300, "{t}");
        assert!(
            t.contains("…[10002 characters in all]") && t.ends_with(" is bad"),
            "{t}"
        );
        assert_eq!(clean("a normal line of text"), "a normal line of text");
    }
}
