//! Finds the `next` and `previous` links of every `paging` object in a JSON answer, as byte ranges
//! of the body, in one pass of serde_json's parser: no tree is built, and nothing else in the body
//! is re-serialized (building and printing a `Value` cost about 24 us per 2 KB answer, as much as
//! the rest of a miss).
//!
//! It must never report a range that is not exactly one JSON string of the body, and reports
//! nothing for a body serde_json refuses (only the inside of a non-string `next` / `previous`,
//! skipped as a raw value, is checked less strictly). A `paging` object nested inside such a value
//! (`"next":{"paging":{...}}`) is not walked: [`Found::nested`] tells the caller to rewrite the
//! whole tree instead.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One link: where its JSON string (quotes included) sits in the body, and its decoded text.
pub(super) struct Link {
    pub(super) at: Range<usize>,
    pub(super) url: String,
}

/// What one walk found.
#[derive(Default)]
pub(super) struct Found {
    /// Every string-valued `next` / `previous` member of a `paging` object, at any depth, in
    /// document order.
    pub(super) links: Vec<Link>,
    /// A `next` / `previous` is an object or array: paging links inside it are not in `links`.
    pub(super) nested: bool,
}

/// The paging links of `body`; `None` when serde_json refuses it (its nesting limit included).
pub(super) fn paging_links(body: &[u8]) -> Option<Found> {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    Walk {
        body,
        found: &mut found,
        in_paging: false,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(found)
}

/// Visits one value; `in_paging` when it is the value of a `paging` member.
struct Walk<'a, 'de> {
    body: &'de [u8],
    found: &'a mut Found,
    in_paging: bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walk { body, found, .. } = self;
        while seq
            .next_element_seed(Walk {
                body,
                found: &mut *found,
                in_paging: false,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk {
            body,
            found,
            in_paging,
        } = self;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if in_paging && matches!(key, Key::Next | Key::Previous) {
                let raw: &'de RawValue = map.next_value()?;
                let text = raw.get();
                if text.starts_with('"') {
                    let at = span_of(body, text).ok_or_else(|| de::Error::custom("span"))?;
                    let url = serde_json::from_str(text).map_err(de::Error::custom)?;
                    found.links.push(Link { at, url });
                } else if text.starts_with(['{', '[']) {
                    // Not a link, but it may hold paging objects (Graph never sends one): the
                    // caller rewrites the whole tree.
                    found.nested = true;
                }
            } else {
                map.next_value_seed(Walk {
                    body,
                    found: &mut *found,
                    in_paging: key == Key::Paging,
                })?;
            }
        }
        Ok(())
    }
}

/// Where `text` (a slice serde_json borrowed from `body`) sits in `body`, checked.
fn span_of(body: &[u8], text: &str) -> Option<Range<usize>> {
    let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(text.len())?;
    (body.get(start..end)? == text.as_bytes()).then_some(start..end)
}

/// The member names that matter, read without allocating.
#[derive(PartialEq, Eq)]
enum Key {
    Paging,
    Next,
    Previous,
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, s: &str) -> Result<Key, E> {
        Ok(match s {
            "paging" => Key::Paging,
            "next" => Key::Next,
            "previous" => Key::Previous,
            _ => Key::Other,
        })
    }
}
