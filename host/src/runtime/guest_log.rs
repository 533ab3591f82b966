//! The guest's stdout and stderr: each complete line becomes a tracing event tagged with the
//! plugin (stdout at INFO, stderr at WARN) inside the caller's span, so it carries the message
//! context. The last lines of stderr are kept to tell a panic from another trap, and the first
//! line that starts a Go panic (`panic: ...`), which a long traceback would push out of them.
//!
//! What a guest writes to the host's log is bounded per message ([`LogBudget`]): a line is cut
//! at [`MAX_LINE`] bytes, and past `limits.log_bytes` lines are dropped and counted, with one
//! line at the end of the call saying how many. Unbounded, 2,000 lines of 256 KiB from one
//! message wrote 500 MiB of host log.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The longest line logged; the rest of a longer one is cut and its length noted.
pub const MAX_LINE: usize = 4 * 1024;
/// What a log line costs against the budget besides its bytes (its event, its fields).
const LINE_COST: u64 = 64;
/// The most one write of the guest's may carry.
const WRITE_CHUNK: usize = 64 * 1024;
/// How much of stderr's end is kept for error messages.
const TAIL: usize = 4 * 1024;

/// The bytes a call may write to the host's log, shared by stdout, stderr and `log`.
#[derive(Debug)]
pub(crate) struct LogBudget {
    limit: u64,
    used: AtomicU64,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl LogBudget {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
            dropped_lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Whether a (cut) line may be logged; once the budget is spent it is counted instead. A
    /// line costs its bytes and [`LINE_COST`], so empty lines are not free.
    pub(crate) fn admit(&self, line: &str) -> bool {
        let cost = line.len() as u64 + LINE_COST;
        let used = self
            .used
            .fetch_add(cost, Ordering::Relaxed)
            .saturating_add(cost);
        if used > self.limit {
            self.dropped_lines.fetch_add(1, Ordering::Relaxed);
            self.dropped_bytes.fetch_add(cost, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A full budget, for the next call.
    pub(crate) fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
        self.dropped_lines.store(0, Ordering::Relaxed);
        self.dropped_bytes.store(0, Ordering::Relaxed);
    }

    /// Logs one line saying what was dropped in this call, if anything was.
    pub(crate) fn report(&self, plugin: &str) {
        let lines = self.dropped_lines.load(Ordering::Relaxed);
        if lines > 0 {
            let bytes = self.dropped_bytes.load(Ordering::Relaxed);
            tracing::warn!(
                target: "natsplug::guest",
                plugin,
                dropped_lines = lines,
                dropped_bytes = bytes,
                limit = self.limit,
                "log lines dropped: this message passed limits.log_bytes"
            );
        }
    }
}

/// `line` cut to [`MAX_LINE`] bytes on a character boundary, noting what was cut (`more` bytes
/// of it were never buffered).
pub(crate) fn cut(line: &str, more: usize) -> Cow<'_, str> {
    if line.len() <= MAX_LINE && more == 0 {
        return Cow::Borrowed(line);
    }
    let mut end = line.len().min(MAX_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let cut = line.len() - end + more;
    Cow::Owned(format!("{} [{cut} more bytes cut]", &line[..end]))
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Buffer {
    /// The line so far, at most [`MAX_LINE`] bytes of it.
    partial: Vec<u8>,
    /// Bytes of the current line past [`MAX_LINE`], not kept.
    overflow: usize,
    tail: String,
    /// The message of the first stderr line that starts with [`GO_PANIC`].
    go_panic: Option<String>,
}

/// How a Go program's runtime starts the report of a panic on stderr.
const GO_PANIC: &str = "panic: ";

/// One of the guest's output streams. Cheap to clone; clones share the buffer.
#[derive(Clone)]
pub(crate) struct GuestLog {
    plugin: Arc<str>,
    stream: Stream,
    buffer: Arc<Mutex<Buffer>>,
    budget: Arc<LogBudget>,
}

impl GuestLog {
    pub(crate) fn stdout(plugin: Arc<str>, budget: Arc<LogBudget>) -> Self {
        Self::new(plugin, Stream::Stdout, budget)
    }

    pub(crate) fn stderr(plugin: Arc<str>, budget: Arc<LogBudget>) -> Self {
        Self::new(plugin, Stream::Stderr, budget)
    }

    fn new(plugin: Arc<str>, stream: Stream, budget: Arc<LogBudget>) -> Self {
        Self {
            plugin,
            stream,
            buffer: Arc::default(),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        // A panic while logging leaves the buffer usable: it holds plain bytes.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffers `bytes` and logs every line they end; a line keeps at most [`MAX_LINE`] bytes
    /// (plus a character's worth), the rest is only counted.
    fn append(&self, mut bytes: &[u8]) {
        let mut buffer = self.lock();
        while !bytes.is_empty() {
            let (part, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => (&bytes[..end], Some(end + 1)),
                None => (bytes, None),
            };
            let room = (MAX_LINE + 4)
                .saturating_sub(buffer.partial.len())
                .min(part.len());
            buffer.partial.extend_from_slice(&part[..room]);
            buffer.overflow += part.len() - room;
            match ended {
                Some(next) => {
                    self.flush_line(&mut buffer);
                    bytes = &bytes[next..];
                }
                None => break,
            }
        }
    }

    /// Logs the buffered line.
    fn flush_line(&self, buffer: &mut Buffer) {
        let line = std::mem::take(&mut buffer.partial);
        let overflow = std::mem::take(&mut buffer.overflow);
        self.emit(buffer, &line, overflow);
    }

    fn emit(&self, buffer: &mut Buffer, line: &[u8], overflow: usize) {
        let text = String::from_utf8_lossy(line);
        let line = cut(&text, overflow);
        let plugin = &*self.plugin;
        let admitted = self.budget.admit(&line);
        match self.stream {
            Stream::Stdout => {
                if admitted {
                    tracing::info!(target: "natsplug::guest", plugin, "{line}");
                }
            }
            Stream::Stderr => {
                if admitted {
                    tracing::warn!(target: "natsplug::guest", plugin, stream = "stderr", "{line}");
                }
                if buffer.go_panic.is_none()
                    && let Some(message) = line.strip_prefix(GO_PANIC)
                    && !message.trim().is_empty()
                {
                    buffer.go_panic = Some(message.trim().to_owned());
                }
                // Kept even when not logged: it tells a panic from another trap.
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
        if !buffer.partial.is_empty() || buffer.overflow > 0 {
            self.flush_line(&mut buffer);
        }
        std::mem::take(&mut buffer.tail)
    }

    /// The message of the first line of stderr that started a Go panic, if one did.
    pub(crate) fn go_panic(&self) -> Option<String> {
        self.lock().go_panic.clone()
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
        Ok(WRITE_CHUNK)
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
