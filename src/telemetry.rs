//! Tracing setup: JSON lines when stdout is not a terminal (containers), readable text on a
//! terminal, level from `RUST_LOG` (default `info`).
//!
//! Nothing here decides what is logged; modules must never put a token, key or app secret in a
//! field, and the request span carries only names from config.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Json,
    Text,
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Format::Json => true,
        Format::Text => false,
        Format::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
