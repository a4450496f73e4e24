//! Peer-supplied text made safe to print for a person: client ids, state names, refusal
//! reasons and anything else a peer chose. Control characters (newlines, ANSI escapes, ...)
//! and the Unicode controls that reorder text on a terminal are written as Rust escapes, so a
//! hostile string can neither fake a line of output nor drive the terminal.
//!
//! Owns that one rule; callers decide where peer text reaches a person (`Debug` formatting in
//! logs already escapes).

use std::borrow::Cow;

/// `text` with every control character escaped (`\n`, `\u{1b}`); unchanged when it has none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// C0 and C1 controls and DEL, and the bidirectional overrides and isolates (a "Trojan
/// Source" string reads differently than it is).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_is_kept() {
        assert!(matches!(printable("client-a"), Cow::Borrowed("client-a")));
        assert_eq!(printable("zażółć 🦀"), "zażółć 🦀");
        assert_eq!(
            printable("evil\n  admin   root  127.0.0.1"),
            "evil\\n  admin   root  127.0.0.1"
        );
        assert_eq!(
            printable("\u{1b}[31mred\u{1b}[0m"),
            "\\u{1b}[31mred\\u{1b}[0m"
        );
        assert_eq!(printable("a\rb\tc\0d\u{7f}e"), "a\\rb\\tc\\u{0}d\\u{7f}e");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
        assert_eq!(
            printable("ab\u{202e}cd"),
            "ab\\u{202e}cd",
            "right-to-left override"
        );
        assert_eq!(printable("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }
}
