//! The Graph request pipeline: log, faults, auth, appsecret_proof, route, access, count, answer.
//! Owns the order of those steps and Meta's response headers; the steps themselves live in their modules.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use super::auth;
use super::error::{trace_id, GraphError};
use super::faults::Plan;
use super::limits::{Admission, BucketKey, Scope};
use super::routes::{self, Call, Params};
use super::state::{lock, Sim};
use super::stats::{ProofSeen, RequestSeen};

/// Larger Graph request bodies are refused; real ones are a few KiB.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Answered in `facebook-api-version` when the path carries no version.
const DEFAULT_VERSION: &str = "v19.0";

/// Entry point for every non-`/__sim` path.
pub(crate) async fn handle(State(sim): State<Sim>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY).await;
    let header_str = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    lock(&sim.inner.journal).request(RequestSeen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        authorization: header_str(header::AUTHORIZATION),
        content_type: header_str(header::CONTENT_TYPE),
        body_bytes: bytes.as_ref().map_or(0, |b| b.len() as u64),
    });

    let plan = lock(&sim.inner.faults).take();
    let (version, segments) = split_path(parts.uri.path());
    // Injected 5xx happen "in front of" Meta: before auth and counting.
    let outcome = match (plan.fail, bytes) {
        (Some(status), _) => Err((GraphError::Transient { status }, None)),
        (None, Err(_)) => Err((
            GraphError::InvalidParam(format!(
                "Request body could not be read (limit {MAX_BODY} bytes)"
            )),
            None,
        )),
        (None, Ok(bytes)) => run(
            &sim,
            &parts.method,
            &parts.uri,
            &parts.headers,
            &bytes,
            &segments,
        ),
    };
    // Latency and stalls come after the call was counted, as with a slow Meta: the call is spent even
    // if the client gives up waiting.
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    match outcome {
        Ok((body, usage)) => answer(StatusCode::OK, &body, &version, usage.as_ref(), &plan),
        Err((e, usage)) => answer_error(&e, &version, usage.as_ref(), &plan),
    }
}

type Usage = (BucketKey, Admission);

/// Everything after faults; returns the body, or the error, plus usage when the call was counted.
fn run(
    sim: &Sim,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: &Bytes,
    segments: &[String],
) -> Result<(Value, Option<Usage>), (GraphError, Option<Usage>)> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut params = Params(query.clone());
    let body_err = read_body_params(headers, body, &mut params);

    let token =
        auth::header_token(headers).or_else(|| params.get("access_token").map(str::to_string));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err((GraphError::InvalidToken, None));
    };
    lock(&sim.inner.journal).token(&token);
    let Some(tok) = sim.inner.tokens.get(&token) else {
        return Err((GraphError::InvalidToken, None));
    };
    let proof = params.get("appsecret_proof");
    let time = params.get("appsecret_time");
    if let Some(p) = proof {
        lock(&sim.inner.journal).proof(ProofSeen {
            proof: p.to_string(),
            time: time.map(str::to_string),
        });
    }
    if let Some(secret) = &tok.app_secret {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if !auth::proof_valid(secret, &token, proof, time, now) {
            return Err((GraphError::BadProof, None));
        }
    }
    if let Some(e) = body_err {
        return Err((e, None));
    }

    let (id, edge) = match segments {
        [id] => (id.as_str(), None),
        [id, edge] => (id.as_str(), Some(edge.as_str())),
        [] => ("", None),
        more => {
            return Err((
                GraphError::UnknownPath(format!("/{}", more.join("/"))),
                None,
            ))
        }
    };
    let cfg = &sim.inner.cfg;
    // Data lock: classify and read the WABA's activity in one consistent view, released before counting.
    let (route, limit) = {
        let data = lock(&sim.inner.data);
        let route = routes::classify(&data, method, id, edge).map_err(|e| (e, None))?;
        let limit = match &route.bucket {
            Some(Scope::Waba(w)) if data.is_active(w) => cfg.active_waba_limit,
            Some(Scope::Waba(_)) => cfg.waba_limit,
            Some(Scope::CreditLine) => cfg.credit_limit,
            None => 0,
        };
        (route, limit)
    };
    if let Some(w) = &route.waba {
        if !tok.access.allows(w) {
            return Err((GraphError::Permission, None));
        }
    }
    let usage = route.bucket.clone().map(|scope| {
        let key = BucketKey {
            app: tok.app_id.clone(),
            scope,
        };
        let mut limits = lock(&sim.inner.limits);
        // Read the clock under the lock so each bucket's timestamps stay in arrival order.
        let adm = limits.admit(&key, limit, tokio::time::Instant::now(), cfg.window);
        (key, adm)
    });
    if let Some((_, adm)) = &usage {
        if !adm.allowed {
            return Err((
                GraphError::Throttled {
                    status: cfg.throttle_status,
                },
                usage,
            ));
        }
    }
    let origin = origin(uri, headers);
    let call = Call {
        id,
        params: &params,
        query: &query,
        origin: &origin,
        path: uri.path(),
        app_id: &tok.app_id,
    };
    let result = routes::execute(&mut lock(&sim.inner.data), &route, &call, |w| {
        tok.access.allows(w)
    });
    match result {
        Ok(v) => Ok((v, usage)),
        Err(e) => Err((e, usage)),
    }
}

