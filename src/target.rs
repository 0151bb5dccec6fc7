//! The request target (path and query) as a caller sent it: checked, decoded and split into the
//! parts the pipeline needs.
//!
//! It owns rejecting targets that could be ambiguous or could steer a request elsewhere (bad
//! percent-encoding, `.`/`..`/empty segments, encoded slashes, control bytes, non-UTF-8), and removing
//! the auth parameters callers send. It never decides where a request goes: the upstream is fixed by
//! config and only the path and the cleaned query are ever appended to it.

/// A request target graphgate refuses to forward; the edge answers it as a Graph 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed request target: {0}")]
pub struct BadTarget(pub String);

/// Query and form parameters that carry credentials; they never go upstream as the caller sent them.
pub const AUTH_PARAMS: [&str; 3] = ["access_token", "appsecret_proof", "appsecret_time"];

#[derive(Debug, Clone)]
pub struct Target {
    /// The path exactly as sent (already validated), e.g. `/v19.0/102290129340398/message_templates`.
    pub path: String,
    /// `v19.0` when the path starts with a version.
    pub version: Option<String>,
    /// Decoded path segments after the version, e.g. `["102290129340398", "message_templates"]`.
    pub segments: Vec<String>,
    pub query: Vec<Param>,
}

/// One `key=value` pair: the raw text (forwarded untouched) and its decoded form.
#[derive(Debug, Clone)]
pub struct Param {
    pub raw: String,
    pub key: String,
    pub value: String,
}

impl Target {
    /// Parses an origin-form path and query. Absolute-form is checked by the caller, which knows
    /// the Host header.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Target, BadTarget> {
        if !path.starts_with('/') {
            return Err(bad("the request path must start with /"));
        }
        // One trailing slash (`/v19.0/`, the batch endpoint) is harmless; inner empty segments are not.
        let trimmed = match path[1..].strip_suffix('/') {
            Some(t) if !t.is_empty() => t,
            _ => &path[1..],
        };
        let mut segments = Vec::with_capacity(4);
        let mut version = None;
        for raw in crate::text::split_byte(trimmed, b'/') {
            if raw.is_empty() && path != "/" {
                return Err(bad("empty path segments (//) are not allowed"));
            }
            let seg = decode(raw, false).map_err(|m| bad(&format!("path: {m}")))?;
            if seg == "." || seg == ".." {
                return Err(bad("`.` and `..` path segments are not allowed"));
            }
            check_segment(&seg)?;
            if seg.is_empty() {
                continue;
            }
            if segments.is_empty() && version.is_none() && crate::ids::is_version(&seg) {
                version = Some(seg);
            } else {
                segments.push(seg);
            }
        }
        let query = match query {
            Some(q) => parse_params(q).map_err(|m| bad(&format!("query: {m}")))?,
            None => Vec::new(),
        };
        Ok(Target {
            path: path.to_string(),
            version,
            segments,
            query,
        })
    }

    /// The first value of a decoded query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    /// The query to send upstream: the caller's pairs as sent, minus auth parameters.
    pub fn forward_query(&self) -> String {
        join_raw(self.query.iter().filter(|p| !is_auth_param(&p.key)))
    }

    /// The object the call is about (`/{id}/...`), if any.
    pub fn root(&self) -> Option<&str> {
        self.segments.first().map(String::as_str)
    }

    pub fn edge(&self) -> Option<&str> {
        self.segments.get(1).map(String::as_str)
    }
}

pub fn is_auth_param(key: &str) -> bool {
    AUTH_PARAMS.contains(&key)
}

/// A decoded segment may hold neither a slash (it would change the path's shape upstream) nor a
/// control character. One pass over the bytes: this runs for every segment of every request.
fn check_segment(seg: &str) -> Result<(), BadTarget> {
    let mut control = false;
    for b in seg.bytes() {
        if b == b'/' || b == b'\\' {
            return Err(bad("encoded slashes in the path are not allowed"));
        }
        control |= b.is_ascii_control();
    }
    if control || (!seg.is_ascii() && seg.chars().any(char::is_control)) {
        return Err(bad("control characters in the path are not allowed"));
    }
    Ok(())
}

