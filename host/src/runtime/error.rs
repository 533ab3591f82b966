//! Typed errors of the runtime: why a plugin could not be loaded ([`LoadError`]) and why a
//! handler call ended without an answer ([`HandlerError`]). Limit hits are variants, not strings,
//! so the engine can map each to its policy (retry or dead-letter).

use std::time::Duration;

use crate::manifest::ManifestError;
use crate::policy::Denied;

/// A plugin file could not be turned into a runnable plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plugin file could not be read.
    #[error("cannot read plugin {path:?}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component or core module (garbage, a truncated file).
    #[error("plugin {plugin:?} is not a valid WebAssembly component: {reason}")]
    NotAComponent {
        /// Plugin name.
        plugin: String,
        /// The compiler's message.
        reason: String,
    },
    /// A component, but not of the `natsplug:plugin/plugin` world: it imports something the host
    /// does not offer, or does not export `handle` with the contract's signature.
    #[error("plugin {plugin:?} is not a component of the natsplug:plugin/plugin world: {reason}")]
    WrongWorld {
        /// Plugin name.
        plugin: String,
        /// What does not match.
        reason: String,
    },
    /// A core module, but not a WASI command that natsplug can run: no `_start` export, or an
    /// import that WASI preview 1 does not have.
    #[error("plugin {plugin:?} is a core module but not a WASI preview-1 command: {reason}")]
    NotACommand {
        /// Plugin name.
        plugin: String,
        /// What does not match.
        reason: String,
    },
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest asks for more than this host allows.
    #[error("plugin {plugin:?}: {reason}")]
    Unsupported {
        /// Plugin name.
        plugin: String,
        /// Which setting and the host's bound.
        reason: String,
    },
}

/// Which limit a handler hit; the engine maps each to the plugin's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Out of fuel.
    Fuel,
    /// Past the wall-clock deadline.
    Deadline,
    /// Over the memory limit.
    Memory,
    /// A trap or a panic.
    Trap,
}

impl LimitKind {
    /// A short lowercase name, for headers, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fuel => "fuel",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Trap => "trap",
        }
    }
}

/// A handler call ended without an answer, or with an answer the host refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The guest used up its fuel (CPU budget).
    #[error("plugin {plugin:?} ran out of fuel after {fuel} units")]
    OutOfFuel {
        /// Plugin name.
        plugin: String,
        /// The budget it had.
        fuel: u64,
    },
    /// The guest ran past its wall-clock deadline.
    #[error("plugin {plugin:?} passed its deadline of {deadline:?}")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// The deadline it had.
        deadline: Duration,
    },
    /// The guest tried to grow its linear memory past the limit.
    #[error("plugin {plugin:?} tried to grow its memory past the limit of {limit} bytes")]
    Memory {
        /// Plugin name.
        plugin: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The guest panicked.
    #[error("plugin {plugin:?} panicked: {message}")]
    Panic {
        /// Plugin name.
        plugin: String,
        /// The panic message the guest printed.
        message: String,
    },
    /// The guest trapped (unreachable, out-of-bounds access, stack overflow...).
    #[error("plugin {plugin:?} trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap.
        message: String,
    },
    /// An output the plugin's grant does not allow: its subject, a header, or its bytes
    /// ([`crate::policy`]).
    #[error("plugin {plugin:?}: {denied}")]
    Refused {
        /// Plugin name.
        plugin: String,
        /// What was refused, and why.
        denied: Denied,
    },
    /// The host holds as many output bytes for messages in flight as `runtime.max_output_bytes`
    /// allows: a host condition, retried like a deadline.
    #[error("plugin {plugin:?}: the host holds its limit of {limit} bytes of pending outputs")]
    OutputPoolFull {
        /// Plugin name.
        plugin: String,
        /// The host's bound.
        limit: u64,
    },
    /// An output is a reply but the input was not a request.
    #[error("plugin {plugin:?} answered with a reply but the message has no reply subject")]
    NoReplySubject {
        /// Plugin name.
        plugin: String,
    },
    /// The instance could not be created (e.g. the host's instance pool is exhausted).
    #[error("plugin {plugin:?} could not be instantiated: {message}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
}

impl HandlerError {
    /// The limit this error counts as, for the retry/dead-letter policy. Refused outputs and
    /// missing reply subjects are deterministic mistakes of the plugin, like traps; a failed
    /// instantiation and a full output pool are host conditions, retried like a deadline.
    pub fn limit(&self) -> LimitKind {
        match self {
            Self::OutOfFuel { .. } => LimitKind::Fuel,
            Self::Deadline { .. } | Self::Instantiate { .. } | Self::OutputPoolFull { .. } => {
                LimitKind::Deadline
            }
            Self::Memory { .. } => LimitKind::Memory,
            Self::Panic { .. }
            | Self::Trap { .. }
            | Self::Refused { .. }
            | Self::NoReplySubject { .. } => LimitKind::Trap,
        }
    }

    /// Whether the host, not the guest, kept the handler from running to an answer: no
    /// instance to be had, or no room for its outputs in the host's pool. Such an input is
    /// tried again later and never dead-lettered.
    pub fn is_host_fault(&self) -> bool {
        matches!(self, Self::Instantiate { .. } | Self::OutputPoolFull { .. })
    }

    /// Whether an output's subject was refused (a guest's `publish` hears of it and goes on).
    pub fn is_subject_refusal(&self) -> bool {
        matches!(self, Self::Refused { denied, .. } if denied.is_subject())
    }

    /// A short lowercase name of the kind, for headers, logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OutOfFuel { .. } => "fuel",
            Self::Deadline { .. } => "deadline",
            Self::Memory { .. } => "memory",
            Self::Panic { .. } => "panic",
            Self::Trap { .. } => "trap",
            Self::Refused { denied, .. } => denied.kind(),
            Self::OutputPoolFull { .. } => "host-output-limit",
            Self::NoReplySubject { .. } => "no-reply-subject",
            Self::Instantiate { .. } => "instantiate",
        }
    }
}
