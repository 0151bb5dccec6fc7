//! Who is calling and what they may touch: client keys, allowlists, and which system-user token
//! a call is made with.
//!
//! A caller's key arrives where a Graph SDK puts a token (`Authorization: Bearer`, or `access_token`
//! in the query or form body). Keys are compared as sha256 digests in constant time. This module
//! must never log, echo or forward a key, and never hand out a token for an app other than the
//! caller's.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderValue, Method};
use subtle::ConstantTimeEq;

use crate::config::{key_digest, AuthMode, ClientId, Config, Secret};
use crate::error::GatewayError;

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's name from config (`anonymous` with `auth = "none"`): safe for logs and labels.
    pub name: Arc<str>,
    pub client: Option<ClientId>,
    pub app: usize,
    /// May spend the reserved share of a bucket (`reserve = "high"`).
    pub reserve: bool,
    /// May force a fresh upstream call with `Cache-Control: no-cache`.
    pub allow_no_cache: bool,
}

/// Precomputed lookups over the config's apps and clients.
pub struct Directory {
    mode: AuthMode,
    clients: Vec<ClientEntry>,
    apps: Vec<AppEntry>,
}

struct ClientEntry {
    name: Arc<str>,
    digest: [u8; 32],
    /// The key itself once a caller has proven it (or from `key_env`): later requests compare it
    /// directly, in constant time, instead of hashing every key presented.
    known_key: OnceLock<Secret>,
    app: usize,
    wabas: Option<HashSet<String>>,
    methods: Option<HashSet<Method>>,
    reserve: bool,
    allow_no_cache: bool,
}

struct AppEntry {
    token: Token,
    /// WABA id or phone-number id -> (WABA id, its own token if it has one).
    objects: foldhash::HashMap<String, (String, Option<Arc<Token>>)>,
}

/// A system-user token with what every call needs from it, prepared once at start-up.
pub struct Token {
    secret: Secret,
    /// `Bearer <token>`, marked sensitive so no header dump shows it.
    bearer: HeaderValue,
    /// Searches a response body for the token (an answer that echoes it is never cached).
    finder: memchr::memmem::Finder<'static>,
}

