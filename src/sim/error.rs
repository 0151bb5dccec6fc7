//! Graph-shaped errors: the one mapping from simulator failures to Meta's status, code, type and message.
//! Never decides *whether* a call fails; it only says how Meta would word it.

use rand::Rng;
use serde_json::{json, Map, Value};

/// Every way a simulated Graph call can fail. Matched exhaustively in [`GraphError::parts`], so a new
/// variant must say how Meta would answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GraphError {
    /// Missing, empty or unknown token (code 190).
    InvalidToken,
    /// Valid token whose user may not touch the WABA (code 200).
    Permission,
    /// The app requires appsecret_proof and the call's proof is missing, wrong or expired.
    BadProof,
    /// Unknown object id, or a method/edge the object does not support.
    Unsupported { method: String, id: String },
    /// More than `/{id}/{edge}` after the version.
    UnknownPath(String),
    /// A bad or missing parameter; the text goes after "(#100) ".
    InvalidParam(String),
    /// `fields=` named a field the node type does not have.
    NonexistingField { field: String, node: &'static str },
    /// A template with this name and language already exists.
    DuplicateTemplate,
    /// The BUC window is full (code 80008). `status` is the configured throttle status.
    Throttled { status: u16 },
    /// An injected transient failure (code 2). `status` is the injected 5xx.
    Transient { status: u16 },
}

/// What Meta puts in the `error` object, plus the HTTP status.
struct Parts {
    status: u16,
    code: u32,
    kind: &'static str,
    message: String,
    subcode: Option<u32>,
    transient: Option<bool>,
    user_title: Option<&'static str>,
    user_msg: Option<&'static str>,
}

impl GraphError {
    fn parts(&self) -> Parts {
        // Meta answers OAuth and permission failures on these endpoints with HTTP 400, not 401/403, and
        // classifies them by `code`; we do the same so clients see the same status they would in production.
        let p = |status, code, kind, message: String| Parts {
            status,
            code,
            kind,
            message,
            subcode: None,
            transient: None,
            user_title: None,
            user_msg: None,
        };
        match self {
            GraphError::InvalidToken => p(
                400,
                190,
                "OAuthException",
                "Invalid OAuth access token - Cannot parse access token".into(),
            ),
            GraphError::Permission => p(400, 200, "OAuthException", "(#200) Permissions error".into()),
            GraphError::BadProof => p(
                400,
                100,
                "GraphMethodException",
                "Invalid appsecret_proof provided in the API argument".into(),
            ),
            GraphError::Unsupported { method, id } => Parts {
                subcode: Some(33),
                ..p(
                    400,
                    100,
                    "GraphMethodException",
                    format!(
                        "Unsupported {method} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"
                    ),
                )
            },
            GraphError::UnknownPath(path) => p(
                400,
                2500,
                "OAuthException",
                format!("Unknown path components: {path}"),
            ),
            GraphError::InvalidParam(what) => p(400, 100, "OAuthException", format!("(#100) {what}")),
            GraphError::NonexistingField { field, node } => p(
                400,
                100,
                "OAuthException",
                format!("(#100) Tried accessing nonexisting field ({field}) on node type ({node})"),
            ),
            GraphError::DuplicateTemplate => Parts {
                subcode: Some(2388024),
                user_title: Some("Content in This Language Already Exists"),
                user_msg: Some("There is already content for this template in this language. Delete the existing content or choose another language."),
                ..p(400, 100, "OAuthException", "Invalid parameter".into())
            },
            GraphError::Throttled { status } => Parts {
                subcode: Some(2446079),
                transient: Some(true),
                ..p(
                    *status,
                    80008,
                    "OAuthException",
                    "(#80008) There have been too many calls to this WhatsApp Business account. Wait a bit and try again. For more info, please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting.".into(),
                )
            },
            GraphError::Transient { status } => Parts {
                transient: Some(true),
                ..p(
                    *status,
                    2,
                    "OAuthException",
                    "An unexpected error has occurred. Please retry your request later.".into(),
                )
            },
        }
    }

    pub(crate) fn status(&self) -> u16 {
        self.parts().status
    }

    /// `{"error":{...}}` with a fresh fbtrace_id.
    pub(crate) fn body(&self) -> Value {
        let p = self.parts();
        let mut e = Map::new();
        e.insert("message".into(), json!(p.message));
        e.insert("type".into(), json!(p.kind));
        e.insert("code".into(), json!(p.code));
        if let Some(s) = p.subcode {
            e.insert("error_subcode".into(), json!(s));
        }
        if let Some(t) = p.transient {
            e.insert("is_transient".into(), json!(t));
        }
        if let Some(t) = p.user_title {
            e.insert("error_user_title".into(), json!(t));
        }
        if let Some(m) = p.user_msg {
            e.insert("error_user_msg".into(), json!(m));
        }
        e.insert("fbtrace_id".into(), json!(trace_id()));
        json!({ "error": e })
    }
}

/// A random id shaped like Meta's fbtrace_id / x-fb-trace-id (23 url-safe characters).
pub(crate) fn trace_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut rng = rand::thread_rng();
    (0..23)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    // Pins each variant's status and code so a change to Meta's shapes is deliberate.
    #[test]
    fn every_error_maps_to_metas_status_and_code() {
        let cases = [
            (GraphError::InvalidToken, 400, 190),
            (GraphError::Permission, 400, 200),
            (GraphError::BadProof, 400, 100),
            (
                GraphError::Unsupported {
                    method: "get".into(),
                    id: "1".into(),
                },
                400,
                100,
            ),
            (GraphError::UnknownPath("/a/b/c".into()), 400, 2500),
            (GraphError::InvalidParam("x".into()), 400, 100),
            (
                GraphError::NonexistingField {
                    field: "f".into(),
                    node: "N",
                },
                400,
                100,
            ),
            (GraphError::DuplicateTemplate, 400, 100),
            (GraphError::Throttled { status: 429 }, 429, 80008),
            (GraphError::Transient { status: 503 }, 503, 2),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status(), status, "{e:?}");
            let b = e.body();
            assert_eq!(b["error"]["code"], code, "{e:?}");
            assert!(b["error"]["fbtrace_id"]
                .as_str()
                .is_some_and(|s| s.len() == 23));
            assert!(b["error"]["message"].is_string() && b["error"]["type"].is_string());
        }
    }
}
