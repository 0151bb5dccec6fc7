//! The paging rewrite (src/rewrite/walk.rs finds each link as a slice of the body and only those
//! slices change) against the tree rewrite it replaced (parse the whole answer into a
//! `serde_json::Value`, rewrite every `paging` object's `next` and `previous`, print it again),
//! on arbitrary JSON: both change the same answers, into the same document.

use graphgate::rewrite::Rewriter;
use proptest::prelude::*;
use serde_json::{Map, Value};

const ORIGIN: &str = "https://graph.facebook.com";
const PUBLIC: &str = "http://gg:8080";

/// The replaced method, kept here as the reference, with each link's rewrite from the table.
fn tree_rewrite(body: &[u8]) -> Option<Value> {
    fn walk(v: &mut Value) -> bool {
        let mut changed = false;
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(paging)) = map.get_mut("paging") {
                    for key in ["next", "previous"] {
                        if let Some(Value::String(url)) = paging.get_mut(key) {
                            if let Some(new) = expected_link(url) {
                                *url = new.to_string();
                                changed = true;
                            }
                        }
                    }
                }
                for (_, child) in map.iter_mut() {
                    changed |= walk(child);
                }
            }
            Value::Array(items) => {
                for child in items {
                    changed |= walk(child);
                }
            }
            _ => {}
        }
        changed
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    walk(&mut v).then_some(v)
}

/// What each sample link becomes (`None`: left as it is), written out by hand: links to the
/// upstream move to the public URL without credentials; links elsewhere only lose credentials.
fn expected_link(url: &str) -> Option<&'static str> {
    Some(match url {
        "https://graph.facebook.com/v19.0/1/message_templates?limit=2&after=A" => {
            "http://gg:8080/v19.0/1/message_templates?limit=2&after=A"
        }
        "https://graph.facebook.com/v19.0/1?access_token=EAAsecret&after=B" => {
            "http://gg:8080/v19.0/1?after=B"
        }
        "HTTPS://GRAPH.FACEBOOK.COM/x?appsecret_proof=p&appsecret_time=1" => "http://gg:8080/x",
        "https://graph.facebook.com.evil.com/x?access_token=t" => {
            "https://graph.facebook.com.evil.com/x"
        }
        "https://elsewhere.example/x?access_token=t&a=1" => "https://elsewhere.example/x?a=1",
        "https://graph.facebook.com" => "http://gg:8080",
        _ => return None,
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![
            "https://graph.facebook.com/v19.0/1/message_templates?limit=2&after=A",
            "https://graph.facebook.com/v19.0/1?access_token=EAAsecret&after=B",
            "HTTPS://GRAPH.FACEBOOK.COM/x?appsecret_proof=p&appsecret_time=1",
            "https://graph.facebook.com.evil.com/x?access_token=t",
            "https://elsewhere.example/x?access_token=t&a=1",
            "https://elsewhere.example/x?b=2",
            "https://graph.facebook.com",
            "paging",
            "next",
            "a \"quoted\" \\ \u{e9}\u{1F600} \n line",
            "",
        ])
        .prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            // A paging object with a link and anything (a nested paging object too) beside it,
            // so that about one case in ten has something to rewrite.
            (leaf(), inner.clone(), any::<bool>()).prop_map(|(link, other, swap)| {
                let (next, previous) = if swap { (other, link) } else { (link, other) };
                serde_json::json!({ "data": [], "paging": { "next": next, "previous": previous } })
            }),
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "paging", "next", "previous", "data", "cursors", "x"
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|members| {
                Value::Object(
                    members
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    // Same answers changed, into the same documents; whitespace and Graph's escaped slashes
    // (`\/`, valid only inside strings, where JSON puts every `/`) do not matter.
    #[test]
    fn slice_rewrite_matches_the_tree_rewrite(v in json(), escaped in any::<bool>(), pretty in any::<bool>()) {
        let rw = Rewriter::new(ORIGIN, "");
        let mut body = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
        if escaped {
            body = body.replace('/', "\\/");
        }
        let new = rw.paging(body.as_bytes(), || PUBLIC.to_string());
        let old = tree_rewrite(body.as_bytes());
        match (new, old) {
            (None, None) => {}
            (Some(new), Some(old)) => {
                let new: Value = serde_json::from_slice(&new).expect("the rewrite is valid JSON");
                prop_assert_eq!(new, old);
            }
            (new, old) => prop_assert!(false, "changed: slices {} tree {}", new.is_some(), old.is_some()),
        }
    }
}

// Not JSON, or JSON with something after it: nothing is rewritten, as before.
#[test]
fn invalid_documents_are_left_alone() {
    let rw = Rewriter::new(ORIGIN, "");
    for body in [
        &br#"{"paging":{"next":"https://graph.facebook.com/x?access_token=t"}"#[..],
        br#"{"paging":{"next":"https://graph.facebook.com/x?access_token=t"}} x"#,
        br#"{"paging":{"next":"https://graph.facebook.com/x?access_token=t",}}"#,
        br#"{"paging":{"next":"https://graph.facebook.com/x?access_token=t\x"}}"#,
    ] {
        assert!(rw.paging(body, || PUBLIC.to_string()).is_none());
    }
}

// Only the links change: every other byte (member order, spacing, escapes) is Meta's.
#[test]
fn other_bytes_are_kept() {
    let rw = Rewriter::new(ORIGIN, "");
    let body = br#"{ "z" : 1.50, "data":["a\/b"], "paging" : {"next":"https:\/\/graph.facebook.com\/v19.0\/1?access_token=t&after=A", "cursors":{"after":"A"}} }"#;
    let out = rw.paging(body, || PUBLIC.to_string()).unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{ "z" : 1.50, "data":["a\/b"], "paging" : {"next":"http://gg:8080/v19.0/1?after=A", "cursors":{"after":"A"}} }"#
    );
}

// A `next` that is not a string but holds a paging object (Graph never sends one): its link is
// rewritten too, through the whole tree.
#[test]
fn paging_inside_a_non_string_link_is_rewritten() {
    let rw = Rewriter::new(ORIGIN, "");
    for body in [
        &br#"{"paging":{"next":{"paging":{"next":"https://graph.facebook.com/x?access_token=T"}}}}"#[..],
        br#"{"paging":{"previous":[{"paging":{"next":"https://graph.facebook.com/x?access_token=T"}}]}}"#,
    ] {
        let out = rw.paging(body, || PUBLIC.to_string()).expect("rewritten");
        let out = std::str::from_utf8(&out).unwrap();
        assert!(out.contains("http://gg:8080/x") && !out.contains("access_token"), "{out}");
    }
}
