//! The per-request context: what the pipeline learns about one request on its way through, filled
//! step by step and read once when the answer is counted and logged.
//!
//! It holds facts, never decisions: no step reads it to choose what to do next.

use std::sync::Arc;

/// One request's facts; unset fields are labelled `none` in metrics and empty in the access log.
#[derive(Debug, Default)]
pub struct Ctx {
    /// The caller's app (index into `config.apps`), once authenticated.
    pub app: Option<usize>,
    /// The client's configured name (`anonymous` with `auth = "none"`).
    pub client: Option<Arc<str>>,
    /// Which of Meta's budgets the call spends (`waba`, `credit_line`, `other`).
    pub class: Option<&'static str>,
    /// The first bucket the call spends (`waba:<id>`, `credit_line`, `other`), for the access log.
    pub bucket: Option<String>,
    /// Meta's status, when this caller's own call reached Meta.
    pub upstream_status: Option<u16>,
}
