//! The last line of defence: every configured token and app secret found in a buffered response
//! body is blanked out (Meta repeats query tokens in paging links, including those inside a batch's
//! sub-response strings, which the paging rewrite does not parse).
//!
//! It must never let a whole configured secret through, and never copy a body that holds none.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use bytes::Bytes;
use memchr::memmem::Finder;

/// Up to this many secrets, one `memmem` pass each (the method before the automaton, about 60 ns
/// a secret per 2 KB answer); above it, one automaton pass. `memmem` looks for each secret's rarest
/// bytes; the automaton's prefilter depends on the set of patterns: with a token and a 32-hex app
/// secret (2 to 5 secrets) it took 5-11 us per 2 KB answer full of digits, and with 11 secrets
/// 0.28 us in one arrangement and 6 us in another. With 110 and 1,010 secrets it took 0.25-0.4 us,
/// where `memmem` took 5.6 and 66 us (`cargo bench --bench redact`).
const FEW: usize = 64;

/// What a secret found in a body becomes.
const REDACTED: &[u8] = b"[redacted]";

/// A body rewritten this many times and still holding a secret (a secret that the marker itself
/// completes, like `acted]...`) is withheld whole.
const MAX_PASSES: usize = 3;

pub struct Redactor {
    secrets: Secrets,
}

enum Secrets {
    /// Nothing configured is long enough to look for.
    None,
    Few(Vec<Finder<'static>>),
    /// Every match, overlapping ones included, so that two secrets sharing bytes are both blanked
    /// whole. A contiguous NFA: the default picks a DFA up to 100 patterns, about 10 MiB for 100
    /// tokens of 200 bytes.
    Many(AhoCorasick),
    /// The automaton could not be built. Its limits (about 4 GiB of patterns) are far beyond what a
    /// config can hold, so this is never expected; if it happens, no body goes out unsearched.
    Unsearchable,
}

impl Redactor {
    pub fn new(config: &crate::config::Config) -> Redactor {
        let mut secrets: Vec<&[u8]> = Vec::new();
        for app in &config.apps {
            secrets.push(app.token.expose().as_bytes());
            if let Some(s) = &app.app_secret {
                secrets.push(s.expose().as_bytes());
            }
            for w in &app.wabas {
                if let Some(t) = &w.token {
                    secrets.push(t.expose().as_bytes());
                }
            }
            for t in app.waba_tokens.values() {
                secrets.push(t.expose().as_bytes());
            }
        }
        Redactor::of(secrets)
    }

    /// A redactor for these secrets (config-independent; also what the benchmark builds).
    pub fn of(mut secrets: Vec<&[u8]>) -> Redactor {
        // Very short values would match ordinary text; real tokens and secrets are long.
        secrets.retain(|s| s.len() >= 8);
        secrets.sort_unstable();
        secrets.dedup();
        let secrets = if secrets.is_empty() {
            Secrets::None
        } else if secrets.len() <= FEW {
            Secrets::Few(
                secrets
                    .iter()
                    .map(|s| Finder::new(s).into_owned())
                    .collect(),
            )
        } else {
            let built = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(&secrets);
            match built {
                Ok(searcher) => Secrets::Many(searcher),
                Err(e) => {
                    tracing::error!(error = %e, "the token redactor cannot be built: every rewritten body is withheld");
                    Secrets::Unsearchable
                }
            }
        };
        Redactor { secrets }
    }

    /// The body with every secret replaced by `[redacted]`; the same bytes when there is none.
    pub fn redact(&self, body: Bytes) -> Bytes {
        if !self.found_in(&body) {
            return body;
        }
        tracing::warn!("a response from Meta contained a token or secret; it was redacted");
        let mut out = self.blank(&body);
        for _ in 1..MAX_PASSES {
            if !self.found_in(&out) {
                return Bytes::from(out);
            }
            out = self.blank(&out);
        }
        if self.found_in(&out) {
            return Bytes::from_static(REDACTED);
        }
        Bytes::from(out)
    }

    /// Whether any secret occurs in `body`.
    fn found_in(&self, body: &[u8]) -> bool {
        match &self.secrets {
            Secrets::None => false,
            Secrets::Few(finders) => finders.iter().any(|f| f.find(body).is_some()),
            Secrets::Many(searcher) => searcher.is_match(body),
            Secrets::Unsearchable => true,
        }
    }

