//! How an answer ended, told once per request in the access log (and, for cuts, in
//! `graphgate_responses_cut_total{reason}`): the line is written when the answer's head is ready,
//! or for a streamed answer when its body ends ([`Logged`]); a streamed body that Meta cuts or that
//! the caller drops is logged with its real status and `outcome="cut"`; a caller that goes away
//! before the head gets status 499, nginx's "client closed request" ([`Watch`]).
//!
//! A line carries names from config, labels of fixed sets, the status and timings: it must never
//! carry a key, a token or the request's target, and it must never be written twice for a request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::context::Ctx;
use crate::gateway::Gateway;
use crate::metrics::Cut;
use crate::telemetry::RequestTag;

/// What one access-log line says, owned so it can be written after the request's future is done.
pub(super) struct Line {
    gw: Gateway,
    tag: Arc<RequestTag>,
    started: Instant,
    status: u16,
    client: Option<Arc<str>>,
    app: Option<usize>,
    class: &'static str,
    bucket: Option<String>,
    cache: &'static str,
    upstream_status: u16,
}

impl Line {
    fn new(gw: &Gateway, tag: &Arc<RequestTag>, started: Instant, ctx: &mut Ctx) -> Line {
        Line {
            gw: gw.clone(),
            tag: tag.clone(),
            started,
            status: 0,
            client: ctx.client.clone(),
            app: ctx.app,
            class: ctx.class.unwrap_or(""),
            bucket: ctx.bucket.take(),
            cache: "",
            upstream_status: ctx.upstream_status.unwrap_or(0),
        }
    }

    /// The line for an answer with `status`, whose cache result was `cache`.
    pub(super) fn answered(
        gw: &Gateway,
        tag: &Arc<RequestTag>,
        started: Instant,
        ctx: &mut Ctx,
        status: u16,
        cache: &'static str,
    ) -> Line {
        Line {
            status,
            cache,
            ..Line::new(gw, tag, started, ctx)
        }
    }

    /// Writes the line; `cut` when the answer did not reach the caller whole (counted too).
    pub(super) fn write(&self, cut: Option<Cut>) {
        let Some(cut) = cut else {
            if self.gw.config().server.access_log {
                self.emit("done", "");
            }
            return;
        };
        self.gw.metrics().record_cut(cut);
        if self.gw.config().server.access_log {
            self.emit("cut", cut.label());
        }
    }

    fn emit(&self, outcome: &'static str, reason: &'static str) {
        let _in = self.tag.enter();
        let app = self
            .app
            .map(|a| self.gw.config().apps[a].name.as_str())
            .unwrap_or("");
        let client = self.client.as_deref().unwrap_or("");
        let (status, bucket) = (self.status, self.bucket.as_deref().unwrap_or(""));
        let duration_us = self.started.elapsed().as_micros() as u64;
        if outcome == "done" {
            tracing::info!(
                status,
                duration_us,
                client,
                app,
                class = self.class,
                bucket,
                cache = self.cache,
                upstream_status = self.upstream_status,
                "done"
            );
        } else {
            tracing::info!(
                status,
                duration_us,
                client,
                app,
                class = self.class,
                bucket,
                cache = self.cache,
                upstream_status = self.upstream_status,
                outcome,
                reason,
                "cut"
            );
        }
    }
}

/// Watches a request until its answer's head is ready: dropped before that (hyper drops the
/// request's future when the caller closes its connection), it logs status 499 and counts a cut.
pub(super) struct Watch<'a> {
    gw: &'a Gateway,
    tag: &'a Arc<RequestTag>,
    started: Instant,
    pub(super) ctx: Ctx,
    answered: bool,
}

impl<'a> Watch<'a> {
    pub(super) fn new(gw: &'a Gateway, tag: &'a Arc<RequestTag>, started: Instant) -> Watch<'a> {
        Watch {
            gw,
            tag,
            started,
            ctx: Ctx::default(),
            answered: false,
        }
    }

    /// The head is ready: from here the answer is logged by its line.
    pub(super) fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let mut line = Line::new(self.gw, self.tag, self.started, &mut self.ctx);
            line.status = 499;
            line.write(Some(Cut::BeforeHead));
        }
    }
}

pin_project_lite::pin_project! {
    /// A streamed answer's body that writes the request's line when it ends: as answered when
    /// the body is complete, as cut when Meta's body fails or the caller drops it unfinished.
    pub(super) struct Logged {
        #[pin]
        inner: Body,
        line: Option<Line>,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(line) = this.line.take() {
                // hyper may stop polling a body that says it has ended: that is complete.
                let ended = http_body::Body::is_end_stream(&*this.inner);
                let cut = (!ended).then_some(Cut::Caller);
                line.write(cut);
            }
        }
    }
}

impl Logged {
    pub(super) fn new(inner: Body, line: Line) -> Logged {
        Logged {
            inner,
            line: Some(line),
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        let cut = match &polled {
            None => Some(None),
            Some(Err(_)) => Some(Some(Cut::Upstream)),
            Some(Ok(_)) => None,
        };
        if let Some(cut) = cut {
            if let Some(line) = this.line.take() {
                line.write(cut);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
