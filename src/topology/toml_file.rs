//! A TOML configuration file as read: its name and text, deserialized with the `toml` crate,
//! and byte offsets turned into the line and column a person looks for. Topology files, their
//! schema files and the relay's configuration (`crate::relay::config`) are read through it, so
//! each locates an error the same way.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

/// A TOML file's text and the name its errors give it.
#[derive(Debug, Clone)]
pub(crate) struct TomlFile<'a> {
    name: String,
    text: Cow<'a, str>,
    /// Where each line starts, found on the first position asked for: a file's errors and
    /// its plan locate many things, and counting lines from the start for each was quadratic.
    line_starts: std::sync::OnceLock<Vec<usize>>,
}

/// A place in a file: line and column, both counted from 1, the column in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// What TOML refused in a file (bad syntax, an unknown key, a value of the wrong type): its
/// message and, when the parser knows it, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{}{message}", at.map_or_else(|| " ".to_owned(), |at| format!("{at}: ")))]
pub(crate) struct TomlError {
    pub file: String,
    pub at: Option<Position>,
    pub message: String,
}

/// The largest topology or schema file read.
pub(crate) const MAX_TOML_BYTES: u64 = 4 << 20;

impl TomlFile<'static> {
    /// Reads a file of at most [`MAX_TOML_BYTES`]; its errors are named by its path.
    pub(crate) fn read(path: &Path) -> std::io::Result<Self> {
        use std::io::Read;
        let mut text = String::new();
        // One byte past the limit tells a file that is too large (or endless: /dev/zero).
        std::fs::File::open(path)?
            .take(MAX_TOML_BYTES + 1)
            .read_to_string(&mut text)?;
        if text.len() as u64 > MAX_TOML_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "over {MAX_TOML_BYTES} bytes; a topology or schema file is text a person writes"
                ),
            ));
        }
        Ok(TomlFile {
            name: path.display().to_string(),
            text: Cow::Owned(text),
            line_starts: std::sync::OnceLock::new(),
        })
    }
}

impl<'a> TomlFile<'a> {
    /// Text read elsewhere, named `name` in errors.
    pub(crate) fn new(name: impl Into<String>, text: &'a str) -> Self {
        TomlFile {
            name: name.into(),
            text: Cow::Borrowed(text),
            line_starts: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The line and column of a byte offset (an offset past the end is the end).
    pub(crate) fn position(&self, offset: usize) -> Position {
        let bytes = self.text.as_bytes();
        let offset = offset.min(bytes.len());
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(
                    bytes
                        .iter()
                        .enumerate()
                        .filter(|&(_, &b)| b == b'\n')
                        .map(|(at, _)| at + 1),
                )
                .collect()
        });
        // The last line that starts at or before the offset; the first starts at 0.
        let line = starts.partition_point(|&start| start <= offset).max(1);
        // Characters, not bytes: every byte but a UTF-8 continuation byte starts one.
        let column = bytes[starts[line - 1]..offset]
            .iter()
            .filter(|&&b| b & 0xc0 != 0x80)
            .count()
            + 1;
        Position { line, column }
    }

    /// Deserializes the whole text, with TOML's error located.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, TomlError> {
        toml::from_str(&self.text).map_err(|e| TomlError {
            file: self.name.clone(),
            at: e.span().map(|span| self.position(span.start)),
            message: e.message().trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Table {
        a: Option<u32>,
        b: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        t: Table,
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let file = TomlFile::new("f.toml", "ab\n\nxé z\n");
        let at = |offset| {
            let Position { line, column } = file.position(offset);
            (line, column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(2), (1, 3), "the newline ends line 1");
        assert_eq!(
            at(3),
            (2, 1),
            "the first byte after a newline starts the next line"
        );
        assert_eq!(at(4), (3, 1));
        assert_eq!(at(7), (3, 3), "é is one character of two bytes");
        assert_eq!(at(99), (4, 1), "past the end is the end");
    }

    #[test]
    fn an_unknown_key_at_the_start_of_a_line_is_reported_on_that_line() {
        let file = TomlFile::new("f.toml", "[t]\na = 1\nbogus = 2\n");
        let e = file.parse::<File>().expect_err("unknown key");
        assert_eq!(e.at, Some(Position { line: 3, column: 1 }), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        assert!(
            e.to_string().starts_with("f.toml:3:1: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported_where_the_value_is() {
        let file = TomlFile::new("f.toml", "[t]\n\n  b = 7\n");
        let e = file.parse::<File>().expect_err("b is a string");
        assert_eq!(e.at, Some(Position { line: 3, column: 7 }), "{e}");
    }
}
