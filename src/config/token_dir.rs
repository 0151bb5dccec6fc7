//! `[[app]] waba_token_dir`: a directory with one file per WABA id (the file's name is the id, its
//! content that WABA's Business Integration System User token), read whole at every load and
//! reload, so a Tech Provider or Solution Partner onboards a customer by writing one file.
//!
//! The directory itself must be readable (or the load fails); a file that cannot serve (a name that
//! is not a Graph id, an empty, oversized or unreadable file, a value a header cannot carry) is
//! skipped with a warning naming the key and the file's name. It must never put a file's content
//! into a warning or a problem.

use std::collections::BTreeMap;
use std::path::Path;

use super::check::{unsafe_for_header, Validator};
use super::{Secret, Waba};

/// The largest token file read (Meta's tokens are a few hundred bytes): bigger files are skipped
/// unread, so a stray large file costs no memory.
pub const MAX_TOKEN_FILE: u64 = 4096;

/// The most files one directory may hold: a listing beyond it is a problem (so that a mistaken
/// directory, e.g. `/`, is refused rather than read).
const MAX_FILES: usize = 100_000;

impl Validator<'_> {
    /// Reads every `<waba id>` file of `dir` (relative to the config file); `key` names it in
    /// problems and warnings. WABAs listed in `wabas` with a token of their own keep it.
    pub(super) fn waba_token_dir(
        &mut self,
        key: &str,
        dir: &Path,
        wabas: &[Waba],
    ) -> BTreeMap<String, Secret> {
        let dir = self.base.join(dir);
        self.watched.push(dir.clone());
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                self.problem(
                    key,
                    format!("cannot read the directory {}: {e}", dir.display()),
                );
                return out;
            }
        };
        let mut names: Vec<_> = entries.filter_map(Result::ok).collect();
        if names.len() > MAX_FILES {
            self.problem(
                key,
                format!("{} holds more than {MAX_FILES} entries", dir.display()),
            );
            return out;
        }
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Hidden files: editors' swap files and Kubernetes' `..data` links of a mounted secret.
            if name.starts_with('.') {
                continue;
            }
            let shown: String = name.chars().take(64).collect();
            let mut skip = |why: &str| {
                self.warnings
                    .push(format!("{key}: skipped the file `{shown}`: {why}"));
            };
            if !crate::ids::is_graph_id(&name) {
                skip("its name is not a WABA id (digits only)");
                continue;
            }
            if wabas.iter().any(|w| w.id == name && w.token.is_some()) {
                skip(
                    "this WABA has its own token_env or token_file in [[app.waba]], which is used",
                );
                continue;
            }
            // Follows symlinks (a mounted secret's files are links into its current version).
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if !m.is_file() => {
                    skip("not a regular file");
                    continue;
                }
                Ok(m) if m.len() > MAX_TOKEN_FILE => {
                    skip(&format!("larger than {MAX_TOKEN_FILE} bytes"));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    skip(&format!("cannot read it: {e}"));
                    continue;
                }
            }
            let text = match std::fs::read(&path) {
                Ok(b) if b.len() as u64 <= MAX_TOKEN_FILE => String::from_utf8(b).ok(),
                Ok(_) => {
                    skip(&format!("larger than {MAX_TOKEN_FILE} bytes"));
                    continue;
                }
                Err(e) => {
                    skip(&format!("cannot read it: {e}"));
                    continue;
                }
            };
            let Some(text) = text else {
                skip("not UTF-8 text");
                continue;
            };
            let token = text.trim();
            if token.is_empty() {
                skip("empty");
                continue;
            }
            if let Some(what) = unsafe_for_header(token) {
                skip(&format!(
                    "contains {what}, which an HTTP header cannot carry"
                ));
                continue;
            }
            out.insert(name, Secret::new(token));
        }
        out
    }
}
