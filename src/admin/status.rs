//! The status page at `/admin` and `/` of the admin listener: one self-contained HTML file
//! (`status.html`, no CDN, no build step) whose own script reads `/admin/limits`, `/admin/cache`
//! and `/admin/status`.
//!
//! It owns the page and the headers it is served with. The page is static: it must never carry data,
//! a token or a secret of its own, and its Content-Security-Policy lets it talk only to this listener.

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};

/// The status page, compiled into the binary.
const STATUS_PAGE: &str = include_str!("status.html");

pub(super) async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // Everything is inline; the page may talk only to this listener.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
                ),
            ),
        ],
        STATUS_PAGE,
    )
        .into_response()
}
