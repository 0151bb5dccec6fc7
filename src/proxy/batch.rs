//! Graph batches (`batch=[{method, relative_url, body}]` in a url-encoded form): each sub-request is
//! checked against the caller's allowlists and cleaned of credentials, and the whole batch must be
//! answerable with one token.
//!
//! It must never put a token into a sub-request (Meta echoes query tokens into paging links inside
//! the sub-responses), and never let a sub-request through unchecked.

use http::Method;

use super::params::{ids_of, reject_duplicates};
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::target::{self, is_auth_param, join_raw, Param, Target};

/// Graph's batch endpoint takes at most this many sub-requests.
const MAX_BATCH: usize = 50;

/// A batch's sub-calls, and the object whose token the batch is sent with.
pub type BatchCalls = (Vec<(Method, Target)>, Option<String>);

/// Checks and cleans each sub-request of the form's `batch` parameter in place. Returns the
/// sub-calls (none when the form has no `batch`) and the object whose token the batch is sent with.
pub fn sanitize(
    gw: &Gateway,
    caller: &Caller,
    params: &mut [Param],
) -> Result<BatchCalls, GatewayError> {
    let directory = gw.directory();
    let bad = |m: &str| GatewayError::BadRequest(format!("batch: {m}"));
    if params.iter().filter(|p| p.key == "batch").count() > 1 {
        return Err(bad("send one `batch` parameter"));
    }
    let Some(p) = params.iter_mut().find(|p| p.key == "batch") else {
        return Ok((Vec::new(), None));
    };
    let mut calls = Vec::new();
    let mut items: Vec<serde_json::Value> =
        serde_json::from_str(&p.value).map_err(|_| bad("must be a JSON array"))?;
    if items.len() > MAX_BATCH {
        return Err(bad(&format!("at most {MAX_BATCH} requests per batch")));
    }
    let mut token_root: Option<Option<String>> = None;
    for item in items.iter_mut() {
        let obj = item
            .as_object_mut()
            .ok_or_else(|| bad("every element must be an object"))?;
        let method: Method = obj
            .get("method")
            .and_then(|m| m.as_str())
            .unwrap_or("GET")
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| bad("bad method"))?;
        let rel = obj
            .get("relative_url")
            .and_then(|u| u.as_str())
            .ok_or_else(|| bad("relative_url is required"))?;
        // JSONPath references name objects only Meta can resolve: no allowlist can vouch for them.
        let body_text = obj.get("body").and_then(|b| b.as_str()).unwrap_or("");
        if directory.is_restricted(caller)
            && (rel.contains("{result=") || body_text.contains("{result="))
        {
            return Err(bad(
                "references between sub-requests ({result=...}) are not allowed for this client",
            ));
        }
        let (path, query) = match rel.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rel, None),
        };
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let t = Target::parse(&path, query)?;
        reject_duplicates(&t.query)?;
        let ids = ids_of(&t);
        directory.authorize(caller, &method, t.root(), t.edge(), &ids)?;
        let owner = directory
            .token_owner(caller.app, t.root())
            .map(str::to_string);
        match &token_root {
            None => token_root = Some(owner.clone().or_else(|| t.root().map(str::to_string))),
            Some(first) => {
                let first_owner = first
                    .as_deref()
                    .and_then(|r| directory.token_owner(caller.app, Some(r)));
                if first_owner.map(str::to_string) != owner {
                    return Err(bad(
                        "sub-requests on WABAs with different tokens cannot share one batch",
                    ));
                }
            }
        }
        let q = t.forward_query();
        let new_url = if q.is_empty() {
            path.clone()
        } else {
            format!("{path}?{q}")
        };
        obj.insert("relative_url".into(), serde_json::Value::String(new_url));
        if let Some(serde_json::Value::String(b)) = obj.get("body") {
            let cleaned = target::parse_params(b).map_err(|m| bad(&format!("body: {m}")))?;
            let kept = join_raw(cleaned.iter().filter(|p| !is_auth_param(&p.key)));
            obj.insert("body".into(), serde_json::Value::String(kept));
        }
        calls.push((method, t));
    }
    let json = serde_json::to_string(&items).map_err(|_| bad("cannot re-encode"))?;
    p.value = json;
    p.raw = format!("batch={}", encode(&p.value));
    Ok((calls, token_root.flatten()))
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
