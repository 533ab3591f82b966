//! **FastStream**: `bench/faststream_app.py` in the runner's own virtualenv
//! (`.tools/bench-venv`, `faststream[nats]` pinned by `scripts/bench.sh`), logging off, the same
//! job in Python: a `PullSub` subscriber on the durable consumer, the handler upper-cases the
//! payload and publishes it with a `Nats-Msg-Id`, awaiting the publish ack; FastStream acks the
//! input after the handler. See the script's docstring for its two handler shapes.

use std::path::PathBuf;
use std::process::Command;

/// The FastStream version `scripts/bench.sh` installs.
pub const VERSION: &str = "0.7.8";

/// Settings of the FastStream contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastStream {
    /// `PullSub(batch_size=...)`.
    pub batch: usize,
    /// The handler takes the whole batch (`PullSub(batch=True)`) and publishes it at once.
    pub batch_handler: bool,
    /// Processes on the consumer (`faststream run --workers`): 1, or one per core.
    pub workers: usize,
}

/// One FastStream process per core of this machine, as a FastStream user runs it.
pub fn per_core() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

impl FastStream {
    /// The row name.
    pub fn label(&self) -> String {
        let workers = match self.workers {
            1 => "1 process".to_owned(),
            n => format!("{n} workers"),
        };
        if self.batch_handler {
            format!("FastStream (batch handler, {}, {workers})", self.batch)
        } else {
            format!("FastStream (PullSub batch {}, {workers})", self.batch)
        }
    }

    /// The command that runs the job against `url`.
    pub fn job_command(&self, url: &str) -> anyhow::Result<Command> {
        let mut command = python()?;
        command.args([
            "--server",
            url,
            "--mode",
            "job",
            "--batch",
            &self.batch.to_string(),
            "--workers",
            &self.workers.to_string(),
        ]);
        if self.batch_handler {
            // PullSub's timeout is then the time to fill a batch: its default 5 s stalls.
            command.args(["--batch-handler", "--timeout", "0.1"]);
        }
        Ok(command)
    }

    /// The command that answers requests on the request-reply subject.
    pub fn responder_command(url: &str) -> anyhow::Result<Command> {
        let mut command = python()?;
        command.args(["--server", url, "--mode", "reply"]);
        Ok(command)
    }
}

/// The virtualenv's python running the app script.
fn python() -> anyhow::Result<Command> {
    let root = crate::workspace_root();
    let python = venv().join("bin/python");
    anyhow::ensure!(
        python.exists(),
        "{python:?} is missing: scripts/bench.sh installs faststream[nats]=={VERSION} there"
    );
    let mut command = Command::new(python);
    command
        .arg("-u")
        .arg(root.join("bench/faststream_app.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Ok(command)
}

/// `.tools/bench-venv`, or `NATSPLUG_BENCH_VENV`.
pub fn venv() -> PathBuf {
    std::env::var_os("NATSPLUG_BENCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join(".tools/bench-venv"))
}

/// Whether the virtualenv is there.
pub fn available() -> bool {
    venv().join("bin/python").exists()
}
