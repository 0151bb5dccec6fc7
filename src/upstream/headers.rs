//! Header hygiene both ways: hop-by-hop headers out of requests and responses, and a caller's
//! request headers made fit for Meta (private and credential headers out, our bearer in).
//!
//! It must never forward a caller's credentials or internal addresses to Meta, and never relay a
//! header that describes one connection. It only edits header maps: no I/O, no config.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the obsolete `Keep-Alive` and
/// `Proxy-Connection`): they describe one connection and must not be relayed. Statics, not
/// consts: a const array is built and dropped again at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Request headers that would tell Meta about our callers or network, or carry the caller's key
/// or session (a caller's cookies are for our side, never for Meta).
static PRIVATE_REQUEST_HEADERS: [HeaderName; 15] = [
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
    header::FORWARDED,
    header::VIA,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("x-request-id"),
];

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    retain_headers(headers, |n| !is_hop_by_hop(n, &listed));
}

/// Header names the `Connection` header lists: hop-by-hop for this message only. The usual
/// `keep-alive` and `close` name no header left to remove (`Keep-Alive` is on the list anyway), so
/// they cost no allocation; almost every answer and request carries one of them. Split as bytes:
/// a value with one non-ASCII byte is not a `str`, and its other names must still count.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|n| !n.eq_ignore_ascii_case(b"keep-alive") && !n.eq_ignore_ascii_case(b"close"))
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, listed: &[HeaderName]) -> bool {
    // `Upgrade` is hop-by-hop too; graphgate never upgrades connections to Meta.
    HOP_BY_HOP.contains(name) || name == header::UPGRADE || listed.contains(name)
}

/// Removes the headers `keep` rejects: one scan of the (short) header list, then a removal only
/// for names actually present, instead of a hashed removal for every name on the deny lists.
fn retain_headers(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    // Removing shifts the map, so names are taken first; usually one or two, on the stack.
    let mut unwanted: [Option<HeaderName>; 4] = Default::default();
    let mut more: Vec<HeaderName> = Vec::new();
    for (n, name) in headers.keys().filter(|n| !keep(n)).enumerate() {
        match unwanted.get_mut(n) {
            Some(slot) => *slot = Some(name.clone()),
            None => more.push(name.clone()),
        }
    }
    for name in unwanted.into_iter().flatten().chain(more) {
        headers.remove(name);
    }
}

/// Room for the head of Meta's answer. hyper parses the answer's head into the map the request's
/// head went out in (its cached map on that connection); Graph answers carry about 15-20 headers,
/// so a map sized for the request alone would be grown, with reallocations, on every call. (Over
/// HTTP/2 hyper builds the answer's map itself: the room, about 2 KiB, goes unused until the
/// request has been encoded.)
const ANSWER_HEADERS: usize = 24;

/// A caller's headers made fit for Meta, in a new map: hop-by-hop and private headers left out,
/// our token (its `Authorization` value, see [`crate::auth::Token::bearer`]) in. Built by copying
/// what is kept rather than by cloning and removing: removals shift the map, and a clone has no
/// room for the answer (see [`ANSWER_HEADERS`]).
pub fn outbound_headers(from: &HeaderMap, bearer: HeaderValue) -> HeaderMap {
    let listed = connection_listed(from);
    let mut out = HeaderMap::with_capacity(ANSWER_HEADERS.max(from.len() + 2));
    for (name, value) in from {
        if !is_hop_by_hop(name, &listed)
            && !PRIVATE_REQUEST_HEADERS.contains(name)
            && !name.as_str().starts_with("x-graphgate-")
            && !name.as_str().starts_with("x-http-method-override")
        {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(header::AUTHORIZATION, bearer);
    // graphgate reads Meta's JSON (paging links, errors, usage) and caches it for every caller, so
    // it asks for plain bytes whatever the caller accepts.
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}
