//! Tracing setup: JSON lines when stdout is not a terminal (containers), readable text on a
//! terminal, level from `RUST_LOG` (default `info`).
//!
//! Every line logged while a request is served carries that request's id and method (see
//! [`RequestTag`]).
//!
//! Nothing here decides what is logged; modules must never put a token, key or app secret in a
//! field, and the request tag carries only the request id and method.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io::IsTerminal;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{self as fmt_format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Json,
    Text,
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Format::Json => true,
        Format::Text => false,
        Format::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder
            .fmt_fields(JsonSpanFields)
            .event_format(json_events())
            .try_init()
    } else {
        builder
            .event_format(Tagged {
                inner: fmt_format().with_target(false),
                json: false,
            })
            .try_init()
    };
}

/// The JSON line format: one flat object per event, the current span (or request) under `span`.
pub fn json_events() -> Tagged<fmt_format::Format<fmt_format::Json>> {
    Tagged {
        inner: fmt_format()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(false),
        json: true,
    }
}

fn fmt_format() -> fmt_format::Format {
    fmt_format::Format::default()
}

// ---------------------------------------------------------------- request tags

/// Longest request id kept (`X-Request-Id` values are checked to be at most this long).
const MAX_ID: usize = 128;

/// The request a piece of code works for: its id and method, added to every line logged while
/// the request's future is polled. A tracing span did this before, but creating, entering,
/// leaving and closing one per request cost an eighth of a cache hit; a tag is one allocation
/// and a thread-local swap per poll.
pub struct RequestTag {
    id: [u8; MAX_ID],
    id_len: u8,
    method: http::Method,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<RequestTag>>> = const { RefCell::new(None) };
}

impl RequestTag {
    /// `id` must be printable ASCII; longer than [`MAX_ID`] bytes it is cut.
    pub fn new(id: &str, method: &http::Method) -> Arc<RequestTag> {
        let mut cut = id.len().min(MAX_ID);
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut bytes = [0u8; MAX_ID];
        bytes[..cut].copy_from_slice(&id.as_bytes()[..cut]);
        Arc::new(RequestTag {
            id: bytes,
            id_len: cut as u8,
            method: method.clone(),
        })
    }

    pub fn id(&self) -> &str {
        std::str::from_utf8(&self.id[..self.id_len as usize]).unwrap_or("")
    }

    /// The request this thread works for now, if any: for work that outlives the request's
    /// future (a streamed body) and logs on its behalf later.
    pub fn current() -> Option<Arc<RequestTag>> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Makes this the current request on this thread until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Entered {
        Entered {
            prev: CURRENT.with(|c| c.replace(Some(self.clone()))),
            _here: PhantomData,
        }
    }

    /// `"span":{"id":..,"method":..,"name":"request"}`, the place a request span had in a line.
    fn write_json(&self, out: &mut String) {
        out.push_str("\"span\":{\"id\":");
        push_json_str(out, self.id());
        out.push_str(",\"method\":");
        push_json_str(out, self.method.as_str());
        out.push_str(",\"name\":\"request\"}");
    }
}

/// While alive, the current request on this thread (the previous one is restored on drop).
pub struct Entered {
    prev: Option<Arc<RequestTag>>,
    /// Bound to the thread whose current request it set.
    _here: PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs with its request as the current one.
    pub struct InRequest<F> {
        #[pin]
        fut: F,
        tag: Arc<RequestTag>,
    }
}

pub fn in_request<F: Future>(tag: Arc<RequestTag>, fut: F) -> InRequest<F> {
    InRequest { fut, tag }
}

impl<F: Future> Future for InRequest<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.tag.enter();
        this.fut.poll(cx)
    }
}

/// An event format that adds the current request to lines logged inside one: under `span` in
/// JSON, as ` request_id=.. method=..` at the end of a text line. A line inside a real span is
/// left to the inner format.
pub struct Tagged<E> {
    inner: E,
    json: bool,
}

impl<S, N, E> FormatEvent<S, N> for Tagged<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let tag = CURRENT.with(|c| c.borrow().clone());
        // A line with a span of its own (explicit parent or current) keeps that span's fields.
        let in_span = event.parent().is_some() || ctx.lookup_current().is_some();
        let Some(tag) = tag.filter(|_| !in_span) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let end = line.trim_end().len();
        let mut extra = String::new();
        if self.json {
            if let Some(close) = line[..end].rfind('}') {
                let empty = line[..close].trim_end().ends_with('{');
                if !empty {
                    extra.push(',');
                }
                tag.write_json(&mut extra);
                line.insert_str(close, &extra);
            }
        } else {
            let _ = write!(extra, " request_id={} method={}", tag.id(), tag.method);
            line.insert_str(end, &extra);
        }
        writer.write_str(&line)
    }
}

