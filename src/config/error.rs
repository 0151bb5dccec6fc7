//! [`ConfigError`] and [`Problem`]: what a failed load reports, one problem per bad key, each with
//! its file, key and (when the parser knows it) line.
//!
//! A leaf: it imports nothing from the crate. It must never format a value from the config, only
//! the message a check wrote (which names keys, never secrets).

use std::fmt;

/// Every problem found in one load, reported together.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One config problem: where (file, key, line when the parser knows it) and what.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: String,
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    /// A load that stops at its first problem: unreadable file, bad TOML, bad override.
    pub(super) fn one(
        file: &str,
        key: &str,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            problems: vec![Problem {
                file: file.to_string(),
                key: key.to_string(),
                line,
                message: message.into(),
            }],
        }
    }
}
