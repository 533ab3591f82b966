//! natsplug outside its checkout: the release tarball (scripts/package.sh) unpacked into an
//! empty prefix and put first on PATH, run from a folder elsewhere. `natsplug new` writes a Rust,
//! a Python, a JavaScript, a Go and a C project there that hold no path of this checkout (grepped),
//! and each project's own test builds it with its own build command and calls the plugin
//! through `natsplug call` from the prefix.

use std::path::{Path, PathBuf};
use std::process::Command;

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Every file under `dir` that names `needle`.
fn files_naming(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_naming(&path, needle));
        } else if String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(needle) {
            found.push(path);
        }
    }
    found
}

#[test]
fn the_tarball_makes_projects_in_each_language_that_build_and_pass_their_own_tests() {
    let root = checkout();
    let out = Command::new("bash")
        .arg(root.join("scripts/package.sh"))
        .env("NATSPLUG_PACKAGE_BIN", natsplug_tests::natsplug_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();

    let place = tempfile::tempdir().unwrap();
    let prefix = place.path().join("prefix");
    std::fs::create_dir(&prefix).unwrap();
    let status = Command::new("tar")
        .args(["-xzf", &tarball, "--strip-components=1", "-C"])
        .arg(&prefix)
        .status()
        .unwrap();
    assert!(status.success());
    for file in [
        "bin/natsplug",
        "README.md",
        "share/natsplug/wit/natsplug.wit",
        "share/natsplug/sdk/rust/Cargo.toml",
        "share/natsplug/sdk/python/pyproject.toml",
        "share/natsplug/sdk/js/package.json",
        "share/natsplug/sdk/go/go.mod",
        "share/natsplug/sdk/c/natsplug.h",
        "share/natsplug/sdk/c/bindings/plugin_component_type.o",
    ] {
        assert!(
            prefix.join(file).is_file(),
            "{file} missing from the tarball"
        );
    }
    // PATH: the prefix first, and nothing of this checkout (its target/debug has a natsplug).
    let inherited = std::env::var("PATH").unwrap_or_default();
    let path = std::iter::once(prefix.join("bin").to_str().unwrap())
        .chain(
            inherited
                .split(':')
                .filter(|p| !p.starts_with(root.to_str().unwrap())),
        )
        .collect::<Vec<_>>()
        .join(":");
    let projects = place.path().join("projects");
    std::fs::create_dir(&projects).unwrap();
    let natsplug = |args: &[&str]| {
        Command::new("natsplug")
            .args(args)
            .current_dir(&projects)
            .env("PATH", &path)
            .env_remove("NATSPLUG_BIN")
            .output()
            .unwrap()
    };
    let wit = natsplug(&["wit"]);
    assert!(String::from_utf8_lossy(&wit.stdout).contains("package natsplug:plugin"));
    // A bad name is refused with a clear message, and nothing is created.
    let bad = natsplug(&["new", "Bad Name"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a plugin name"));
    assert!(!projects.join("Bad Name").exists());

    let go = std::env::var("GO").unwrap_or_else(|_| "go".to_owned());
    let langs = [
        (
            "rust",
            "shouty",
            vec!["cargo", "test", "--quiet"],
            "1 passed",
        ),
        (
            "python",
            "py-shout",
            vec!["python3", "-m", "unittest"],
            "OK",
        ),
        ("js", "js-shout", vec!["node", "--test"], "# pass 1"),
        // scripts/setup.sh's Go (GO), as a user's would be on PATH; `-v` names each test.
        (
            "go",
            "go-shout",
            vec![go.as_str(), "test", "-v"],
            "--- PASS: TestCallInTheRealRuntime",
        ),
        // scripts/setup.sh's clang (WASI_CC), as a user's `clang` would be.
        ("c", "c-shout", vec!["make", "check"], "check: ok"),
    ];
    for (lang, name, _, _) in &langs {
        let created = natsplug(&["new", name, "--lang", lang]);
        assert!(
            String::from_utf8_lossy(&created.stdout).starts_with(&format!("created ./{name}")),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let naming = files_naming(&projects.join(name), root.to_str().unwrap());
        assert!(
            naming.is_empty(),
            "{lang}: the checkout is named in {naming:?}"
        );
    }
    // The tests at once: each is mostly one single-threaded build.
    std::thread::scope(|scope| {
        let runs: Vec<_> = langs
            .iter()
            .map(|(lang, name, test, passed)| {
                let (dir, path, root) = (projects.join(name), &path, &root);
                scope.spawn(move || {
                    let mut command = Command::new(test[0]);
                    command
                        .args(&test[1..])
                        .current_dir(&dir)
                        .env("PATH", path)
                        .env_remove("NATSPLUG_BIN")
                        .env_remove("RUSTC_WORKSPACE_WRAPPER")
                        .env_remove("CLIPPY_ARGS")
                        .env_remove("CARGO_ENCODED_RUSTFLAGS");
                    if *lang == "rust" {
                        // Reuse one build of the SDK's dependencies across runs.
                        command.env("CARGO_TARGET_DIR", root.join("target/scaffold"));
                    }
                    let output = command.output().expect("the project's test");
                    let all = format!(
                        "{}\n{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    );
                    assert!(output.status.success(), "{lang}: {all}");
                    assert!(all.contains(passed), "{lang}: {all}");
                })
            })
            .collect();
        for run in runs {
            run.join().unwrap();
        }
    });
}
