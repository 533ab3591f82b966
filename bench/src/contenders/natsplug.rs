//! **natsplug**: the release `natsplug run` binary as a subprocess, serving a plugins folder of
//! its own that holds the Rust `uppercase` plugin with a benchmark manifest: bound to the
//! runner's durable consumer, `concurrency` handlers at once, `[config] output = "bench.out"`.
//! Every message runs in a fresh wasm instance (or, on the reuse row, an instance serves
//! `[instance] reuse` messages); outputs go out on the host's publisher pool
//! with `Nats-Msg-Id = uppercase:BENCH_IN:SEQ:0` and awaited publish acks, then the input is
//! double-acked. For request-reply the folder holds the `slow` plugin on a core subject, with
//! no `output` config: it replies to a request with `Output::reply()`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::job;

/// Settings of the natsplug contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Natsplug {
    /// The manifest's `subscribe.concurrency`.
    pub concurrency: usize,
    /// Another `natsplug` binary (`--natsplug-variant`), by index; `None`: the one beside this.
    pub variant: Option<usize>,
    /// The manifest's `[instance] reuse`: messages per instance (1: a fresh one per message).
    pub reuse: u32,
}

/// Other `natsplug` binaries to run as extra rows (`--natsplug-variant LABEL=PATH`), e.g. a
/// build of another commit, so a host change is measured side by side with the current one.
static VARIANTS: std::sync::OnceLock<Vec<(String, PathBuf)>> = std::sync::OnceLock::new();

/// Sets the variants (once, at start).
pub fn set_variants(variants: Vec<(String, PathBuf)>) {
    let _ = VARIANTS.set(variants);
}

/// The variants set.
pub fn variants() -> &'static [(String, PathBuf)] {
    VARIANTS.get().map_or(&[], Vec::as_slice)
}

/// The plugin's name: its file stem, the first field of its output ids.
pub const PLUGIN: &str = "uppercase";

impl Natsplug {
    /// The row name.
    pub fn label(&self) -> String {
        let name = match self.variant.and_then(|v| variants().get(v)) {
            Some((name, _)) => format!("natsplug {name}"),
            None => "natsplug".to_owned(),
        };
        match self.reuse {
            1 => format!("{name} (concurrency {})", self.concurrency),
            reuse => format!(
                "{name}, instance reuse {reuse} (concurrency {})",
                self.concurrency
            ),
        }
    }

    /// The manifest of the job; `marker` is the config value the hot-reload figure changes.
    pub fn manifest(&self, marker: Option<&str>) -> String {
        let marker = marker
            .map(|m| format!("marker = \"{m}\"\n"))
            .unwrap_or_default();
        format!(
            "[subscribe]\n\
             stream = \"{stream}\"\n\
             subjects = [\"{subject}\"]\n\
             durable = \"{durable}\"\n\
             bind = true\n\
             ack_wait = \"{ack_wait}s\"\n\
             concurrency = {concurrency}\n\
             \n\
             [publish]\n\
             allow = [\"{out}\"]\n\
             \n\
             {instance}\
             [config]\n\
             output = \"{out}\"\n\
             {marker}",
            stream = job::IN_STREAM,
            subject = job::IN_SUBJECT,
            durable = job::DURABLE,
            ack_wait = job::ACK_WAIT.as_secs(),
            concurrency = self.concurrency,
            instance = match self.reuse {
                1 => String::new(),
                reuse => format!("[instance]\nreuse = {reuse}\n\n"),
            },
            out = job::OUT_SUBJECT,
        )
    }

    /// Lays out a plugins folder in `dir` for the job.
    pub fn job_plugins(&self, dir: &Path, marker: Option<&str>) -> anyhow::Result<PathBuf> {
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins)?;
        copy_plugin("uppercase", &plugins.join(format!("{PLUGIN}.wasm")))?;
        std::fs::write(manifest_path(&plugins), self.manifest(marker))?;
        Ok(plugins)
    }

    /// Lays out a plugins folder in `dir` for request-reply: `slow` on [`job::RR_SUBJECT`].
    pub fn reply_plugins(dir: &Path) -> anyhow::Result<PathBuf> {
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins)?;
        copy_plugin("slow", &plugins.join("reply.wasm"))?;
        std::fs::write(
            plugins.join("reply.toml"),
            format!(
                "[subscribe]\nsubjects = [\"{}\"]\nconcurrency = 8\n",
                job::RR_SUBJECT
            ),
        )?;
        Ok(plugins)
    }

    /// The command that serves `plugins` against `url`; its compile cache goes in `dir`.
    pub fn command(&self, url: &str, plugins: &Path, dir: &Path) -> anyhow::Result<Command> {
        let bin = match self.variant.and_then(|v| variants().get(v)) {
            Some((_, path)) => path.clone(),
            None => binary()?,
        };
        let mut command = Command::new(bin);
        command
            .args(["run", "--log", "warn", "--server", url, "--plugins"])
            .arg(plugins)
            .env("NATSPLUG_RUNTIME_CACHE_DIR", dir.join("cache"))
            .env_remove("RUST_BACKTRACE");
        Ok(command)
    }
}

/// The job manifest's path in a plugins folder.
pub fn manifest_path(plugins: &Path) -> PathBuf {
    plugins.join(format!("{PLUGIN}.toml"))
}

/// Replaces a file atomically (write aside, then rename), as a deploy tool would.
pub fn replace_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let aside = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&aside, contents)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

/// The `natsplug` binary beside this one (`cargo build --release -p natsplug`), or `NATSPLUG_BIN`.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATSPLUG_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("natsplug");
    anyhow::ensure!(
        bin.exists(),
        "{bin:?} is missing: build it with `cargo build --release -p natsplug` (scripts/bench.sh does)"
    );
    Ok(bin)
}

fn copy_plugin(name: &str, to: &Path) -> anyhow::Result<()> {
    let from = crate::workspace_root().join(format!("target/plugins/dist/{name}.wasm"));
    std::fs::copy(&from, to).with_context(|| {
        format!("cannot copy {from:?}: build the plugins with scripts/build-plugins.sh")
    })?;
    Ok(())
}
