//! The contenders, one module each: [`native`] (the floor), [`natsplug`] and [`faststream`].
//! Each one knows how to start its process for the job and for request-reply; the runner
//! measures them all the same way.

pub mod faststream;
pub mod native;
pub mod natsplug;

use std::path::Path;
use std::process::Command;

/// One contender with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// A hand-written async-nats consumer.
    Native(native::Native),
    /// `natsplug run` with an `uppercase` plugin.
    Natsplug(natsplug::Natsplug),
    /// FastStream in Python.
    FastStream(faststream::FastStream),
}

/// Which kind a contender is (the table groups and compares by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// [`Contender::Native`] with plain acks.
    Native,
    /// [`Contender::Native`] with double acks.
    NativeDoubleAck,
    /// [`Contender::Natsplug`].
    Natsplug,
    /// [`Contender::FastStream`] with a per-message handler, one process per core: the same
    /// handler as the others, and the baseline of every "x FastStream".
    FastStream,
    /// [`Contender::FastStream`] with a per-message handler in one process.
    FastStreamOneProcess,
    /// [`Contender::FastStream`] with a batch handler (a list per call).
    FastStreamBatch,
}

impl Contender {
    /// The row name.
    pub fn label(&self) -> String {
        match self {
            Self::Native(n) => n.label(),
            Self::Natsplug(n) => n.label(),
            Self::FastStream(f) => f.label(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Native(n) if n.double_ack => Kind::NativeDoubleAck,
            Self::Native(_) => Kind::Native,
            Self::Natsplug(_) => Kind::Natsplug,
            Self::FastStream(f) if f.batch_handler => Kind::FastStreamBatch,
            Self::FastStream(f) if f.workers == 1 => Kind::FastStreamOneProcess,
            Self::FastStream(_) => Kind::FastStream,
        }
    }

    /// The command that runs the job against `url`; `dir` is a scratch folder of this run.
    pub fn job_command(&self, url: &str, dir: &Path) -> anyhow::Result<Command> {
        match self {
            Self::Native(n) => n.job_command(url),
            Self::Natsplug(n) => {
                let plugins = n.job_plugins(dir, None)?;
                n.command(url, &plugins)
            }
            Self::FastStream(f) => f.job_command(url),
        }
    }
}

/// The request-reply responders, by name.
pub fn responder_command(kind: Kind, url: &str, dir: &Path) -> anyhow::Result<Command> {
    match kind {
        Kind::Native | Kind::NativeDoubleAck => native::Native::responder_command(url),
        Kind::Natsplug => {
            let plugins = natsplug::Natsplug::reply_plugins(dir)?;
            natsplug::Natsplug::rust(8).command(url, &plugins)
        }
        Kind::FastStream | Kind::FastStreamOneProcess | Kind::FastStreamBatch => {
            faststream::FastStream::responder_command(url)
        }
    }
}
