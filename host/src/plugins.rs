//! The plugins folder: every `NAME.wasm` in it, with `NAME.toml` beside it as its manifest.
//! A plugin that fails to load is reported with its file and reason and skipped; the others
//! are served.

use std::path::{Path, PathBuf};

use crate::runtime::{LoadError, Plugin, Runtime};

/// The `*.wasm` files of a folder, sorted by name. Hidden files (a copy in progress) are skipped.
pub fn wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "wasm")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every plugin of `dir`; returns the loaded ones and the failures.
pub fn load_folder(
    runtime: &Runtime,
    dir: &Path,
) -> std::io::Result<(Vec<Plugin>, Vec<LoadError>)> {
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for path in wasm_files(dir)? {
        match runtime.load_file(&path, None) {
            Ok(plugin) => {
                tracing::info!(plugin = plugin.name(), version = plugin.version(), file = %path.display(), "plugin loaded");
                loaded.push(plugin);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "plugin not loaded");
                failed.push(e);
            }
        }
    }
    Ok((loaded, failed))
}
