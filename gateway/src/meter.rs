//! Counting the bytes that pass through a stream without the stream's users knowing: an IO
//! adapter that reports each read and write to a sink (as linkerd2-proxy's `SensorIo` does), so
//! the relay copies bytes and the counters count them, and neither knows the other.
//!
//! The adapter adds no allocation, lock or copy: one call to the sink per completed read or
//! write, with the length the inner stream reported.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a [`Metered`] stream reports its bytes.
pub trait ByteSink {
    /// `n` bytes were read from the stream.
    fn record_read(&mut self, n: usize);
    /// `n` bytes were written to the stream (accepted by it, not necessarily delivered).
    fn record_write(&mut self, n: usize);
}

/// A stream that reports the bytes read from it and written to it to a [`ByteSink`].
#[derive(Debug)]
pub struct Metered<S, K> {
    inner: S,
    sink: K,
}

impl<S, K> Metered<S, K> {
    /// `inner`, reporting to `sink`.
    pub fn new(inner: S, sink: K) -> Self {
        Metered { inner, sink }
    }

    /// The sink, with what it has recorded.
    pub fn sink(&self) -> &K {
        &self.sink
    }

    /// The stream and the sink, apart again.
    pub fn into_parts(self) -> (S, K) {
        (self.inner, self.sink)
    }
}

impl<S: AsyncRead + Unpin, K: ByteSink + Unpin> AsyncRead for Metered<S, K> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            if n > 0 {
                this.sink.record_read(n);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, K: ByteSink + Unpin> AsyncWrite for Metered<S, K> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.sink.record_write(n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.sink.record_write(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Totals, and how many calls made them.
    #[derive(Debug, Default)]
    struct Tally {
        read: usize,
        written: usize,
        calls: usize,
    }

    impl ByteSink for Tally {
        fn record_read(&mut self, n: usize) {
            self.read += n;
            self.calls += 1;
        }
        fn record_write(&mut self, n: usize) {
            self.written += n;
            self.calls += 1;
        }
    }

    #[tokio::test]
    async fn reads_and_writes_are_counted_exactly() {
        // A pipe smaller than what is written: writes complete in parts, each counted once.
        let (near, mut far) = tokio::io::duplex(7);
        let mut s = Metered::new(near, Tally::default());
        let writer = tokio::spawn(async move {
            let mut got = vec![0u8; 100];
            far.read_exact(&mut got).await.expect("read");
            far.write_all(&[1; 30]).await.expect("write");
            far.shutdown().await.expect("shutdown");
            got
        });
        s.write_all(&[9; 100]).await.expect("write");
        s.flush().await.expect("flush");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read");
        assert_eq!(writer.await.expect("join"), vec![9; 100]);
        assert_eq!(back.len(), 30);
        let tally = s.sink();
        assert_eq!((tally.read, tally.written), (30, 100));
        // The end of the stream (a read of 0) is no call.
        assert!(tally.calls >= 100 / 7 + 30 / 7);
        let (_, tally) = s.into_parts();
        assert_eq!(tally.read + tally.written, 130);
    }

    #[tokio::test]
    async fn vectored_writes_and_failures() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut s = Metered::new(near, Tally::default());
        let bufs = [io::IoSlice::new(b"abc"), io::IoSlice::new(b"defg")];
        let n = s.write_vectored(&bufs).await.expect("write");
        assert!(n > 0);
        assert_eq!(s.sink().written, n);
        let mut got = vec![0u8; n];
        far.read_exact(&mut got).await.expect("read");
        // A write the stream refuses counts nothing.
        drop(far);
        assert!(s.write_all(b"lost").await.is_err());
        assert_eq!(s.sink().written, n);
    }
}
