//! The characters no text field of the API accepts.
//!
//! PostgreSQL cannot store NUL in `text` (the statement fails, which used to surface as a 500),
//! and the other C0 controls, DEL and the C1 controls have no place in names, titles, emails or
//! descriptions: they only serve to spoof log lines, terminals and mail headers. Tab, line feed
//! and carriage return stay allowed for multi-line text. The API checks every string of a request
//! once, at the boundary, with this rule.

/// The first character of `s` that no field accepts, if any.
pub fn forbidden_char(s: &str) -> Option<char> {
    s.chars().find(|&c| is_forbidden(c))
}

pub fn is_forbidden(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// The problem to report for a field holding `c`.
pub fn problem(c: char) -> String {
    format!(
        "must not contain control characters such as U+{:04X}",
        u32::from(c)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_lone_controls_are_refused_but_line_breaks_are_not() {
        assert_eq!(forbidden_char("a\0b"), Some('\0'));
        assert_eq!(forbidden_char("bell\u{7}"), Some('\u{7}'));
        assert_eq!(forbidden_char("del\u{7f}"), Some('\u{7f}'));
        assert_eq!(forbidden_char("c1\u{85}"), Some('\u{85}'));
        assert_eq!(forbidden_char("two\nlines\r\n\tindented"), None);
        assert_eq!(forbidden_char("Łukasz Żółć 日本"), None);
    }
}
