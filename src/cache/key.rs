//! What a cache entry is found by ([`CacheKey`]) and the invalidation slot each key falls in.
//!
//! A key holds an app, a WABA id (the token owner), the link host, the path and the query without
//! auth parameters. It must never hold a token, a client key or an `appsecret_proof`, and it knows
//! nothing of entries, the store or the request pipeline.

use crate::target::{self, Param, Target};

/// Invalidation counters, one per hash slot of (app, object id). A write bumps its slot; entries
/// remember the value they were fetched under. Collisions only cost an extra miss.
pub(super) const SLOTS: usize = 4096;

/// What an entry is found by: app, token owner, link host, versioned path, sorted query without
/// auth parameters. The offsets are part of equality, so no component can run into the next.
#[derive(Clone, Eq)]
pub struct CacheKey {
    /// The hash of the rest, computed once: a key is looked up, joined, stored and removed, and
    /// hashing its ~100 bytes each time was a few percent of a miss.
    hash: u64,
    app: u32,
    /// Invalidation slot of (app, object id); derived from the rest, kept to avoid rehashing.
    slot: u32,
    /// `<waba whose token is used, or empty>\n<link host>\n/<version>/<segments>?<k=v&...>`
    /// A `String`, not a `Box<str>`: most keys are built for one lookup and dropped, and shrinking
    /// each to fit would reallocate it; a stored key is a clone, which is exact.
    text: String,
    /// Where the path starts, where the path without version starts, and where the path ends.
    path_at: u32,
    unversioned_at: u32,
    path_end: u32,
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        // The hash first: two different keys almost never share it, so a miss compares no text.
        self.hash == other.hash
            && self.app == other.app
            && self.text == other.text
            && self.path_at == other.path_at
            && self.unversioned_at == other.unversioned_at
            && self.path_end == other.path_end
    }
}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The text holds no secret, but there is no need for logs to carry it whole.
        write!(f, "CacheKey(app {}, {})", self.app, self.path())
    }
}

impl CacheKey {
    /// The path as requested, version included (`/v19.0/123/message_templates`).
    pub fn path(&self) -> &str {
        &self.text[self.path_at as usize..self.path_end as usize]
    }

    pub(super) fn unversioned_path(&self) -> &str {
        &self.text[self.unversioned_at as usize..self.path_end as usize]
    }

    /// Every byte the key holds, for memory accounting and the no-secrets test.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub(super) fn app(&self) -> usize {
        self.app as usize
    }

    /// Index into the store's invalidation counters, below [`SLOTS`].
    pub(super) fn slot(&self) -> usize {
        self.slot as usize
    }

    pub(super) fn build(app: usize, owner: Option<&str>, link_host: &str, t: &Target) -> CacheKey {
        let mut s =
            String::with_capacity(owner.map_or(0, str::len) + link_host.len() + t.path.len() + 64);
        s.push_str(owner.unwrap_or(""));
        s.push('\n');
        s.push_str(link_host);
        s.push('\n');
        let path_at = s.len();
        if let Some(v) = &t.version {
            s.push('/');
            s.push_str(v);
        }
        let unversioned_at = s.len();
        for seg in &t.segments {
            s.push('/');
            s.push_str(seg);
        }
        if t.segments.is_empty() {
            s.push('/');
        }
        let path_end = s.len();
        // Sorted by decoded name and value so `a=1&b=2` and `b=2&a=1` (or `%2C` and `,`) share an
        // entry; re-encoded so `&` and `=` inside values stay unambiguous.
        let mut params: Vec<&Param> = t
            .query
            .iter()
            .filter(|p| !target::is_auth_param(&p.key))
            .collect();
        params.sort_by(|a, b| (&a.key, &a.value).cmp(&(&b.key, &b.value)));
        for (i, p) in params.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.extend(form_urlencoded::byte_serialize(p.key.as_bytes()));
            s.push('=');
            s.extend(form_urlencoded::byte_serialize(p.value.as_bytes()));
        }
        let offsets = (path_at as u32, unversioned_at as u32, path_end as u32);
        CacheKey {
            hash: std::hash::BuildHasher::hash_one(&*KEY_HASHER, (app, &s, offsets)),
            app: app as u32,
            slot: slot_of(app, t.root().unwrap_or("")) as u32,
            text: s,
            path_at: offsets.0,
            unversioned_at: offsets.1,
            path_end: offsets.2,
        }
    }
}

/// Seeded at random once per process: callers choose key texts, so a fixed seed would let them
/// aim many keys at one hash (the maps holding keys see only this hash).
static KEY_HASHER: std::sync::LazyLock<foldhash::fast::RandomState> =
    std::sync::LazyLock::new(foldhash::fast::RandomState::default);

/// The invalidation slot of (app, object id): shared by the key of a read and the write or purge
/// that must drop it.
pub(super) fn slot_of(app: usize, root: &str) -> usize {
    // A fixed seed: stable for the life of the process, which is all slots need (replicas send
    // object ids, not slots).
    let h = std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), (app, root));
    (h % SLOTS as u64) as usize
}
