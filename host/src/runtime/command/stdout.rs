//! A command's standard output: kept in memory for the frames to be read once the program
//! ends, up to twice the output budget, and every byte taken from the host-wide output pool
//! (`runtime.max_output_bytes`) as the program writes it. Without the pool, 64 commands each
//! writing their 2 × 16 MiB held 2 GiB of the host beside the pool's 1 GiB; now a write the
//! pool cannot hold fails, and the run is a host condition (retried), as a component's full
//! pool is.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::super::admission::{OutputHold, OutputPool};

/// The most one write may carry.
const WRITE_CHUNK: usize = 64 * 1024;

/// Standard output of one run; clones share it.
#[derive(Clone)]
pub(crate) struct Stdout(Arc<Mutex<Buffer>>);

struct Buffer {
    bytes: BytesMut,
    capacity: usize,
    pool: OutputPool,
    /// The pool's bytes for `bytes`, released with them.
    held: OutputHold,
    /// Why the last write was refused, if one was.
    full: Option<Full>,
}

/// Why standard output took no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// It holds `capacity` bytes: the output budget's bound.
    Capacity,
    /// The host-wide pool had not the bytes.
    Pool,
}

/// What the program wrote, with the pool's bytes for it.
pub(crate) struct Written {
    pub(crate) bytes: Bytes,
    /// Released when dropped: once the frames are read.
    pub(crate) _held: OutputHold,
    pub(crate) full: Option<Full>,
}

impl Stdout {
    pub(crate) fn new(capacity: usize, pool: OutputPool) -> Self {
        Self(Arc::new(Mutex::new(Buffer {
            bytes: BytesMut::new(),
            capacity,
            pool,
            held: OutputHold::default(),
            full: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what was written (the buffer is empty after).
    pub(crate) fn finish(&self) -> Written {
        let mut buffer = self.lock();
        Written {
            bytes: std::mem::take(&mut buffer.bytes).freeze(),
            _held: std::mem::take(&mut buffer.held),
            full: buffer.full,
        }
    }

    /// Appends `bytes` if the capacity and the pool allow all of them, else nothing.
    fn append(&self, bytes: &[u8]) -> Result<(), Full> {
        let mut buffer = self.lock();
        let buffer = &mut *buffer;
        let refused = if bytes.len() > buffer.capacity - buffer.bytes.len() {
            Some(Full::Capacity)
        } else if !buffer.pool.take(&mut buffer.held, bytes.len()) {
            Some(Full::Pool)
        } else {
            None
        };
        if let Some(full) = refused {
            buffer.full = Some(full);
            return Err(full);
        }
        buffer.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// How much one write may carry now.
    fn room(&self) -> usize {
        let buffer = self.lock();
        (buffer.capacity - buffer.bytes.len()).min(WRITE_CHUNK)
    }
}

impl IsTerminal for Stdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stdout {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stdout {
    async fn ready(&mut self) {}
}

impl OutputStream for Stdout {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // The program sees a closed stream: no more will ever be taken.
        self.append(&bytes).map_err(|_| StreamError::Closed)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        match self.room() {
            0 => {
                self.lock().full = Some(Full::Capacity);
                Err(StreamError::Closed)
            }
            room => Ok(room),
        }
    }
}

impl tokio::io::AsyncWrite for Stdout {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let take = buf.len().min(self.room());
        Poll::Ready(
            self.append(&buf[..take])
                .map(|()| take)
                .map_err(|_| std::io::ErrorKind::BrokenPipe.into()),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_take_from_the_pool_until_it_or_the_capacity_is_full_and_finish_releases_them() {
        let pool = OutputPool::new(100);
        let mut one = Stdout::new(60, pool.clone());
        let mut two = Stdout::new(60, pool.clone());
        assert_eq!(one.check_write().unwrap(), 60);
        one.write(Bytes::from(vec![b'a'; 50])).unwrap();
        assert!(matches!(
            one.write(Bytes::from(vec![b'a'; 11])),
            Err(StreamError::Closed)
        ));
        assert_eq!(one.lock().full, Some(Full::Capacity));
        one.write(Bytes::from(vec![b'b'; 10])).unwrap();
        assert!(matches!(one.check_write(), Err(StreamError::Closed)));
        // 60 of the pool's 100 are one's: two gets 40, not the 41st.
        two.write(Bytes::from(vec![b'c'; 40])).unwrap();
        assert!(matches!(
            two.write(Bytes::from_static(b"d")),
            Err(StreamError::Closed)
        ));
        let (first, second) = (one.finish(), two.finish());
        assert_eq!(first.bytes.len(), 60);
        assert_eq!(first.full, Some(Full::Capacity));
        assert_eq!(second.bytes, vec![b'c'; 40]);
        assert_eq!(second.full, Some(Full::Pool));
        // Held while what was written is: a third gets nothing yet.
        let mut third = Stdout::new(200, pool.clone());
        assert!(matches!(
            third.write(Bytes::from_static(b"f")),
            Err(StreamError::Closed)
        ));
        drop((first, second));
        // Both released: a fourth may have all 100.
        let mut fourth = Stdout::new(200, pool);
        fourth.write(Bytes::from(vec![b'e'; 100])).unwrap();
        assert_eq!(fourth.finish().full, None);
    }
}
