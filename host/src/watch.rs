//! `natsplug dev --build CMD`: a plugin author's loop. The build command runs (through `sh -c`,
//! in the watched folder) once at the start and again whenever a source file there changes and
//! the folder has been quiet for [`DEBOUNCE`]; what it writes into the plugins folder is
//! hot-reloaded by the host's own watch ([`crate::reload`]). A failed build prints its output
//! and changes nothing: the last good version keeps serving. Build outputs and tool folders
//! (`*.wasm`, `target/`, `node_modules/`, `__pycache__/`, dot-files and dot-folders such as
//! `.venv/`) are not sources, so a build never triggers the next one.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::shutdown::Shutdown;

/// Quiet time after the last source change before the build runs.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Folder names under the watched folder that hold what builds and tools write, not sources.
const NOT_SOURCES: &[&str] = &["target", "node_modules", "__pycache__"];

/// A build command and the folder it builds from.
#[derive(Debug, Clone)]
pub struct Build {
    /// The command, run by `sh -c`.
    pub command: String,
    /// The folder it runs in and whose files are watched.
    pub dir: PathBuf,
    /// Where the build writes the plugins, when that is a folder of its own: what changes there
    /// is output, never a source.
    pub output: Option<PathBuf>,
}

impl Build {
    /// The build `command` of the project in `dir` whose plugins go to `plugins`.
    pub fn new(command: String, dir: &Path, plugins: &Path) -> anyhow::Result<Self> {
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        // The build may create the plugins folder: absolute, if not there yet.
        let output = std::fs::canonicalize(plugins)
            .or_else(|_| std::path::absolute(plugins))
            .ok()
            .filter(|plugins| *plugins != dir);
        Ok(Self {
            command,
            dir,
            output,
        })
    }

    /// Whether a change to `path` is a change to a source of this build.
    fn is_source(&self, path: &Path) -> bool {
        !self.output.as_ref().is_some_and(|o| path.starts_with(o)) && is_source(&self.dir, path)
    }
}

/// How one build ended.
#[derive(Debug)]
pub struct Built {
    pub ok: bool,
    pub took: Duration,
    /// What it printed (stdout then stderr), for a failure.
    pub output: String,
    /// Its exit status, as the shell gave it.
    pub status: String,
}

impl Build {
    /// Runs the build once and prints how it went.
    pub async fn run(&self) -> anyhow::Result<Built> {
        let started = Instant::now();
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run the build command {:?}", self.command))?;
        let built = Built {
            ok: output.status.success(),
            took: started.elapsed(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            status: output.status.to_string(),
        };
        if built.ok {
            println!(
                "natsplug dev: built in {:.1} s ({})",
                built.took.as_secs_f64(),
                self.command
            );
        } else {
            println!(
                "natsplug dev: build failed ({}) in {:.1} s ({}); the last good version keeps serving",
                built.status,
                built.took.as_secs_f64(),
                self.command
            );
            for line in built.output.lines() {
                println!("  | {line}");
            }
        }
        Ok(built)
    }
}

/// Whether a change to `path` (under `dir`) is a change to a source.
pub fn is_source(dir: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(dir) else {
        return false;
    };
    let mut components = relative.components().peekable();
    while let Some(component) = components.next() {
        let Component::Normal(name) = component else {
            return false;
        };
        let name = name.to_string_lossy();
        if name.starts_with('.') || NOT_SOURCES.contains(&name.as_ref()) {
            return false;
        }
        if components.peek().is_none() {
            return !(name.ends_with(".wasm") || name.ends_with(".tmp") || name.ends_with('~'));
        }
    }
    false
}

/// Watches the build's folder until shutdown, running the build after each quiet period that
/// followed a source change; `after` runs after each good build. Changes made while a build
/// runs start one more build after it.
pub fn watch<F, Fut>(
    build: Build,
    shutdown: Shutdown,
    after: F,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (events, mut changes) = mpsc::unbounded_channel();
    let filter = build.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // A change to a source, not a read of one: every build opens its sources, and an open
        // counted as a change started the next build after each one, for ever.
        let sources = match event {
            Ok(event) => {
                !matches!(event.kind, notify::EventKind::Access(_))
                    && event.paths.iter().any(|p| filter.is_source(p))
            }
            Err(_) => false,
        };
        if sources {
            // The receiver is gone only when the loop stops.
            let _ = events.send(());
        }
    })
    .context("cannot create a file watcher")?;
    // The folder itself, and each of its source folders with what is under them: not
    // `node_modules/`, `.venv/` or `target/`, whose thousands of folders would each cost an
    // inotify watch. (A source folder made later at the top is not watched until a restart.)
    let cannot = |path: &Path| format!("cannot watch {}", path.display());
    watcher
        .watch(&build.dir, RecursiveMode::NonRecursive)
        .with_context(|| cannot(&build.dir))?;
    let entries = std::fs::read_dir(&build.dir)
        .with_context(|| format!("cannot read {}", build.dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && build.is_source(&path) {
            watcher
                .watch(&path, RecursiveMode::Recursive)
                .with_context(|| cannot(&path))?;
        }
    }
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                change = changes.recv() => if change.is_none() { return },
                _ = shutdown.stopping() => return,
            }
            loop {
                tokio::select! {
                    _ = changes.recv() => continue,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    _ = shutdown.stopping() => return,
                }
            }
            let built = tokio::select! {
                built = build.run() => built,
                _ = shutdown.stopping() => return,
            };
            match built {
                Ok(built) if built.ok => after().await,
                Ok(_) => {}
                Err(e) => println!("natsplug dev: {e:#}"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_what_a_build_reads_not_what_it_writes() {
        let dir = Path::new("/p");
        for source in [
            "/p/app.py",
            "/p/src/lib.rs",
            "/p/natsplug-sdk/natsplug/__init__.py",
            "/p/up.toml",
            "/p/Cargo.toml",
        ] {
            assert!(is_source(dir, Path::new(source)), "{source}");
        }
        for not_source in [
            "/p/up.wasm",
            "/p/.entry.js",
            "/p/.venv/lib/x.py",
            "/p/.git/index",
            "/p/target/wasm32-wasip2/release/up.wasm",
            "/p/node_modules/x/index.js",
            "/p/natsplug-sdk/natsplug/__pycache__/x.pyc",
            "/p/.up.wasm.tmp",
            "/p/app.py~",
            "/p",
            "/elsewhere/app.py",
        ] {
            assert!(!is_source(dir, Path::new(not_source)), "{not_source}");
        }
    }
}