/// Merges form or JSON body fields into `params`. Returns an error for a JSON body that isn't an object,
/// reported only after auth (as Graph does).
fn read_body_params(headers: &HeaderMap, body: &Bytes, params: &mut Params) -> Option<GraphError> {
    if body.is_empty() {
        return None;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        params.0.extend(form_urlencoded::parse(body).into_owned());
    } else if ct.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => params.0.extend(m.into_iter().map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })),
            _ => {
                return Some(GraphError::InvalidParam(
                    "Request body is not a valid JSON object".into(),
                ))
            }
        }
    }
    None
}

/// Splits `/v19.0/a/b` into ("v19.0", ["a","b"]); without a version prefix, the default version.
fn split_path(path: &str) -> (String, Vec<String>) {
    let mut segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let is_version = |s: &str| {
        s.strip_prefix('v')
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            })
    };
    if segs.first().is_some_and(|s| is_version(s)) {
        let v = segs.remove(0);
        (v, segs)
    } else {
        (DEFAULT_VERSION.to_string(), segs)
    }
}

/// `scheme://host` of the request, for absolute paging links. The simulator speaks plain HTTP.
fn origin(uri: &http::Uri, headers: &HeaderMap) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "graph.facebook.com".to_string());
    format!("{scheme}://{host}")
}

fn answer_error(e: &GraphError, version: &str, usage: Option<&Usage>, plan: &Plan) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = answer(status, &e.body(), version, usage, plan);
    if matches!(e, GraphError::InvalidToken) {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_token\" \"Invalid OAuth access token - Cannot parse access token\""),
        );
    }
    resp
}

/// Builds a response with Meta's headers; usage headers only on counted calls.
fn answer(
    status: StatusCode,
    body: &Value,
    version: &str,
    usage: Option<&Usage>,
    plan: &Plan,
) -> Response {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(plan.body(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put("content-type", "application/json; charset=UTF-8".into());
    put(
        "cache-control",
        "private, no-cache, no-store, must-revalidate".into(),
    );
    put("pragma", "no-cache".into());
    put("expires", "Sat, 01 Jan 2000 00:00:00 GMT".into());
    put("access-control-allow-origin", "*".into());
    put("x-fb-trace-id", trace_id());
    put("x-fb-request-id", trace_id());
    put("facebook-api-version", version.to_string());
    if let Some((key, adm)) = usage {
        let pct = adm.percent();
        put(
            "x-business-use-case-usage",
            json!({ key.usage_id(): [{
                "type": "whatsapp_business_management", "call_count": pct, "total_cputime": 1, "total_time": 1,
                "estimated_time_to_regain_access": adm.regain_minutes,
            }]})
            .to_string(),
        );
        put(
            "x-app-usage",
            json!({ "call_count": pct, "total_cputime": 1, "total_time": 1 }).to_string(),
        );
    }
    resp
}

#[cfg(test)]
mod unit {
    use super::*;

    // Version prefixes are recognised only in the v<digits>.<digits> shape.
    #[test]
    fn version_prefix_is_split_off() {
        assert_eq!(
            split_path("/v19.0/1/message_templates"),
            ("v19.0".into(), vec!["1".into(), "message_templates".into()])
        );
        assert_eq!(split_path("/1"), (DEFAULT_VERSION.into(), vec!["1".into()]));
        assert_eq!(split_path("/v1/1").1.len(), 2);
        assert_eq!(split_path("/%ZZ/%E2%82").1.len(), 2);
    }
}
