//! A request body with a size limit, enforced as it streams: the frame that would pass
//! the limit is not handed on; the body ends with [`TooLarge`] instead, and a shared flag
//! tells whoever sent it (the answer is then 413, not 502). Nothing is buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BoxError;

/// The body went past its limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than this route accepts")]
pub struct TooLarge;

/// `inner`, cut off with [`TooLarge`] once more than `limit` bytes of data pass.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: B,
    left: u64,
    tripped: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    /// The body and the flag that turns true if it went past `limit`.
    pub fn new(inner: B, limit: u64) -> (LimitedBody<B>, Arc<AtomicBool>) {
        let tripped = Arc::new(AtomicBool::new(false));
        let body = LimitedBody {
            inner,
            left: limit,
            tripped: tripped.clone(),
        };
        (body, tripped)
    }
}

impl<B> Body for LimitedBody<B>
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
        if this.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(TooLarge))));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > this.left {
                this.tripped.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(TooLarge))));
            }
            this.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
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
    use http_body_util::BodyExt;

    /// Data frames of the given sizes, one per poll.
    struct Chunks(std::collections::VecDeque<usize>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let next = self.get_mut().0.pop_front();
            Poll::Ready(next.map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
        }
    }

    fn chunks(sizes: &[usize]) -> Chunks {
        Chunks(sizes.iter().copied().collect())
    }

    #[tokio::test]
    async fn passes_up_to_the_limit_and_trips_past_it() {
        let (body, tripped) = LimitedBody::new(chunks(&[4, 4, 2]), 10);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!tripped.load(Ordering::Relaxed));
        let (body, tripped) = LimitedBody::new(chunks(&[4, 4, 3]), 10);
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<TooLarge>());
        assert!(tripped.load(Ordering::Relaxed));
    }
}
