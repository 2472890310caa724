//! What a connection's watchdog goes by: the accepted socket reporting reads and blocked
//! writes, requests in flight until their response is sent, and the request body's
//! deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::caps::Slot;
use super::Limits;

/// What the watchdog of a connection goes by. Times are milliseconds since `opened`, plus
/// one (0: not set).
pub(super) struct Activity {
    opened: Instant,
    /// Requests being answered (their response not sent yet).
    answering: AtomicUsize,
    /// When the connection last became idle (its last response sent).
    idle_since: AtomicU64,
    /// When the head of the next request began (the opening, for the first request).
    head_since: AtomicU64,
    /// Since when a write has been waiting for the client to read.
    write_blocked_since: AtomicU64,
    /// Wakes the watchdog when the above change.
    pub(super) changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            answering: AtomicUsize::new(0),
            idle_since: AtomicU64::new(1),
            head_since: AtomicU64::new(1),
            write_blocked_since: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, stamp: u64, plus: Duration) -> Instant {
        self.opened + Duration::from_millis(stamp - 1) + plus
    }

    /// When the connection is to be closed, if nothing changes.
    pub(super) fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != 0 {
            return Some(self.at(blocked, limits.idle_timeout));
        }
        if self.answering.load(Ordering::Relaxed) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => Some(self.at(self.idle_since.load(Ordering::Relaxed), limits.idle_timeout)),
            head => Some(self.at(head, limits.header_timeout)),
        }
    }

    fn read(&self) {
        if self.answering.load(Ordering::Relaxed) == 0
            && self
                .head_since
                .compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    pub(super) fn request_started(self: &Arc<Self>) -> Answering {
        self.answering.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        self.changed.notify_one();
        Answering(self.clone())
    }

    fn write_blocked(&self, blocked: bool) {
        let was = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked && was == 0 {
            self.write_blocked_since
                .store(self.now(), Ordering::Relaxed);
            self.changed.notify_one();
        } else if !blocked && was != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }
}

/// A request being answered, until its response body is sent (or dropped).
pub(super) struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Relaxed);
        activity.answering.fetch_sub(1, Ordering::Relaxed);
        activity.changed.notify_one();
    }
}

/// The accepted socket, telling [`Activity`] what it reads and whether writes wait; it
/// holds the connection's [`Slot`].
pub(super) struct Socket {
    stream: TcpStream,
    pub(super) activity: Arc<Activity>,
    _slot: Slot,
}

impl Socket {
    pub(super) fn new(stream: TcpStream, slot: Slot) -> Socket {
        Socket {
            stream,
            activity: Arc::new(Activity::new()),
            _slot: slot,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.activity.write_blocked(poll.is_pending());
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.activity.write_blocked(poll.is_pending());
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes (and says so in `timed_out`).
pub(super) struct DeadlineBody {
    pub(super) inner: Incoming,
    pub(super) deadline: Pin<Box<Sleep>>,
    pub(super) timed_out: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.deadline.as_mut().poll(cx));
        self.timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err("the request body did not arrive in time".into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body holding its request's [`Answering`] until sent.
pub(super) struct Answered {
    pub(super) inner: Body,
    pub(super) _answering: Answering,
}

impl http_body::Body for Answered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
