//! Cursor paging for list edges: opaque cursors, page windows, and Meta-style absolute next/previous URLs.
//! Never reads the store; callers hand it the already-filtered list length.

use super::error::GraphError;

pub(crate) const DEFAULT_LIMIT: usize = 25;
/// Meta caps page sizes; anything larger is clamped.
pub(crate) const MAX_LIMIT: usize = 1000;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64 of `idx:<n>`, shaped like Meta's cursors (e.g. `MTAxNTExOTQ1MjAwNzI5NDE=`).
pub(crate) fn encode_cursor(idx: usize) -> String {
    let raw = format!("idx:{idx}");
    let mut out = String::new();
    for chunk in raw.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn decode_cursor(s: &str) -> Option<usize> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut raw = Vec::new();
    for c in s.trim_end_matches('=').bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            raw.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("idx:")?
        .parse()
        .ok()
}

/// The slice of a list one request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub start: usize,
    pub end: usize,
    pub limit: usize,
    pub has_prev: bool,
    pub has_next: bool,
}

/// Works out the page from `limit`, `after` and `before` for a list of `len` items.
pub(crate) fn page(
    len: usize,
    limit: Option<&str>,
    after: Option<&str>,
    before: Option<&str>,
) -> Result<Page, GraphError> {
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .trim()
            .parse::<usize>()
            .map_err(|_| GraphError::InvalidParam("Param limit must be a number".into()))?
            .clamp(1, MAX_LIMIT),
    };
    let bad_cursor = || GraphError::InvalidParam("Invalid cursor".into());
    let (start, end) = if let Some(a) = after {
        let start = decode_cursor(a)
            .ok_or_else(bad_cursor)?
            .saturating_add(1)
            .min(len);
        (start, start.saturating_add(limit).min(len))
    } else if let Some(b) = before {
        let end = decode_cursor(b).ok_or_else(bad_cursor)?.min(len);
        (end.saturating_sub(limit), end)
    } else {
        (0, limit.min(len))
    };
    Ok(Page {
        start,
        end,
        limit,
        has_prev: start > 0 && start < end,
        has_next: end < len && start < end,
    })
}

/// `scheme://host/path?<other params>&limit=..&<key>=<cursor>`, keeping every other query parameter in its
/// original order (including `access_token`, which Meta echoes when the caller sent it in the query).
pub(crate) fn link(
    origin: &str,
    path: &str,
    query: &[(String, String)],
    limit: usize,
    key: &str,
    cursor: &str,
) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        if !matches!(k.as_str(), "after" | "before" | "limit") {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair("limit", &limit.to_string());
    ser.append_pair(key, cursor);
    format!("{origin}{path}?{}", ser.finish())
}

#[cfg(test)]
mod unit {
    use super::*;

    // Cursors round-trip and junk cursors decode to nothing.
    #[test]
    fn cursors_round_trip() {
        for i in [0, 1, 9, 10, 99, 123456, usize::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(i)), Some(i));
        }
        assert_eq!(decode_cursor("%%%"), None);
        assert_eq!(decode_cursor(""), None);
        assert_eq!(decode_cursor("aGVsbG8="), None);
    }

    // Pages walk forward and back with correct prev/next flags.
    #[test]
    fn pages_walk_forward_and_back() {
        let p = page(10, Some("4"), None, None).expect("page");
        assert_eq!(
            (p.start, p.end, p.has_prev, p.has_next),
            (0, 4, false, true)
        );
        let p = page(10, Some("4"), Some(&encode_cursor(7)), None).expect("page");
        assert_eq!(
            (p.start, p.end, p.has_prev, p.has_next),
            (8, 10, true, false)
        );
        let p = page(10, Some("4"), None, Some(&encode_cursor(8))).expect("page");
        assert_eq!((p.start, p.end, p.has_prev, p.has_next), (4, 8, true, true));
        assert!(page(10, Some("x"), None, None).is_err());
    }
}
