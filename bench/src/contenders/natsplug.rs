//! **natsplug**: the release `natsplug run` binary as a subprocess, serving a plugins folder of
//! its own that holds the `uppercase` plugin (Rust, Python or JavaScript) with a benchmark
//! manifest: bound to the runner's durable consumer, `concurrency` handlers at once,
//! `[config] output = "bench.out"`. Its instances are fresh per message, a warm pool, or what
//! the plugin's shipped manifest says (its `[limits]`, `[instance]`, `[retry]` and `[batch]`);
//! a batch row adds `[batch] max`. Outputs go out on the host's publisher pool
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
    /// Which `uppercase`.
    pub guest: Guest,
    /// How its instances are made.
    pub instances: Instances,
    /// `[batch] max`, if batched.
    pub batch: Option<usize>,
}

/// The language of the `uppercase` plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// plugins/uppercase.
    Rust,
    /// plugins/python/uppercase.
    Python,
    /// plugins/js/uppercase.
    JavaScript,
}

impl Guest {
    /// Its component in the dist folder.
    pub fn dist_name(self) -> &'static str {
        match self {
            Self::Rust => "uppercase",
            Self::Python => "uppercase-py",
            Self::JavaScript => "uppercase-js",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Rust => "Rust",
            Self::Python => "Python",
            Self::JavaScript => "JavaScript",
        }
    }
}

/// How a row's instances are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// `isolation = "message"` (the host's default).
    Fresh,
    /// `isolation = "pool"` with `max_invocations`.
    Pool(u32),
    /// The plugin's shipped manifest's sections, whatever they say.
    Shipped,
}

impl Natsplug {
    /// The Rust plugin, a fresh instance per message: the main row.
    pub const fn rust(concurrency: usize) -> Self {
        Self {
            concurrency,
            variant: None,
            guest: Guest::Rust,
            instances: Instances::Fresh,
            batch: None,
        }
    }
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
        let guest = match self.guest {
            Guest::Rust => String::new(),
            other => format!(", {}", other.label()),
        };
        let instances = match self.instances {
            Instances::Fresh => String::new(),
            Instances::Pool(n) => format!(", warm pool (max_invocations {n})"),
            Instances::Shipped => ", shipped manifest".to_owned(),
        };
        let batch = self
            .batch
            .map(|max| format!(", batch {max}"))
            .unwrap_or_default();
        format!(
            "{name}{guest}{instances}{batch} (concurrency {})",
            self.concurrency
        )
    }

    /// The sections of the plugin's shipped manifest that say how it runs.
    fn shipped_sections(&self) -> anyhow::Result<String> {
        let path = crate::workspace_root().join(format!(
            "target/plugins/dist/{}.toml",
            self.guest.dist_name()
        ));
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path:?}"))?;
        let mut table: toml::Table = text.parse().with_context(|| format!("{path:?}"))?;
        table.retain(|key, _| matches!(key, "limits" | "instance" | "retry" | "batch"));
        Ok(toml::to_string(&table)?)
    }

    /// The manifest of the job; `marker` is the config value the hot-reload figure changes.
    pub fn manifest(&self, marker: Option<&str>) -> anyhow::Result<String> {
        let marker = marker
            .map(|m| format!("marker = \"{m}\"\n"))
            .unwrap_or_default();
        let instance = match self.instances {
            Instances::Fresh => String::new(),
            Instances::Pool(n) => {
                format!("[instance]\nisolation = \"pool\"\nmax_invocations = {n}\n\n")
            }
            Instances::Shipped => format!("{}\n", self.shipped_sections()?),
        };
        let batch = self
            .batch
            .map(|max| format!("[batch]\nmax = {max}\n\n"))
            .unwrap_or_default();
        Ok(format!(
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
             {batch}\
             [config]\n\
             output = \"{out}\"\n\
             {marker}",
            stream = job::IN_STREAM,
            subject = job::IN_SUBJECT,
            durable = job::DURABLE,
            ack_wait = job::ACK_WAIT.as_secs(),
            concurrency = self.concurrency,
            out = job::OUT_SUBJECT,
        ))
    }

    /// Lays out a plugins folder in `dir` for the job.
    pub fn job_plugins(&self, dir: &Path, marker: Option<&str>) -> anyhow::Result<PathBuf> {
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins)?;
        let wasm = plugins.join(format!("{PLUGIN}.wasm"));
        copy_plugin(self.guest.dist_name(), &wasm)?;
        self.warm_cache(&wasm)?;
        std::fs::write(manifest_path(&plugins), self.manifest(marker)?)?;
        Ok(plugins)
    }

    /// This row's `natsplug` binary: its variant's, or the one beside the runner.
    fn binary(&self) -> anyhow::Result<PathBuf> {
        match self.variant.and_then(|v| variants().get(v)) {
            Some((_, path)) => Ok(path.clone()),
            None => binary(),
        }
    }

    /// Compiles `wasm` into the compile cache (`natsplug validate` with the same engine
    /// settings), so a run measures a host that starts as a restart does: from the cache, not
    /// compiling (a Python component's compile alone peaks at ~400 MiB).
    fn warm_cache(&self, wasm: &Path) -> anyhow::Result<()> {
        let out = Command::new(self.binary()?)
            .arg("validate")
            .arg(wasm)
            .env(
                "XDG_CACHE_HOME",
                compile_cache().parent().context("a parent")?,
            )
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "natsplug validate {wasm:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
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

    /// The command that serves `plugins` against `url`, with the bench's compile cache.
    pub fn command(&self, url: &str, plugins: &Path) -> anyhow::Result<Command> {
        let mut command = Command::new(self.binary()?);
        command
            .args(["run", "--log", "warn", "--server", url, "--plugins"])
            .arg(plugins)
            .env("NATSPLUG_RUNTIME_CACHE_DIR", compile_cache())
            .env_remove("RUST_BACKTRACE");
        Ok(command)
    }
}

/// The bench's compile cache: `target/bench-compile-cache/natsplug` (`natsplug validate`
/// writes to `$XDG_CACHE_HOME/natsplug`).
pub fn compile_cache() -> PathBuf {
    crate::workspace_root().join("target/bench-compile-cache/natsplug")
}

/// The job manifest's path in a plugins folder.
pub fn manifest_path(plugins: &Path) -> PathBuf {
    plugins.join(format!("{PLUGIN}.toml"))
}

/// Replaces a file atomically (write aside, then rename), as a deploy tool would.
pub fn replace_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    replace_bytes(path, contents.as_bytes())
}

/// [`replace_file`] for bytes.
pub fn replace_bytes(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
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
