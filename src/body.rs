//! Bounded reads of a body into memory: the one loop graphgate uses wherever it buffers a body
//! (a caller's form or JSON body, a webhook post, Meta's JSON answer, a cache entry, a probe's
//! listing).
//!
//! It owns stopping at a size limit and at a deadline. It never decides what a body means, and it
//! stops at the first frame that takes it past the limit: a body that turns out larger is handed
//! back as what was read plus the unread rest, so the caller can refuse it or stream it on.

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

/// What a bounded read got.
pub enum Read<B> {
    /// The whole body, at most `limit` bytes.
    Whole(Bytes),
    /// More than `limit` bytes: what was read so far (a little over the limit), and the rest unread.
    TooLarge { head: Bytes, rest: B },
}

/// Why a bounded read stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the body failed while it was being read")]
    Failed,
    #[error("the body was not complete by its deadline")]
    TimedOut,
}

/// Reads `body` until its end, until more than `limit` bytes arrived, or until `deadline`. A body
/// that arrives as one frame is kept as that frame's `Bytes`, uncopied.
pub async fn read<B>(
    mut body: B,
    limit: u64,
    deadline: Option<Instant>,
) -> Result<Read<B>, ReadError>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    loop {
        let frame = match deadline {
            Some(at) => tokio::time::timeout_at(at, body.frame())
                .await
                .map_err(|_| ReadError::TimedOut)?,
            None => body.frame().await,
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(ReadError::Failed),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        let read = match &first {
            None => {
                first = Some(data);
                first.as_ref().map_or(0, Bytes::len)
            }
            Some(f) => {
                if more.is_empty() {
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
                more.len()
            }
        };
        if read as u64 > limit {
            let head = if more.is_empty() {
                first.take().unwrap_or_default()
            } else {
                more.freeze()
            };
            return Ok(Read::TooLarge { head, rest: body });
        }
    }
    Ok(Read::Whole(if more.is_empty() {
        first.unwrap_or_default()
    } else {
        more.freeze()
    }))
}

/// [`read`] for callers that refuse a body over the limit: `Ok(None)` when it is too large.
pub async fn read_whole<B>(
    body: B,
    limit: u64,
    deadline: Option<Instant>,
) -> Result<Option<Bytes>, ReadError>
where
    B: Body<Data = Bytes> + Unpin,
{
    Ok(match read(body, limit, deadline).await? {
        Read::Whole(bytes) => Some(bytes),
        Read::TooLarge { .. } => None,
    })
}

/// The longest a read waits for its turn: a waiting request is in flight, and a flood of them must
/// not fill the proxy's cap on requests in flight (`server.max_in_flight`) for long.
pub const TURN_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Turns for reads that must not all run at once (bodies read before the caller is known): at most
/// `n` at a time, so what such reads can hold in memory is `n` times their size limit.
#[derive(Clone)]
pub struct Turns(std::sync::Arc<tokio::sync::Semaphore>);

impl Turns {
    pub fn new(n: usize) -> Turns {
        Turns(std::sync::Arc::new(tokio::sync::Semaphore::new(n)))
    }

    /// A turn, held until dropped; `None` when none came free by `deadline` or within
    /// [`TURN_WAIT`].
    pub async fn take(&self, deadline: Instant) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let until = deadline.min(Instant::now() + TURN_WAIT);
        tokio::time::timeout_at(until, self.0.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    // A body at the limit is whole; one byte more is too large, with the rest left unread.
    #[tokio::test]
    async fn the_limit_is_inclusive_and_the_rest_stays_unread() {
        let got = read_whole(Full::new(Bytes::from_static(b"abcd")), 4, None).await;
        assert_eq!(got.unwrap().as_deref(), Some(&b"abcd"[..]));
        match read(chunks(&["ab", "cde", "fg"]), 4, None).await.unwrap() {
            Read::TooLarge { head, rest } => {
                assert_eq!(&head[..], b"abcde");
                let rest = rest.collect().await.unwrap().to_bytes();
                assert_eq!(&rest[..], b"fg");
            }
            Read::Whole(_) => panic!("5 bytes are over a limit of 4"),
        }
    }

    // A body that stalls past its deadline stops the read with TimedOut, not a hang.
    #[tokio::test]
    async fn a_stalled_body_times_out_at_its_deadline() {
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::io::Error>,
        >());
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let got = read(stalled, 1024, Some(deadline)).await;
        assert_eq!(got.err(), Some(ReadError::TimedOut));
    }
}