    /// `body` with one marker in place of each run of bytes that secrets cover (the union of every
    /// occurrence, overlapping ones included).
    fn blank(&self, body: &[u8]) -> Vec<u8> {
        let mut spans: Vec<Range<usize>> = match &self.secrets {
            Secrets::None => Vec::new(),
            Secrets::Few(finders) => finders
                .iter()
                .flat_map(|f| {
                    let len = f.needle().len();
                    f.find_iter(body).map(move |at| at..at + len)
                })
                .collect(),
            Secrets::Many(searcher) => searcher
                .find_overlapping_iter(body)
                .map(|m| m.range())
                .collect(),
            Secrets::Unsearchable => return REDACTED.to_vec(),
        };
        spans.sort_unstable_by_key(|r| r.start);
        // Overlapping spans merge into one run, blanked by one marker.
        let mut runs: Vec<Range<usize>> = Vec::with_capacity(spans.len());
        for span in spans {
            match runs.last_mut() {
                Some(run) if span.start < run.end => run.end = run.end.max(span.end),
                _ => runs.push(span),
            }
        }
        let mut out = Vec::with_capacity(body.len());
        let mut copied = 0;
        for run in runs {
            out.extend_from_slice(&body[copied..run.start]);
            out.extend_from_slice(REDACTED);
            copied = run.end;
        }
        out.extend_from_slice(&body[copied..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both searchers: `n` extra filler secrets push the list past [`FEW`].
    fn both(secrets: &[&[u8]]) -> [Redactor; 2] {
        let filler: Vec<String> = (0..FEW).map(|i| format!("filler-secret-{i:04}")).collect();
        let mut many: Vec<&[u8]> = secrets.to_vec();
        many.extend(filler.iter().map(|s| s.as_bytes()));
        let few = Redactor::of(secrets.to_vec());
        assert!(matches!(few.secrets, Secrets::Few(_)));
        let many = Redactor::of(many);
        assert!(matches!(many.secrets, Secrets::Many(_)));
        [few, many]
    }

    fn redacted(r: &Redactor, body: &[u8]) -> String {
        String::from_utf8(r.redact(Bytes::copy_from_slice(body)).to_vec()).unwrap()
    }

    // Every secret goes whole, side by side, inside another, or sharing bytes with another.
    #[test]
    fn every_secret_is_blanked_whole() {
        for r in both(&[
            b"EAAtoken0007xyz",
            b"EAAtoken0007xyz-and-more",
            b"AAAAAAAA1234",
            b"1234BBBBBBBB",
            b"short",
        ]) {
            assert_eq!(
                redacted(
                    &r,
                    b"a=EAAtoken0007xyz-and-more b=EAAtoken0007xyzEAAtoken0007xyz"
                ),
                "a=[redacted] b=[redacted][redacted]"
            );
            // Two secrets sharing `1234`: neither survives in part.
            assert_eq!(redacted(&r, b"<AAAAAAAA1234BBBBBBBB>"), "<[redacted]>");
            // Under 8 bytes: never looked for.
            assert_eq!(redacted(&r, b"short"), "short");
        }
    }

    // A secret that the marker itself would complete is caught on the next pass.
    #[test]
    fn the_marker_never_completes_a_secret() {
        for r in both(&[b"EAAsecret", b"acted]XYZW"]) {
            assert_eq!(redacted(&r, b"EAAsecretXYZW"), "[red[redacted]");
        }
        // A secret the marker always recreates: the body is withheld.
        for r in both(&[b"[redacted]"]) {
            assert_eq!(redacted(&r, b"x[redacted]y"), "[redacted]");
        }
    }

    // No secret: the very same bytes, not a copy; nothing to look for at all, likewise.
    #[test]
    fn clean_bodies_are_not_copied() {
        let clean = Bytes::from_static(b"{\"data\":[]}");
        for r in both(&[b"EAAtoken0007xyz"]) {
            assert_eq!(r.redact(clean.clone()).as_ptr(), clean.as_ptr());
        }
        let none = Redactor::of(vec![b"tiny"]);
        assert_eq!(none.redact(clean.clone()).as_ptr(), clean.as_ptr());
    }
}