impl Token {
    pub fn new(secret: Secret) -> Token {
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        bearer.set_sensitive(true);
        let finder = memchr::memmem::Finder::new(secret.expose().as_bytes()).into_owned();
        Token {
            secret,
            bearer,
            finder,
        }
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The `Authorization` value for a call made with this token.
    pub fn bearer(&self) -> HeaderValue {
        self.bearer.clone()
    }

    /// Whether `body` contains the token.
    pub fn appears_in(&self, body: &[u8]) -> bool {
        !self.secret.expose().is_empty() && self.finder.find(body).is_some()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Directory {
    pub fn new(config: &Config) -> Directory {
        let clients = config
            .clients
            .iter()
            .map(|c| ClientEntry {
                name: Arc::from(c.name.as_str()),
                digest: c.key_sha256,
                known_key: OnceLock::new(),
                app: c.app,
                wabas: c.wabas.clone(),
                methods: c.methods.clone(),
                reserve: c.reserve,
                allow_no_cache: c.allow_no_cache,
            })
            .collect();
        let apps = config
            .apps
            .iter()
            .map(|a| {
                let mut objects = foldhash::HashMap::default();
                // A WABA's own token: from its [[app.waba]] entry, else from `waba_token_dir`.
                let own = |id: &str| a.waba_tokens.get(id).cloned();
                for w in &a.wabas {
                    let token = w
                        .token
                        .clone()
                        .or_else(|| own(&w.id))
                        .map(|t| Arc::new(Token::new(t)));
                    objects.insert(w.id.clone(), (w.id.clone(), token.clone()));
                    for p in w.phone_numbers.iter().chain(&w.status_ids) {
                        objects.insert(p.clone(), (w.id.clone(), token.clone()));
                    }
                }
                for (id, secret) in &a.waba_tokens {
                    objects.entry(id.clone()).or_insert_with(|| {
                        (id.clone(), Some(Arc::new(Token::new(secret.clone()))))
                    });
                }
                AppEntry {
                    token: Token::new(a.token.clone()),
                    objects,
                }
            })
            .collect();
        Directory {
            mode: config.auth,
            clients,
            apps,
        }
    }

    /// Identifies the caller from the key it presented.
    pub fn authenticate(&self, key: Option<&str>) -> Result<Caller, GatewayError> {
        if self.mode == AuthMode::None {
            return Ok(Caller {
                name: Arc::from("anonymous"),
                client: None,
                app: 0,
                reserve: false,
                allow_no_cache: true,
            });
        }
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or(GatewayError::MissingKey)?;
        // Every client is looked at without stopping early, so timing does not say which one
        // matched. Keys already proven are compared as they are; a sha256 per request was a tenth
        // of a cache hit. Any other key is hashed and compared with the configured digests.
        let mut found: Option<usize> = None;
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(k) = c.known_key.get() {
                let k = k.expose().as_bytes();
                if k.len() == key.len() && bool::from(k.ct_eq(key.as_bytes())) {
                    found = Some(i);
                }
            }
        }
        if found.is_none() {
            let digest = key_digest(key);
            for (i, c) in self.clients.iter().enumerate() {
                if bool::from(c.digest.ct_eq(&digest)) {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                let _ = self.clients[i].known_key.set(Secret::new(key));
            }
        }
        let i = found.ok_or(GatewayError::UnknownKey)?;
        let c = &self.clients[i];
        Ok(Caller {
            name: c.name.clone(),
            client: Some(ClientId(i)),
            app: c.app,
            reserve: c.reserve,
            allow_no_cache: c.allow_no_cache,
        })
    }

    /// Checks the caller's method and WABA allowlists for a call on `root`/`edge`, plus any extra
    /// object ids it names (`?ids=`).
    pub fn authorize(
        &self,
        caller: &Caller,
        method: &Method,
        root: Option<&str>,
        _edge: Option<&str>,
        extra_ids: &[&str],
    ) -> Result<(), GatewayError> {
        let Some(ci) = caller.client else {
            return Ok(());
        };
        let c = &self.clients[ci.0];
        if let Some(methods) = &c.methods {
            if !methods.contains(method) {
                return Err(GatewayError::MethodNotAllowed {
                    client: c.name.to_string(),
                    method: method.to_string(),
                });
            }
        }
        let Some(allowed) = &c.wabas else {
            return Ok(());
        };
        let app = &self.apps[caller.app];
        // Deny by default: a restricted client reaches only its WABAs and the objects configured
        // under them (phone numbers, status ids). Anything graphgate cannot place — a business, a
        // template id, another customer's number — could lead to another WABA's data.
        let check = |id: &str| -> Result<(), GatewayError> {
            let waba = app.objects.get(id).map(|(waba, _)| waba.as_str());
            match waba {
                Some(w) if allowed.contains(w) => Ok(()),
                _ => Err(GatewayError::ObjectNotAllowed {
                    client: c.name.to_string(),
                    object: id.chars().take(40).collect(),
                }),
            }
        };
        if let Some(root) = root {
            check(root)?;
        }
        for id in extra_ids {
            check(id)?;
        }
        Ok(())
    }

    /// The client has a `wabas` allowlist.
    pub fn is_restricted(&self, caller: &Caller) -> bool {
        caller
            .client
            .is_some_and(|i| self.clients[i.0].wabas.is_some())
    }

    /// The client has a `methods` allowlist.
    pub fn limits_methods(&self, caller: &Caller) -> bool {
        caller
            .client
            .is_some_and(|i| self.clients[i.0].methods.is_some())
    }

    /// The token a call on `root` is made with: the WABA's own token when it has one, else the app's.
    pub fn token_for(&self, app: usize, root: Option<&str>) -> &Token {
        let a = &self.apps[app];
        root.and_then(|r| a.objects.get(r))
            .and_then(|(_, t)| t.as_deref())
            .unwrap_or(&a.token)
    }

    /// Every object of `app` that has a token of its own, with its WABA: what a reload compares to
    /// find the objects whose token owner changed (their cached answers are dropped).
    pub fn own_token_objects(&self, app: usize) -> std::collections::BTreeSet<(&str, &str)> {
        self.apps.get(app).map_or_else(Default::default, |a| {
            a.objects
                .iter()
                .filter(|(_, (_, t))| t.is_some())
                .map(|(id, (waba, _))| (id.as_str(), waba.as_str()))
                .collect()
        })
    }

    /// Who owns the token a call on `root` is made with, without the token itself: `Some(waba id)`
    /// for a WABA's own token, `None` for the app's. The response cache keys on it.
    pub fn token_owner<'a>(&'a self, app: usize, root: Option<&str>) -> Option<&'a str> {
        let a = &self.apps[app];
        root.and_then(|r| a.objects.get(r))
            .and_then(|(waba, t)| t.as_ref().map(|_| waba.as_str()))
    }
}

/// The key a caller presented in a header, if any: `Authorization: Bearer <key>` (pywa, curl) or
/// `OAuth <key>` (older Graph clients).
pub fn key_from_header(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, rest) = crate::text::split_once_byte(v, b' ')?;
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth") {
        Some(rest.trim())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashMap as Env;

