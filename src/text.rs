//! Splitting short text at an ASCII byte: path segments, query parameters, header words. These are
//! a few bytes long, where a plain byte loop beats `str::split`'s SIMD searcher (about 150
//! instructions a call, several calls on every request).
//!
//! A leaf: it knows nothing of requests. It must never split at a non-ASCII byte (a slice there
//! would not be on a character boundary).

/// `s` split at every `b` (an ASCII byte), as `str::split` would.
pub fn split_byte(s: &str, b: u8) -> impl Iterator<Item = &str> {
    debug_assert!(b.is_ascii());
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|c| c == b) {
            // `b` is ASCII, so both sides are on character boundaries.
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// [`str::split_once`] at an ASCII byte, without the SIMD searcher (see [`split_byte`]).
pub fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    debug_assert!(b.is_ascii());
    let i = s.bytes().position(|c| c == b)?;
    Some((&s[..i], &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same pieces as `str::split` / `str::split_once`, empty ones included.
    #[test]
    fn splits_like_str() {
        for s in ["", "/", "a", "a/b", "/a/b/", "//", "é/ü/x", "a//b"] {
            assert_eq!(
                split_byte(s, b'/').collect::<Vec<_>>(),
                s.split('/').collect::<Vec<_>>(),
                "{s:?}"
            );
            assert_eq!(split_once_byte(s, b'/'), s.split_once('/'), "{s:?}");
        }
    }
}
