//! Embeds what a plugin project needs into the `natsplug` binary: the WIT contract and the Rust,
//! Python, JavaScript, Go and C SDKs (see `src/sdk.rs`), so `natsplug new` works from a binary copied
//! anywhere. Writes `$OUT_DIR/embedded.rs`, a table of `include_bytes!` (which cargo tracks).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Which files of a folder are taken, by path inside it.
type Take = fn(&Path) -> bool;

/// (folder under guest-sdk/, name it is embedded under, which of its files are taken).
const TREES: &[(&str, &str, Take)] = &[
    ("", "rust", |p| {
        p.starts_with("src")
            || p.starts_with("wit")
            || p == Path::new("Cargo.toml")
            || p == Path::new("README.md")
    }),
    ("python", "python", |p| {
        p == Path::new("pyproject.toml")
            || p == Path::new("README.md")
            || (p.starts_with("natsplug") && p.extension().is_some_and(|e| e == "py"))
    }),
    ("js", "js", |p| {
        p.components().count() == 1
            && p.extension()
                .is_some_and(|e| e == "js" || e == "json" || e == "md")
    }),
    ("go", "go", |p| {
        let name = p.to_str().unwrap_or_default();
        p.components().count() == 1
            && (name == "go.mod"
                || name == "README.md"
                || (name.ends_with(".go") && !name.ends_with("_test.go")))
    }),
    // The C SDK with its wit-bindgen bindings (C sources, headers, the component-type object).
    ("c", "c", |p| {
        p == Path::new("README.md")
            || p.extension()
                .is_some_and(|e| e == "c" || e == "h" || e == "o")
    }),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let sdk = manifest_dir.join("../guest-sdk");
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    println!("cargo:rerun-if-changed={}", sdk.display());
    let mut table = String::from("&[\n");
    for (dir, name, take) in TREES {
        let root = sdk.join(dir);
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        files.retain(|p| take(p));
        files.sort();
        assert!(
            !files.is_empty(),
            "nothing to embed from {}",
            root.display()
        );
        for file in files {
            let embedded = Path::new(name).join(&file);
            writeln!(
                table,
                "    ({:?}, include_bytes!({:?})),",
                embedded.to_str().expect("UTF-8 path"),
                root.join(&file).to_str().expect("UTF-8 path"),
            )
            .unwrap();
        }
    }
    table.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("embedded.rs");
    std::fs::write(out, table).expect("cannot write embedded.rs");
}

/// Every file under `dir`, relative to `root`; skips build output and caches.
fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("readable folder").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(
            name,
            "target" | "node_modules" | "__pycache__" | "tests" | "test"
        ) || name.starts_with('.')
        {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, files);
        } else {
            files.push(path.strip_prefix(root).expect("under root").to_owned());
        }
    }
}
