//! Paging links: `paging.next` / `paging.previous` URLs that point at the upstream are rewritten to
//! graphgate's public URL, with credentials removed, so a client that follows them verbatim (pywa's
//! `Result.next()`) stays behind the proxy and never sees a token.
//!
//! It must never touch any other part of a response: only the links' strings change (found by
//! [`walk`]), every other byte goes out as Meta sent it. [`Redactor`] (`redact`), the last line of
//! defence against tokens in answers, lives beside it.

mod redact;
mod walk;

use bytes::Bytes;
use serde_json::Value;

pub use redact::Redactor;

use crate::target::{is_auth_param, join_raw, parse_params};

/// The upstream end of every rewrite, prepared once at start-up.
pub struct Rewriter {
    /// `scheme://authority` of the upstream.
    upstream_origin: String,
    /// Path prefix of the upstream URL, removed from rewritten links.
    upstream_base_path: String,
    /// Finds the upstream's authority in a body (escaped slashes or not, a link names it).
    upstream_host: memchr::memmem::Finder<'static>,
}

/// Whether a response's content type can hold paging links.
pub fn is_json(content_type: Option<&str>) -> bool {
    // Graph answers `application/json` and, on older endpoints, `text/javascript`.
    content_type.is_some_and(|ct| {
        let ct = ct.trim_start();
        ct.starts_with("application/json") || ct.starts_with("text/javascript")
    })
}

impl Rewriter {
    pub fn new(upstream_origin: &str, upstream_base_path: &str) -> Rewriter {
        let host = upstream_origin
            .split_once("://")
            .map_or(upstream_origin, |(_, h)| h);
        Rewriter {
            upstream_origin: upstream_origin.to_string(),
            upstream_base_path: upstream_base_path.to_string(),
            upstream_host: memchr::memmem::Finder::new(host.as_bytes()).into_owned(),
        }
    }

    /// Returns the rewritten body, or `None` when nothing needed to change. `public_base` (where
    /// callers reach graphgate, no trailing slash) is asked for only when a link is rewritten.
    pub fn paging(&self, body: &[u8], public_base: impl FnOnce() -> String) -> Option<Bytes> {
        // Every paging object, nested ones included, comes after the first `"paging"` key, so the
        // other searches start there (Graph puts paging last, after the data).
        let at = FIXED_NEEDLES[0].find(body)?;
        let tail = &body[at..];
        // Parsing is the expensive part: only when a link can point at the upstream or carries
        // credentials.
        if self.upstream_host.find(tail).is_none()
            && FIXED_NEEDLES[1].find(tail).is_none()
            && FIXED_NEEDLES[2].find(tail).is_none()
        {
            return None;
        }
        // Only the links change: every other byte of the answer goes out as Meta sent it.
        let found = walk::paging_links(body)?;
        if found.nested {
            return self.tree(body, &public_base());
        }
        let links = found.links;
        if links.is_empty() {
            return None;
        }
        let public_base = public_base();
        let mut out = Vec::with_capacity(body.len() + 64);
        let (mut copied, mut changed) = (0, false);
        for walk::Link { at, url } in links {
            if let Some(new) = self.link(&url, &public_base) {
                // In document order, one JSON string each: never overlapping.
                out.extend_from_slice(body.get(copied..at.start)?);
                out.extend_from_slice(&serde_json::to_vec(&new).ok()?);
                copied = at.end;
                changed = true;
            }
        }
        if !changed {
            return None;
        }
        out.extend_from_slice(&body[copied..]);
        Some(Bytes::from(out))
    }

    /// The whole answer as a tree, every paging object rewritten and the tree printed again: only
    /// for a `next` or `previous` that is not a string (Graph never sends one) and might hold more
    /// paging objects. The walk does not descend there.
    fn tree(&self, body: &[u8], public_base: &str) -> Option<Bytes> {
        let mut v: Value = serde_json::from_slice(body).ok()?;
        if !self.walk_tree(&mut v, public_base) {
            return None;
        }
        serde_json::to_vec(&v).ok().map(Bytes::from)
    }

