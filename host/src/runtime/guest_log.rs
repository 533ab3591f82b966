//! The guest's stdout and stderr: each complete line becomes a tracing event tagged with the
//! plugin (stdout at INFO, stderr at WARN) inside the caller's span, so it carries the message
//! context. The last lines of stderr are kept to tell a panic from another trap.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A partial line longer than this is logged as it is.
const MAX_LINE: usize = 16 * 1024;
/// How much of stderr's end is kept for error messages.
const TAIL: usize = 4 * 1024;

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Buffer {
    partial: Vec<u8>,
    tail: String,
}

/// One of the guest's output streams. Cheap to clone; clones share the buffer.
#[derive(Clone)]
pub(crate) struct GuestLog {
    plugin: Arc<str>,
    stream: Stream,
    buffer: Arc<Mutex<Buffer>>,
}

impl GuestLog {
    pub(crate) fn stdout(plugin: Arc<str>) -> Self {
        Self::new(plugin, Stream::Stdout)
    }

    pub(crate) fn stderr(plugin: Arc<str>) -> Self {
        Self::new(plugin, Stream::Stderr)
    }

    fn new(plugin: Arc<str>, stream: Stream) -> Self {
        Self {
            plugin,
            stream,
            buffer: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        // A panic while logging leaves the buffer usable: it holds plain bytes.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.lock();
        buffer.partial.extend_from_slice(bytes);
        while let Some(end) = buffer.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.partial.drain(..=end).collect();
            self.emit(&mut buffer, &line[..line.len() - 1]);
        }
        if buffer.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut buffer.partial);
            self.emit(&mut buffer, &line);
        }
    }

    fn emit(&self, buffer: &mut Buffer, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let plugin = &*self.plugin;
        match self.stream {
            Stream::Stdout => tracing::info!(target: "natsplug::guest", plugin, "{line}"),
            Stream::Stderr => {
                tracing::warn!(target: "natsplug::guest", plugin, stream = "stderr", "{line}");
                if !buffer.tail.is_empty() {
                    buffer.tail.push('\n');
                }
                buffer.tail.push_str(&line);
                if buffer.tail.len() > TAIL {
                    let cut = buffer.tail.len() - TAIL;
                    let cut = (cut..buffer.tail.len())
                        .find(|&i| buffer.tail.is_char_boundary(i))
                        .unwrap_or(buffer.tail.len());
                    buffer.tail.drain(..cut);
                }
            }
        }
    }

    /// Logs what is left of an unfinished line and returns the kept end of the stream since the
    /// last call (a reused instance starts each call with an empty tail).
    pub(crate) fn finish(&self) -> String {
        let mut buffer = self.lock();
        if !buffer.partial.is_empty() {
            let line = std::mem::take(&mut buffer.partial);
            self.emit(&mut buffer, &line);
        }
        std::mem::take(&mut buffer.tail)
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
