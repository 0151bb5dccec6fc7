//! authorize: the caller's method and WABA allowlists, applied to the call and to each sub-call of
//! a batch, and the rules that keep what graphgate checks equal to what Meta acts on (no duplicated
//! parameters, no `method=` override for restricted clients, batches only as url-encoded forms).
//!
//! It returns one [`Authorized`] value: who calls, which sub-calls a batch makes, and whose token
//! the call is sent with. It must never let a call through that it has not checked whole.

use http::request::Parts;
use http::Method;

use super::batch;
use super::body::{has_no_body, ReqBody};
use super::params::{ids_of, reject_duplicates};
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::target::Target;

/// What the authorize step allowed.
pub struct Authorized {
    pub caller: Caller,
    /// A batch's sub-calls (each spends its own bucket); empty for a plain call.
    pub sub_calls: Vec<(Method, Target)>,
    /// Whose token a batch is sent with; `None` when the call is not a batch.
    batch_root: Option<Option<String>>,
}

impl Authorized {
    /// The object whose token the call is made with: a batch's, or the call's own root.
    pub fn token_root<'a>(&'a self, target: &'a Target) -> Option<&'a str> {
        match &self.batch_root {
            Some(root) => root.as_deref(),
            None => target.root(),
        }
    }
}

/// Checks `caller` may make this call (and each sub-call of a batch, whose credentials are taken
/// out of `body` on the way).
pub fn authorize(
    gw: &Gateway,
    caller: Caller,
    parts: &Parts,
    target: &Target,
    body: &mut ReqBody,
) -> Result<Authorized, GatewayError> {
    let directory = gw.directory();
    reject_duplicates(&target.query)?;
    if let ReqBody::Form(params) = &*body {
        reject_duplicates(params)?;
    }
    let mut ids = ids_of(target);
    if let Some(form_ids) = body.form_param("ids") {
        ids.extend(form_ids.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    directory.authorize(&caller, &parts.method, target.root(), target.edge(), &ids)?;
    // Graph's `method=` parameter and the override header turn one method into another.
    if directory.limits_methods(&caller)
        && (target.param("method").is_some() || body.form_param("method").is_some())
    {
        return Err(GatewayError::BadRequest(
            "the `method` parameter is not allowed for this client".into(),
        ));
    }
    if target.param("batch").is_some() {
        return Err(GatewayError::BadRequest(
            "send `batch` in the form body, not in the query".into(),
        ));
    }
    // The batch endpoint only takes url-encoded forms here: a multipart or JSON batch could not be
    // checked sub-request by sub-request.
    if target.segments.is_empty()
        && !matches!(body, ReqBody::Form(_))
        && !has_no_body(&parts.headers)
    {
        return Err(GatewayError::BadRequest(
            "send requests to the root (batch) endpoint as application/x-www-form-urlencoded"
                .into(),
        ));
    }
    let mut sub_calls = Vec::new();
    let mut batch_root = None;
    if let ReqBody::Form(params) = body {
        let (calls, root) = batch::sanitize(gw, &caller, params)?;
        if !calls.is_empty() {
            sub_calls = calls;
            batch_root = Some(root);
        }
    }
    Ok(Authorized {
        caller,
        sub_calls,
        batch_root,
    })
}