/// Writes span fields as a JSON object straight into the span's buffer, for the spans that remain
/// (requests use [`RequestTag`]); tracing-subscriber's own JSON field formatter builds and
/// serializes a map of `serde_json` values for each span. The JSON event formatter reads this text
/// back only when an event inside the span is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = JsonObject::default();
        fields.record(&mut v);
        writer.write_str(&v.finish())
    }

    fn add_fields(
        &self,
        current: &mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut v = JsonObject::default();
        fields.record(&mut v);
        let added = v.finish();
        if current.fields.len() <= 2 {
            current.fields = added;
        } else if added.len() > 2 {
            // `{"a":1}` + `{"b":2}` -> `{"a":1,"b":2}`
            current.fields.pop();
            current.fields.push(',');
            current.fields.push_str(&added[1..]);
        }
        Ok(())
    }
}

/// Builds one JSON object from recorded fields (later duplicates win when the text is read).
struct JsonObject {
    out: String,
}

impl Default for JsonObject {
    fn default() -> Self {
        // Room for a request span's fields without growing.
        JsonObject {
            out: String::with_capacity(96),
        }
    }
}

impl JsonObject {
    fn key(&mut self, field: &Field) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        push_json_str(&mut self.out, field.name());
        self.out.push(':');
    }

    fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

impl Visit for JsonObject {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(&mut self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        push_json_str(&mut self.out, &text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Request ids and names never need escaping: copy them whole.
    if !s
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f)
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é");
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}e\u{7f}é");
        let mut plain = String::new();
        push_json_str(&mut plain, "0af3-request:id");
        assert_eq!(plain, "\"0af3-request:id\"");
    }

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_string).collect()
        }
    }

    // Lines logged inside a request's future, or under its guard, carry its id and method; lines
    // outside carry nothing, and a nested request's tag gives way to the outer one's when it ends.
    #[test]
    fn lines_inside_a_request_carry_its_tag() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonSpanFields)
            .event_format(json_events())
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outer = RequestTag::new("req-1", &http::Method::GET);
            let inner = RequestTag::new("req-2", &http::Method::DELETE);
            tracing::info!("before");
            let fut = in_request(outer.clone(), async {
                tracing::warn!(n = 1u64, "inside");
                {
                    let _g = inner.enter();
                    tracing::info!("nested");
                }
                tracing::info!("inside again");
            });
            futures_util::FutureExt::now_or_never(fut).unwrap();
            tracing::info!("after");
            // A line with an explicit parent span keeps that span, tag or not.
            let own = tracing::info_span!("own", k = 1u64);
            let _g = outer.enter();
            tracing::info!(parent: &own, "parented");
        });
        let lines: Vec<serde_json::Value> = buf
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let id = |i: usize| lines[i]["span"]["id"].clone();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[5]["span"]["name"], "own");
        assert!(lines[5]["span"]["id"].is_null());
        assert!(lines[0]["span"].is_null() && lines[4]["span"].is_null());
        assert_eq!(id(1), "req-1");
        assert_eq!(lines[1]["span"]["method"], "GET");
        assert_eq!(lines[1]["n"], 1);
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(id(2), "req-2");
        assert_eq!(lines[2]["span"]["method"], "DELETE");
        assert_eq!(id(3), "req-1");
    }

    // The text format ends a line logged inside a request with its id and method.
    #[test]
    fn text_lines_inside_a_request_end_with_its_tag() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Tagged {
                inner: fmt_format().with_target(false).with_ansi(false),
                json: false,
            })
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let tag = RequestTag::new(&"x".repeat(200), &http::Method::POST);
            assert_eq!(tag.id().len(), MAX_ID);
            let _g = tag.enter();
            tracing::info!("done");
        });
        let lines = buf.lines();
        assert!(
            lines[0].ends_with(&format!(
                " done request_id={} method=POST",
                "x".repeat(MAX_ID)
            )),
            "{lines:?}"
        );
    }

    #[test]
    fn span_fields_are_one_json_object_that_events_carry() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonSpanFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                id = %"r-1\"x",
                n = 7u64,
                neg = -2i64,
                ok = true,
                later = tracing::field::Empty
            );
            span.record("later", "set \\ later");
            let _g = span.enter();
            tracing::info!(status = 200u16, "done");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let span = &line["span"];
        assert_eq!(span["name"], "request");
        assert_eq!(span["id"], "r-1\"x");
        assert_eq!(span["n"], 7);
        assert_eq!(span["neg"], -2);
        assert_eq!(span["ok"], true);
        assert_eq!(span["later"], "set \\ later");
        assert_eq!(line["status"], 200);
    }
}