/// Joins raw pairs back into a query string.
pub fn join_raw<'a>(params: impl Iterator<Item = &'a Param>) -> String {
    let mut out = String::new();
    for p in params {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&p.raw);
    }
    out
}

/// Splits `a=1&b=2` (query or form body) into checked pairs; `+` means space, as in forms.
pub fn parse_params(q: &str) -> Result<Vec<Param>, String> {
    let mut out = Vec::new();
    for raw in crate::text::split_byte(q, b'&') {
        if raw.is_empty() {
            continue;
        }
        let (k, v) = crate::text::split_once_byte(raw, b'=').unwrap_or((raw, ""));
        let key = decode(k, true)?;
        let value = decode(v, true)?;
        out.push(Param {
            raw: raw.to_string(),
            key,
            value,
        });
    }
    Ok(out)
}

/// Strict percent-decoding: every `%` must start two hex digits, and the result must be UTF-8.
pub fn decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let b = s.as_bytes();
    // Most segments and parameters have nothing to decode: copied as they are.
    if !b.iter().any(|&c| c == b'%' || (plus_is_space && c == b'+')) {
        return Ok(s.to_string());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err("malformed percent-encoding".to_string()),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoded bytes are not UTF-8".to_string())
}

fn bad(m: &str) -> BadTarget {
    BadTarget(m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A versioned WABA edge splits into version, root and edge.
    #[test]
    fn versioned_path_splits_into_version_root_and_edge() {
        let t = Target::parse(
            "/v19.0/102290129340398/message_templates",
            Some("limit=2&after=QVFI%3D"),
        )
        .unwrap();
        assert_eq!(t.version.as_deref(), Some("v19.0"));
        assert_eq!(t.root(), Some("102290129340398"));
        assert_eq!(t.edge(), Some("message_templates"));
        assert_eq!(t.param("after"), Some("QVFI="));
    }

    // Unversioned paths and the batch root are accepted.
    #[test]
    fn unversioned_and_root_paths_are_accepted() {
        assert_eq!(Target::parse("/123", None).unwrap().root(), Some("123"));
        assert!(Target::parse("/", None).unwrap().segments.is_empty());
        let t = Target::parse("/v19.0/", None).unwrap();
        assert!(t.segments.is_empty() && t.version.is_some());
    }

    // Ambiguous targets are refused before anything else looks at them.
    #[test]
    fn dangerous_targets_are_rejected() {
        for p in [
            "/a/../b",
            "/a/%2e%2e/b",
            "//evil.com/x",
            "/a//b",
            "/a/%2Fb",
            "/a/%5cb",
            "/a/%zz",
            "/a/%E0%80",
            "/a/%00",
            "x",
        ] {
            assert!(Target::parse(p, None).is_err(), "{p} should be rejected");
        }
        for q in ["a=%", "a=%G1", "a=%FF%FE", "%ZZ=1"] {
            assert!(
                Target::parse("/1", Some(q)).is_err(),
                "{q} should be rejected"
            );
        }
    }

    // Auth parameters disappear from the forwarded query, everything else stays byte for byte.
    #[test]
    fn forward_query_drops_only_auth_params() {
        let t = Target::parse(
            "/1",
            Some("fields=a%2Cb&access_token=k&limit=5&appsecret_proof=p&appsecret_time=1&x"),
        )
        .unwrap();
        assert_eq!(t.forward_query(), "fields=a%2Cb&limit=5&x");
        let t = Target::parse("/1", Some("access%5Ftoken=k&a=1")).unwrap();
        assert_eq!(
            t.forward_query(),
            "a=1",
            "an encoded name is still the auth parameter"
        );
    }
}