    fn config() -> Config {
        let mut env = Env::new();
        env.insert("T_APP".to_string(), "app-token".to_string());
        env.insert("T_WABA".to_string(), "waba-token".to_string());
        let ka = hex::encode(key_digest("key-a-0123456789"));
        let kb = hex::encode(key_digest("key-b-0123456789"));
        let text = format!(
            r#"
[[app]]
name = "main"
id = "1"
token_env = "T_APP"
[[app.waba]]
id = "100"
[[app.waba]]
id = "200"
token_env = "T_WABA"
phone_numbers = ["201"]
[[client]]
name = "a"
key_sha256 = "{ka}"
[[client]]
name = "b"
key_sha256 = "{kb}"
wabas = ["100"]
methods = ["GET"]
"#
        );
        Config::from_toml(&text, "test.toml", std::path::Path::new("."), &env).unwrap()
    }

    // Keys map to their clients; anything else is 190.
    #[test]
    fn keys_identify_clients_and_unknown_keys_fail() {
        let d = Directory::new(&config());
        assert_eq!(
            &*d.authenticate(Some("key-a-0123456789")).unwrap().name,
            "a"
        );
        assert_eq!(
            &*d.authenticate(Some("key-b-0123456789")).unwrap().name,
            "b"
        );
        assert!(matches!(
            d.authenticate(Some("nope")),
            Err(GatewayError::UnknownKey)
        ));
        assert!(matches!(
            d.authenticate(None),
            Err(GatewayError::MissingKey)
        ));
        assert!(matches!(
            d.authenticate(Some("")),
            Err(GatewayError::MissingKey)
        ));
    }

    // Once a key is proven it is compared directly: it still maps to its client, and keys of the
    // same length or sharing a prefix do not pass for it.
    #[test]
    fn proven_keys_still_identify_only_their_client() {
        let d = Directory::new(&config());
        for _ in 0..3 {
            assert_eq!(
                &*d.authenticate(Some("key-a-0123456789")).unwrap().name,
                "a"
            );
        }
        for wrong in ["key-a-0123456788", "key-a-012345678", "key-a-01234567890"] {
            assert!(matches!(
                d.authenticate(Some(wrong)),
                Err(GatewayError::UnknownKey)
            ));
        }
        assert_eq!(
            &*d.authenticate(Some("key-b-0123456789")).unwrap().name,
            "b"
        );
    }