    /// Rewrites every `paging` object in the tree; true if any changed.
    fn walk_tree(&self, v: &mut Value, public_base: &str) -> bool {
        let mut changed = false;
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(paging)) = map.get_mut("paging") {
                    for key in ["next", "previous"] {
                        if let Some(Value::String(url)) = paging.get_mut(key) {
                            if let Some(new) = self.link(url, public_base) {
                                *url = new;
                                changed = true;
                            }
                        }
                    }
                }
                for (_, child) in map.iter_mut() {
                    changed |= self.walk_tree(child, public_base);
                }
            }
            Value::Array(items) => {
                for child in items {
                    changed |= self.walk_tree(child, public_base);
                }
            }
            _ => {}
        }
        changed
    }

    /// The public form of one link, if it points at the upstream.
    fn link(&self, url: &str, public_base: &str) -> Option<String> {
        let Some(rest) = strip_prefix_ignore_case(url, &self.upstream_origin)
            .filter(|r| r.is_empty() || r.starts_with('/') || r.starts_with('?'))
        else {
            // Another host: leave it there, but never with credentials in it.
            return strip_credentials(url);
        };
        let rest = rest.strip_prefix(&*self.upstream_base_path).unwrap_or(rest);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut out = String::with_capacity(public_base.len() + rest.len());
        out.push_str(public_base);
        out.push_str(path);
        if let Some(q) = query {
            // Unparseable queries are dropped rather than forwarded with a possible token in them.
            let params = parse_params(q).unwrap_or_default();
            let kept = join_raw(params.iter().filter(|p| !is_auth_param(&p.key)));
            if !kept.is_empty() {
                out.push('?');
                out.push_str(&kept);
            }
        }
        Some(out)
    }
}

/// `url` without auth parameters, or `None` when it has none.
fn strip_credentials(url: &str) -> Option<String> {
    let (base, q) = url.split_once('?')?;
    let params = parse_params(q).unwrap_or_default();
    if !params.iter().any(|p| is_auth_param(&p.key)) {
        return None;
    }
    let kept = join_raw(params.iter().filter(|p| !is_auth_param(&p.key)));
    Some(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{kept}")
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Built once: making a SIMD searcher costs more than running it over a small body.
static FIXED_NEEDLES: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 3]> =
    std::sync::LazyLock::new(|| {
        [&b"\"paging\""[..], b"access_token", b"appsecret_"].map(memchr::memmem::Finder::new)
    });

#[cfg(test)]
mod tests {
    use super::*;

    struct Rw(Rewriter);
    impl Rw {
        fn paging(&self, body: &[u8]) -> Option<Bytes> {
            self.0.paging(body, || "http://gg:8080".to_string())
        }
    }
    fn rw() -> Rw {
        Rw(Rewriter::new("https://graph.facebook.com", ""))
    }

    // Links to the upstream move to the proxy and lose every credential parameter.
    #[test]
    fn upstream_links_are_rewritten_without_credentials() {
        let body = br#"{"data":[1],"paging":{"cursors":{"after":"A"},"next":"https:\/\/graph.facebook.com\/v19.0\/1\/message_templates?access_token=EAAsecret&limit=2&after=A&appsecret_proof=p&appsecret_time=9","previous":"https://graph.facebook.com/v19.0/1/message_templates?limit=2&before=B"}}"#;
        let out: Value = serde_json::from_slice(&rw().paging(body).unwrap()).unwrap();
        assert_eq!(
            out["paging"]["next"],
            "http://gg:8080/v19.0/1/message_templates?limit=2&after=A"
        );
        assert_eq!(
            out["paging"]["previous"],
            "http://gg:8080/v19.0/1/message_templates?limit=2&before=B"
        );
        assert_eq!(out["paging"]["cursors"]["after"], "A");
    }

    // Expanded fields carry their own paging objects.
    #[test]
    fn nested_paging_objects_are_rewritten() {
        let body = br#"{"id":"1","message_templates":{"data":[],"paging":{"next":"https://graph.facebook.com/1/message_templates?after=X"}}}"#;
        let out: Value = serde_json::from_slice(&rw().paging(body).unwrap()).unwrap();
        assert_eq!(
            out["message_templates"]["paging"]["next"],
            "http://gg:8080/1/message_templates?after=X"
        );
    }

    // Bodies without upstream links are left byte for byte as they were.
    #[test]
    fn other_bodies_are_untouched() {
        assert!(rw().paging(br#"{"data":[]}"#).is_none());
        assert!(rw()
            .paging(br#"{"paging":{"next":"https://graph.facebook.com.evil.com/x"}}"#)
            .is_none());
        assert!(rw()
            .paging(br#"{"paging":{"next":"https://elsewhere.example/x"}}"#)
            .is_none());
        assert!(rw().paging(b"not json \"paging\"").is_none());
    }
}
