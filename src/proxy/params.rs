//! Parameters that decide what a call spends and whom it touches: the ids of a multi-id call, and
//! the parameters a caller may give only once (a server may read a second copy instead of the first,
//! and graphgate must check what Meta acts on).
//!
//! Pure functions over decoded parameters: no state, no I/O.

use crate::error::GatewayError;
use crate::target::{Param, Target};

/// Parameters whose second copy a server may read instead of the first: refused, so what
/// graphgate checks is what Meta acts on.
pub fn reject_duplicates(params: &[Param]) -> Result<(), GatewayError> {
    for key in ["ids", "batch", "method", "fields", "access_token"] {
        if params.iter().filter(|p| p.key == key).count() > 1 {
            return Err(GatewayError::BadRequest(format!(
                "the parameter `{key}` is given more than once"
            )));
        }
    }
    Ok(())
}

/// The ids of a multi-id call (`?ids=a,b,c`).
pub fn ids_of(t: &Target) -> Vec<&str> {
    t.param("ids")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}
