//! Hygiene of the front door's proxy: streamed bodies end with an error when they stay idle
//! (`--proxy-idle-timeout-ms`: no frame while the other side is waiting for one), and at most
//! `--proxy-max-concurrent` proxied requests are in flight (a permit is held until the response
//! body is done; beyond the bound clients get `503 {"error":"overloaded"}`).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const PROXY_MAX_CONCURRENT_DEFAULT: usize = 1024;
/// Longer than Base's realtime (SSE) keep-alive, so an idle subscription is not cut by the agent.
pub const PROXY_IDLE_TIMEOUT_DEFAULT_MS: u64 = 300_000;

#[derive(Debug, thiserror::Error)]
#[error("body idle for more than {0:?}")]
pub struct IdleTimeoutError(pub Duration);

/// A body that fails once it has been waited on for `idle` without producing a frame, and that
/// holds a concurrency permit (if any) until it ends or is dropped.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// Armed while the reader waits for a frame; `None` while frames flow.
    sleep: Option<Pin<Box<Sleep>>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration, permit: Option<OwnedSemaphorePermit>) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: None,
            permit,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.permit = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.permit = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this.sleep.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + idle))
                });
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.permit = None;
                        Poll::Ready(Some(Err(Box::new(IdleTimeoutError(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn an_idle_stream_fails_and_releases_its_permit() {
        let limit = Arc::new(Semaphore::new(1));
        let permit = limit.clone().try_acquire_owned().unwrap();
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let mut body =
            IdleTimeout::new(StreamBody::new(rx), Duration::from_millis(50), Some(permit));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        assert_eq!(limit.available_permits(), 0);
        // Slow but not idle: a frame within the timeout each time.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
                .await
                .unwrap();
            assert!(body.frame().await.unwrap().is_ok());
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<IdleTimeoutError>(), "{err}");
        assert_eq!(limit.available_permits(), 1);
    }

    #[tokio::test]
    async fn the_permit_goes_with_the_end_of_the_body() {
        let limit = Arc::new(Semaphore::new(1));
        let permit = limit.clone().try_acquire_owned().unwrap();
        let mut body = IdleTimeout::new(
            http_body_util::Full::new(Bytes::from_static(b"x")),
            Duration::from_secs(5),
            Some(permit),
        );
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.is_none());
        assert_eq!(limit.available_permits(), 1);
    }
}
