//! The standard test config as a `toml::Table` value, and the structured edits the builder makes
//! to it: merge a TOML fragment, set or remove a key by its path (`app[0].waba[1].limit`, the
//! spelling graphgate's own config errors use), find a WABA's table by id.
//!
//! It never edits config text: every change is made to the parsed value, so a test cannot
//! silently miss (a `.replace()` that matched nothing) or hit two places at once.

use toml::{Table, Value};

use super::{hex, APP_ID, CLIENT_KEY, LIMITED_KEY, OTHER_WABA, PHONE, WABA};

/// One app (system token, app secret), the active WABA and the inactive one with its own token,
/// a full-rights client and a limited one, in front of `upstream`.
pub fn standard(upstream: &str) -> Table {
    let full = hex(CLIENT_KEY);
    let limited = hex(LIMITED_KEY);
    let mut t = parse(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_delay = "0s"

[upstream]
connect_timeout = "1s"
request_timeout = "2s"

[[app]]
name = "main"
id = "{APP_ID}"
token_env = "TEST_SYSTEM_TOKEN"
app_secret_env = "TEST_APP_SECRET"

[[app.waba]]
id = "{WABA}"
active = true
phone_numbers = ["{PHONE}"]

[[app.waba]]
id = "{OTHER_WABA}"
active = false
token_env = "TEST_WABA_TOKEN"

[[client]]
name = "alpha"
key_sha256 = "{full}"

[[client]]
name = "bravo"
key_sha256 = "{limited}"
wabas = ["{WABA}"]
methods = ["GET"]
"#
    ));
    set(&mut t, "upstream.url", upstream.into());
    t
}

/// Parses a TOML document or fragment; a test's typo fails here, naming the text.
pub fn parse(text: &str) -> Table {
    text.parse()
        .unwrap_or_else(|e| panic!("test TOML does not parse: {e}\n{text}"))
}

/// Merges `from` into `into`: tables key by key, arrays of tables (`[[client]]`) appended, any
/// other value replaced.
pub fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (Some(Value::Array(a)), Value::Array(b)) if all_tables(a) && all_tables(&b) => {
                a.extend(b)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn all_tables(a: &[Value]) -> bool {
    !a.is_empty() && a.iter().all(Value::is_table)
}

/// Sets `key` (`server.max_body`, `app[0].token`), creating missing tables on the way.
pub fn set(t: &mut Table, key: &str, value: Value) {
    let (parent, last) = parent_of(t, key);
    parent.insert(last.to_string(), value);
}

/// Removes `key`; panics when it is not there, so a test never removes nothing.
pub fn remove(t: &mut Table, key: &str) {
    let (parent, last) = parent_of(t, key);
    assert!(parent.remove(last).is_some(), "no {key} in the test config");
}

/// The table that holds the last segment of `key`, and that segment.
fn parent_of<'a, 'k>(t: &'a mut Table, key: &'k str) -> (&'a mut Table, &'k str) {
    let (path, last) = match key.rsplit_once('.') {
        Some((path, last)) => (Some(path), last),
        None => (None, key),
    };
    let mut here = t;
    for segment in path.into_iter().flat_map(|p| p.split('.')) {
        here = match segment.split_once('[') {
            None => here
                .entry(segment)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{segment} in {key} is not a table")),
            Some((name, index)) => {
                let i: usize = index
                    .strip_suffix(']')
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("bad index in {key}"));
                here.get_mut(name)
                    .and_then(Value::as_array_mut)
                    .and_then(|a| a.get_mut(i))
                    .and_then(Value::as_table_mut)
                    .unwrap_or_else(|| panic!("no {name}[{i}] in the test config ({key})"))
            }
        };
    }
    (here, last)
}

/// The `[[app.waba]]` table whose `id` is `waba`, in any app.
pub fn waba<'a>(t: &'a mut Table, waba: &str) -> &'a mut Table {
    t.get_mut("app")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|app| app.get_mut("waba").and_then(Value::as_array_mut))
        .flatten()
        .filter_map(Value::as_table_mut)
        .find(|w| w.get("id").and_then(Value::as_str) == Some(waba))
        .unwrap_or_else(|| panic!("no WABA {waba} in the test config"))
}
