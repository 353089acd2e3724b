//! Reading TOML (and JSON) input files into typed values with errors that name the line and field.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `text` as TOML; an error names the file, the line of the offending value and `hint`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str, hint: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |span| line_of(text, span.start));
        Error::input(path, line, e.message().trim().to_string(), hint)
    })
}

/// Parses a scenario-like file as TOML or JSON, chosen by the extension (`.json` is JSON).
pub fn parse_toml_or_json<T: DeserializeOwned>(path: &Path, text: &str, hint: &str) -> Result<T> {
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| Error::input(path, e.line(), e.to_string(), hint))
    } else {
        parse(path, text, hint)
    }
}

/// Reads and parses a file with [`parse_toml_or_json`].
pub fn read<T: DeserializeOwned>(path: &Path, hint: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_toml_or_json(path, &text, hint)
}

/// 1-based line number of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}
