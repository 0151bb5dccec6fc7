//! The scalar values the raw shapes share, as the file writes them: durations (`30s`), byte sizes
//! (`256MiB`) and Graph ids (strings, or integers as TOML users often write them).
//!
//! A leaf: it imports nothing from the crate or from its siblings. It parses only; whether a value
//! is allowed (zero, range, a real Graph id) is for the section's check to say.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A duration written as `30s`, `1h`, `500ms` (humantime).
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration like 30s, 5m or 1h ({e})"))
}

/// A byte size written as `256MiB`, `8KiB`, `1MB` or a plain integer of bytes.
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(i64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) if n >= 0 => Ok(Size(n as u64)),
            Either::N(n) => Err(de::Error::custom(format!("size {n} is negative"))),
            Either::S(s) => parse_size(&s).map(Size).map_err(de::Error::custom),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "not a size like 512KiB, 256MiB or 1GiB".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err("unknown size unit (use B, KiB, MiB, GiB, KB, MB, GB)".to_string()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size is too large".to_string())
}

/// Graph ids are strings, but TOML users often write them as integers; accept both.
pub(super) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(Id::deserialize(d)?.0))
}

pub(super) fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Id>::deserialize(d)?
        .into_iter()
        .map(|i| i.0)
        .collect())
}

pub(super) fn opt_id_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    id_list(d).map(Some)
}

struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        Ok(Id(match Either::deserialize(d)? {
            Either::N(n) => n.to_string(),
            Either::S(s) => s,
        }))
    }
}
