//! A command's standard output: kept in memory for the frames to be read once the program
//! ends, and every byte taken from the host-wide output pool (`runtime.max_output_bytes`) as
//! the program writes it. Without the pool, 64 commands each writing their 2 × 16 MiB held
//! 2 GiB of the host beside the pool's 1 GiB.
//!
//! It holds at most twice the output budget and 64 KiB, and never more than the whole pool:
//! past that the run is `output-limit`, however idle the host, so a flood on its own is
//! dead-lettered, not retried for ever. A write the pool cannot take while other messages hold
//! it is a host condition (`host-output-limit`, retried later), as for a component. A refused
//! write traps the program (nothing it does after could change the outcome) and lets go of
//! everything it wrote at once. The bytes are kept as the chunks the program wrote, so what the
//! pool counts is what is allocated; once read, they pay for the outputs
//! ([`Admission::prepaid`](super::super::admission::Admission::prepaid)).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::super::admission::{OutputHold, OutputPool};

/// The most one write may carry.
const WRITE_CHUNK: usize = 64 * 1024;

/// Standard output of one run; clones share it.
#[derive(Clone)]
pub(crate) struct Stdout(Arc<Mutex<Buffer>>);

struct Buffer {
    chunks: Vec<Bytes>,
    len: usize,
    capacity: usize,
    pool: OutputPool,
    /// The pool's bytes for `chunks`.
    held: OutputHold,
    /// Why a write was refused, if one was.
    full: Option<Full>,
}

/// Why standard output took no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Past its capacity: the output budget's bound, or the whole pool's.
    Capacity,
    /// The host-wide pool, held by other messages, had not the bytes.
    Pool,
}

/// What the program wrote, with the pool's bytes for it.
pub(crate) struct Written {
    pub(crate) bytes: Vec<u8>,
    pub(crate) held: OutputHold,
    pub(crate) full: Option<Full>,
}

impl Stdout {
    /// Standard output holding at most `capacity` bytes (and never more than the pool).
    pub(crate) fn new(capacity: usize, pool: OutputPool) -> Self {
        let capacity = capacity.min(usize::try_from(pool.limit).unwrap_or(usize::MAX));
        Self(Arc::new(Mutex::new(Buffer {
            chunks: Vec::new(),
            len: 0,
            capacity,
            pool,
            held: OutputHold::default(),
            full: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what was written, in one buffer.
    pub(crate) fn finish(&self) -> Written {
        let mut buffer = self.lock();
        let mut bytes = Vec::with_capacity(buffer.len);
        // Each chunk is let go once copied: the copy never doubles what is held.
        for chunk in buffer.chunks.drain(..) {
            bytes.extend_from_slice(&chunk);
        }
        buffer.len = 0;
        Written {
            bytes,
            held: std::mem::take(&mut buffer.held),
            full: buffer.full,
        }
    }

    /// Keeps `bytes` if the capacity and the pool allow all of them; else refuses them, lets
    /// go of everything written, and takes no more.
    fn append(&self, bytes: Bytes) -> Result<(), Full> {
        let mut buffer = self.lock();
        let buffer = &mut *buffer;
        if let Some(full) = buffer.full {
            return Err(full);
        }
        let refused = if bytes.len() > buffer.capacity - buffer.len {
            Some(Full::Capacity)
        } else if !buffer.pool.take(&mut buffer.held, bytes.len()) {
            Some(Full::Pool)
        } else {
            None
        };
        if let Some(full) = refused {
            return Err(buffer.refuse(full));
        }
        buffer.len += bytes.len();
        buffer.chunks.push(bytes);
        Ok(())
    }

    /// How much one write may carry now: at least one byte, so that a full one is refused.
    fn room(&self) -> usize {
        let buffer = self.lock();
        (buffer.capacity - buffer.len).clamp(1, WRITE_CHUNK)
    }
}

impl Buffer {
    /// Takes no more, and lets go of everything written.
    fn refuse(&mut self, full: Full) -> Full {
        self.full = Some(full);
        self.chunks = Vec::new();
        self.len = 0;
        self.held = OutputHold::default();
        full
    }
}

fn refused(full: Full) -> StreamError {
    StreamError::Trap(wasmtime::format_err!(match full {
        Full::Capacity => "standard output is past the output budget",
        Full::Pool => "the host's output pool is full",
    }))
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
        self.append(bytes).map_err(refused)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Full to the byte: the write of the next one is refused.
        Ok(self.room())
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
            self.append(Bytes::copy_from_slice(&buf[..take]))
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

    fn write(out: &mut Stdout, byte: u8, n: usize) -> StreamResult<()> {
        out.write(Bytes::from(vec![byte; n]))
    }

    #[test]
    fn writes_take_from_the_pool_and_a_refused_one_lets_go_of_everything() {
        let pool = OutputPool::new(100);
        let mut one = Stdout::new(60, pool.clone());
        let mut two = Stdout::new(60, pool.clone());
        assert_eq!(one.check_write().unwrap(), 60);
        write(&mut one, b'a', 50).unwrap();
        write(&mut one, b'b', 10).unwrap();
        // Full to the byte: the next one is past the capacity.
        assert_eq!(one.check_write().unwrap(), 1);
        assert!(matches!(
            write(&mut one, b'c', 1),
            Err(StreamError::Trap(_))
        ));
        let first = one.finish();
        assert_eq!(first.full, Some(Full::Capacity));
        assert_eq!(first.bytes, b"", "let go of at the refusal");
        assert_eq!(first.held.bytes(), 0);

        write(&mut one, b'a', 1).unwrap_err();
        write(&mut two, b'c', 40).unwrap();
        let mut three = Stdout::new(100, pool.clone());
        write(&mut three, b'd', 50).unwrap();
        // two holds 40 and three 50: three gets 10 more, not 11, and is refused as a host
        // condition; what it held goes back at once, for two.
        assert!(matches!(
            write(&mut three, b'd', 11),
            Err(StreamError::Trap(_))
        ));
        assert_eq!(three.finish().full, Some(Full::Pool));
        write(&mut two, b'c', 20).unwrap();
        let second = two.finish();
        assert_eq!(
            (second.bytes, second.held.bytes(), second.full),
            (vec![b'c'; 60], 60, None)
        );
    }

    #[test]
    fn it_never_holds_more_than_the_pool_even_alone() {
        let pool = OutputPool::new(100);
        let mut alone = Stdout::new(1 << 20, pool);
        write(&mut alone, b'a', 64).unwrap();
        write(&mut alone, b'a', 64).unwrap_err();
        assert_eq!(alone.finish().full, Some(Full::Capacity));
    }
}