    // A restricted client reaches its WABA, not others, not other WABAs' phone numbers, and not
    // unknown ids on WABA-only edges.
    #[test]
    fn allowlists_cover_wabas_phone_numbers_and_methods() {
        let d = Directory::new(&config());
        let b = d.authenticate(Some("key-b-0123456789")).unwrap();
        let get = Method::GET;
        assert!(d
            .authorize(&b, &get, Some("100"), Some("message_templates"), &[])
            .is_ok());
        assert!(d.authorize(&b, &get, Some("200"), None, &[]).is_err());
        assert!(d
            .authorize(&b, &get, Some("201"), Some("messages"), &[])
            .is_err());
        assert!(d
            .authorize(&b, &get, Some("999"), Some("message_templates"), &[])
            .is_err());
        assert!(
            d.authorize(&b, &get, Some("555"), None, &[]).is_err(),
            "unknown objects are refused to restricted clients"
        );
        assert!(
            d.authorize(&b, &get, Some("100"), None, &["200"]).is_err(),
            "ids= is checked too"
        );
        assert!(matches!(
            d.authorize(&b, &Method::DELETE, Some("100"), None, &[]),
            Err(GatewayError::MethodNotAllowed { .. })
        ));
        let a = d.authenticate(Some("key-a-0123456789")).unwrap();
        assert!(d
            .authorize(&a, &Method::DELETE, Some("200"), None, &[])
            .is_ok());
    }

    // The WABA's own token is used for it and its phone numbers, the app's for everything else.
    #[test]
    fn per_waba_tokens_fall_back_to_the_app_token() {
        let d = Directory::new(&config());
        assert_eq!(d.token_for(0, Some("200")).secret().expose(), "waba-token");
        assert_eq!(d.token_for(0, Some("201")).secret().expose(), "waba-token");
        assert_eq!(d.token_for(0, Some("100")).secret().expose(), "app-token");
        assert_eq!(d.token_for(0, None).secret().expose(), "app-token");
    }

    // Files of a `waba_token_dir` give their WABAs a token (a WABA listed without one, and one not
    // listed at all); a WABA with its own token_env keeps it; the token owner follows.
    #[test]
    fn token_dir_files_give_wabas_their_own_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("100"), "dir-token-100\n").unwrap();
        std::fs::write(dir.path().join("200"), "dir-token-200").unwrap();
        std::fs::write(dir.path().join("300"), "dir-token-300").unwrap();
        let mut env = Env::new();
        env.insert("T_APP".to_string(), "app-token".to_string());
        env.insert("T_WABA".to_string(), "waba-token".to_string());
        let text = format!(
            "[[app]]\nname = \"main\"\nid = \"1\"\ntoken_env = \"T_APP\"\nwaba_token_dir = {:?}\n\
             [[app.waba]]\nid = \"100\"\n[[app.waba]]\nid = \"200\"\ntoken_env = \"T_WABA\"\n\
             [[client]]\nname = \"a\"\nkey_sha256 = \"{}\"\n",
            dir.path().display().to_string(),
            hex::encode(key_digest("key-a-0123456789"))
        );
        let c = Config::from_toml(&text, "t.toml", std::path::Path::new("."), &env).unwrap();
        assert_eq!(
            c.warnings.len(),
            1,
            "200's file is skipped: {:?}",
            c.warnings
        );
        let d = Directory::new(&c);
        let token = |root| d.token_for(0, Some(root)).secret().expose().to_string();
        assert_eq!(token("100"), "dir-token-100");
        assert_eq!(token("200"), "waba-token");
        assert_eq!(token("300"), "dir-token-300");
        assert_eq!(token("400"), "app-token");
        assert_eq!(d.token_owner(0, Some("300")), Some("300"));
        assert_eq!(d.token_owner(0, Some("400")), None);
        assert_eq!(d.own_token_objects(0).len(), 3);
    }

    #[test]
    fn bearer_and_oauth_headers_carry_keys() {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(key_from_header(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "OAuth xyz".parse().unwrap());
        assert_eq!(key_from_header(&h), Some("xyz"));
        h.insert(http::header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(key_from_header(&h), None);
    }
}
