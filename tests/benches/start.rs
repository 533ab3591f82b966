//! Host start cost: loading every Rust plugin of the plugins folder (compile + checks; the
//! Python and JavaScript components, `-py` and `-js`, are left out: a cold compile of one takes
//! seconds and would be the whole figure) with no compile cache, with an empty cache (compile and store) and with a warm cache (a restart).
//! Prints a table with the median of 5 runs and the warm/cold ratio.
//!
//! `cargo bench -p natsplug-tests --bench start`

use std::time::{Duration, Instant};

use natsplug::runtime::{Runtime, RuntimeConfig};

fn load_all(config: RuntimeConfig) -> (Duration, usize) {
    let started = Instant::now();
    let runtime = Runtime::new(config).unwrap();
    let files: Vec<_> = natsplug::plugins::wasm_files(&natsplug_tests::plugins_dir())
        .unwrap()
        .into_iter()
        .filter(|f| {
            let stem = natsplug::runtime::plugin_name(f);
            !stem.ends_with("-py") && !stem.ends_with("-js")
        })
        .collect();
    for file in &files {
        runtime.load_file(file, None).unwrap();
    }
    (started.elapsed(), files.len())
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and the test harness probe
    }
    const RUNS: usize = 5;
    let mut plugins = 0;
    let mut off = Vec::new();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..RUNS {
        let (t, n) = load_all(RuntimeConfig::default());
        off.push(t);
        plugins = n;
        let dir = tempfile::tempdir().unwrap();
        let config = RuntimeConfig {
            cache_dir: Some(dir.path().to_owned()),
            ..RuntimeConfig::default()
        };
        cold.push(load_all(config.clone()).0);
        warm.push(load_all(config).0);
    }
    let (off, cold, warm) = (median(off), median(cold), median(warm));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("start: load {plugins} plugins (median of {RUNS})");
    println!("| cache | time | vs no cache |");
    println!("|---|---|---|");
    println!("| off (compile) | {:.1} ms | 1.00x |", ms(off));
    println!(
        "| empty (compile + store) | {:.1} ms | {:.2}x |",
        ms(cold),
        ms(cold) / ms(off)
    );
    println!(
        "| warm (restart) | {:.1} ms | {:.2}x ({:.1}x faster) |",
        ms(warm),
        ms(warm) / ms(off),
        ms(off) / ms(warm)
    );
}
