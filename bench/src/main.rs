//! `natsplug-bench`: what natsplug costs and what it saves, measured side by side on one
//! machine and one nats-server.
//!
//! The runner owns:
//! - [`server`]: its own nats-server (loopback, temporary store, removed at the end);
//! - [`job`]: the job every contender runs (streams, durable consumer, inputs, read-back);
//! - [`contenders`]: one module per contender, [`contenders::native`] (a tuned async-nats
//!   consumer, the floor), [`contenders::natsplug`] (`natsplug run` with the Rust `uppercase`
//!   plugin) and [`contenders::faststream`] (FastStream in Python);
//! - [`process`]: a contender's child process and its CPU time and peak RSS from `/proc`;
//! - the figures: [`throughput`] (msgs/s, CPU, RSS, then end-to-end latency at a steady rate),
//!   [`request_reply`] (core NATS request-reply latency) and [`hot_reload`] (the throughput dip
//!   while the plugin is replaced under load);
//! - [`report`]: the table printed, `bench/results.md`, and [`chart`]: `bench/results.png`.
//!
//! The hidden subcommands `native-worker` and `native-responder` are the native contender's
//! processes; the runner starts them.

mod chart;
mod contenders;
mod hot_reload;
mod job;
mod process;
mod report;
mod request_reply;
mod server;
mod stats;
mod throughput;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use contenders::faststream::{self, FastStream};
use contenders::native::Native;
use contenders::natsplug::{Guest, Instances, Natsplug};
use contenders::{Contender, Kind};
use report::{Report, Row, Sweep};
use throughput::Shape;

/// Benchmark natsplug against a tuned native async-nats consumer and FastStream.
#[derive(Parser)]
#[command(name = "natsplug-bench")]
struct Cli {
    /// Messages per throughput run (per contender, payload size and run).
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Runs per contender and payload size (the table shows the median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Payload sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,4096")]
    sizes: Vec<usize>,
    /// natsplug `subscribe.concurrency` values to try (the best is kept).
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    concurrency: Vec<usize>,
    /// FastStream `PullSub` batch sizes to try with a per-message handler (the best is kept,
    /// also against a batch handler of the largest).
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    faststream_batch: Vec<usize>,
    /// Messages of the latency phase of every run.
    #[arg(long, default_value_t = 2_000)]
    latency_messages: u64,
    /// Their steady rate, per second.
    #[arg(long, default_value_t = 1_000.0)]
    latency_rate: f64,
    /// Sequential requests of the request-reply figure.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// `max_invocations` of the extra "warm pool" natsplug row (0: no such row).
    #[arg(long, default_value_t = 1_000)]
    pool: u32,
    /// Messages per run of the Python and JavaScript table (their fresh-instance rows do a few
    /// hundred a second).
    #[arg(long, default_value_t = 10_000)]
    language_messages: u64,
    /// `subscribe.concurrency` of the Python and JavaScript table.
    #[arg(long, default_value_t = 64)]
    language_concurrency: usize,
    /// `[batch] max` of its batch rows: a quarter of the concurrency, so that while one batch
    /// runs, others are pulled, published and acked (one batch of all 64 stalls that pipeline).
    #[arg(long, default_value_t = 16)]
    language_batch: usize,
    /// Parts to leave out (e.g. `--skip faststream,hot-reload` while profiling natsplug).
    #[arg(long, value_delimiter = ',', value_enum)]
    skip: Vec<Part>,
    /// Another natsplug binary to measure as an extra row, as `LABEL=PATH` (repeatable), e.g. a
    /// build of main beside this branch's.
    #[arg(long = "natsplug-variant", value_parser = parse_variant)]
    natsplug_variants: Vec<(String, PathBuf)>,
    /// Where results.md and results.png go. Default: the crate's folder (bench/).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    process: Option<Process>,
}

/// A part of the benchmark that `--skip` can leave out.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The native rows.
    Native,
    /// The FastStream row and its settings sweep.
    Faststream,
    /// The settings sweeps (then the first `--concurrency` / `--faststream-batch` is used).
    Sweep,
    /// The request-reply figure.
    RequestReply,
    /// The hot-reload figure.
    HotReload,
    /// The Python and JavaScript table.
    Languages,
}

/// The native contender's processes (started by the runner).
#[derive(Subcommand)]
enum Process {
    /// Runs the native job until SIGTERM.
    #[command(hide = true)]
    NativeWorker {
        #[arg(long)]
        server: String,
        #[arg(long)]
        batch: usize,
        #[arg(long)]
        window: usize,
        #[arg(long)]
        double_ack: bool,
    },
    /// Answers requests natively until SIGTERM.
    #[command(hide = true)]
    NativeResponder {
        #[arg(long)]
        server: String,
    },
}

fn parse_variant(s: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = s.split_once('=').ok_or("expected LABEL=PATH")?;
    let path = PathBuf::from(path);
    if !path.exists() {
        return Err(format!("{path:?} does not exist"));
    }
    Ok((label.to_owned(), path))
}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.process {
        Some(Process::NativeWorker {
            ref server,
            batch,
            window,
            double_ack,
        }) => {
            let settings = Native {
                double_ack,
                batch,
                window,
            };
            tokio_runtime()?.block_on(contenders::native::worker(server, settings))
        }
        Some(Process::NativeResponder { ref server }) => {
            tokio_runtime()?.block_on(contenders::native::responder(server))
        }
        None => tokio_runtime()?.block_on(bench(&cli)),
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn bench(cli: &Cli) -> anyhow::Result<()> {
    anyhow::ensure!(
        cli.messages >= 100 && cli.runs >= 1,
        "--messages >= 100, --runs >= 1"
    );
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench"));
    let skip = |part| cli.skip.contains(&part);
    contenders::natsplug::set_variants(cli.natsplug_variants.clone());
    let faststream = !skip(Part::Faststream) && contenders::faststream::available();
    let server = server::Server::start()?;
    let client = async_nats::connect(server.url()).await?;
    let url = server.url();
    let pid = server.pid();
    let mut report = Report::new(cli.messages, cli.runs, server.version(), faststream);
    for (label, path) in &cli.natsplug_variants {
        report.note(format!(
            "`natsplug {label}` rows run {}; `natsplug` rows run {}.",
            path.display(),
            contenders::natsplug::binary()?.display()
        ));
    }
    if !skip(Part::Faststream) && !faststream {
        report.note(format!(
            "FastStream left out: {:?} is missing (scripts/bench.sh installs it).",
            contenders::faststream::venv()
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("natsplug-bench-")
        .tempdir()?;
    let mut n = 0;
    let mut next_dir = || -> anyhow::Result<PathBuf> {
        n += 1;
        let dir = scratch.path().join(format!("run-{n}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    let first_size = cli.sizes.first().copied().unwrap_or(64);
    let sweep_shape = Shape {
        size: first_size,
        messages: cli.messages.min(20_000),
        latency_messages: 0,
        latency_rate: cli.latency_rate,
    };

    // Settings sweeps: one run each, the first payload size; the best goes on.
    let mut best_natsplug = (
        Natsplug::rust(cli.concurrency.first().copied().unwrap_or(128)),
        0.0,
    );
    for &concurrency in cli.concurrency.iter().filter(|_| !skip(Part::Sweep)) {
        let settings = Natsplug::rust(concurrency);
        let r = run_one(
            &client,
            pid,
            &url,
            Contender::Natsplug(settings),
            sweep_shape,
            &next_dir()?,
        )
        .await?;
        eprintln!("sweep: {} {:.0} msgs/s", settings.label(), r.msgs_per_s);
        report.sweeps.push(Sweep::new(
            Contender::Natsplug(settings).label(),
            sweep_shape,
            &r,
        ));
        if r.msgs_per_s > best_natsplug.1 {
            best_natsplug = (settings, r.msgs_per_s);
        }
    }
    let mut contenders = Vec::new();
    if !skip(Part::Native) {
        contenders.push(Contender::Native(Native::TUNED));
        contenders.push(Contender::Native(Native {
            double_ack: true,
            ..Native::TUNED
        }));
    }
    contenders.push(Contender::Natsplug(best_natsplug.0));
    if cli.pool > 0 {
        contenders.push(Contender::Natsplug(Natsplug {
            instances: Instances::Pool(cli.pool),
            ..best_natsplug.0
        }));
    }
    for variant in 0..cli.natsplug_variants.len() {
        contenders.push(Contender::Natsplug(Natsplug {
            variant: Some(variant),
            ..best_natsplug.0
        }));
    }
    let workers = faststream::per_core();
    // The FastStream settings of the Python table: the sweep's best.
    let mut faststream_best = FastStream {
        batch: cli.faststream_batch.first().copied().unwrap_or(64),
        batch_handler: false,
        workers,
    };
    let mut faststream_batch = None;
    if faststream && skip(Part::Sweep) {
        contenders.push(Contender::FastStream(faststream_best));
    } else if faststream {
        let fs_shape = Shape {
            messages: cli.messages.min(10_000),
            ..sweep_shape
        };
        let mut options: Vec<FastStream> = cli
            .faststream_batch
            .iter()
            .map(|&batch| FastStream {
                batch,
                batch_handler: false,
                workers,
            })
            .collect();
        if let Some(&largest) = cli.faststream_batch.iter().max() {
            options.push(FastStream {
                batch: largest,
                batch_handler: true,
                workers,
            });
        }
        // The best per-message handler (the same handler as the others), and the batch handler
        // (FastStream's fastest shape here, at a cost in latency) as a row of its own.
        let mut best: Option<(FastStream, f64)> = None;
        let mut batch_handler = None;
        for settings in options {
            match run_one(
                &client,
                pid,
                &url,
                Contender::FastStream(settings),
                fs_shape,
                &next_dir()?,
            )
            .await
            {
                Ok(r) => {
                    eprintln!("sweep: {} {:.0} msgs/s", settings.label(), r.msgs_per_s);
                    report
                        .sweeps
                        .push(Sweep::new(settings.label(), fs_shape, &r));
                    if settings.batch_handler {
                        batch_handler = Some(settings);
                    } else if best.is_none_or(|b| r.msgs_per_s > b.1) {
                        best = Some((settings, r.msgs_per_s));
                    }
                }
                Err(e) => {
                    eprintln!("sweep: {} failed: {e:#}", settings.label());
                    report.note(format!("{} failed: {e:#}", settings.label()));
                }
            }
        }
        if let Some((settings, _)) = best {
            contenders.push(Contender::FastStream(settings));
            // The single process beside it: what one FastStream process does on its GIL.
            contenders.push(Contender::FastStream(FastStream {
                workers: 1,
                ..settings
            }));
            faststream_best = settings;
        }
        if let Some(settings) = batch_handler {
            contenders.push(Contender::FastStream(settings));
            faststream_batch = Some(settings);
        }
    }

    // The table: every contender on every size, interleaved run by run.
    for &size in &cli.sizes {
        let shape = Shape {
            size,
            messages: cli.messages,
            latency_messages: cli.latency_messages,
            latency_rate: cli.latency_rate,
        };
        let table = format!("{size} B");
        let rows = run_rows(
            (&client, pid, &url),
            &contenders,
            shape,
            cli.runs,
            &table,
            &mut report,
            &mut next_dir,
        )
        .await?;
        report.rows.extend(rows);
    }

    // The Python and JavaScript table: the handler FastStream's users would move, at the
    // plugins' shipped manifests, fresh, and batched, against FastStream in the same sitting.
    if !skip(Part::Languages) {
        let shape = Shape {
            size: first_size,
            messages: cli.language_messages,
            latency_messages: 0,
            latency_rate: cli.latency_rate,
        };
        let mut table = Vec::new();
        for guest in [Guest::Python, Guest::JavaScript] {
            let shipped = Natsplug {
                guest,
                instances: Instances::Shipped,
                ..Natsplug::rust(cli.language_concurrency)
            };
            table.push(Contender::Natsplug(shipped));
            table.push(Contender::Natsplug(Natsplug {
                instances: Instances::Fresh,
                ..shipped
            }));
            table.push(Contender::Natsplug(Natsplug {
                batch: Some(cli.language_batch),
                ..shipped
            }));
        }
        table.push(Contender::Natsplug(Natsplug {
            instances: Instances::Shipped,
            ..Natsplug::rust(cli.language_concurrency)
        }));
        if faststream {
            table.push(Contender::FastStream(faststream_best));
            table.push(Contender::FastStream(FastStream {
                workers: 1,
                ..faststream_best
            }));
            if let Some(batch) = faststream_batch {
                table.push(Contender::FastStream(batch));
            }
        }
        let rows = run_rows(
            (&client, pid, &url),
            &table,
            shape,
            cli.runs,
            "languages",
            &mut report,
            &mut next_dir,
        )
        .await?;
        report.language_rows = rows;
        report.language_messages = cli.language_messages;
    }

    // Request-reply through a core subject.
    let mut kinds = vec![Kind::Native, Kind::Natsplug];
    if faststream {
        kinds.push(Kind::FastStream);
    }
    for kind in kinds.into_iter().filter(|_| !skip(Part::RequestReply)) {
        match request_reply::run(&client, kind, &url, cli.requests, &next_dir()?).await {
            Ok(times) => {
                eprintln!(
                    "request-reply {kind:?}: p50 {:.3} ms, p99 {:.3} ms",
                    stats::percentile(&times, 50.0),
                    stats::percentile(&times, 99.0)
                );
                report.request_reply.push((kind, times));
            }
            Err(e) => report.note(format!("request-reply {kind:?}: {e:#}")),
        }
    }

    // The hot-reload dip.
    let reload_shape = Shape {
        size: first_size,
        messages: cli.messages.max(20_000),
        latency_messages: 0,
        latency_rate: cli.latency_rate,
    };
    let reload = if skip(Part::HotReload) {
        None
    } else {
        Some(
            hot_reload::run(
                &client,
                pid,
                &url,
                best_natsplug.0,
                reload_shape,
                &next_dir()?,
            )
            .await,
        )
    };
    match reload {
        None => {}
        Some(Ok(r)) => {
            eprintln!(
                "hot reload: longest gap {:.1} ms ({} before, {} after)",
                r.longest_gap_ms, r.before, r.after
            );
            report.reload = Some(r);
        }
        Some(Err(e)) => report.note(format!("hot reload: {e:#}")),
    }

    let markdown = report.markdown();
    println!("{markdown}");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.md"), &markdown)?;
    chart::draw(&report, &out.join("results.png"))?;
    eprintln!(
        "wrote {} and {}",
        out.join("results.md").display(),
        out.join("results.png").display()
    );
    Ok(())
}

/// Every contender on `shape`, interleaved run by run (run 1 of each, then run 2...), so a
/// change in the machine's load falls on all of them; a failed run is noted in the report under
/// `table`, and its row goes on with the runs that succeeded.
async fn run_rows(
    (client, server_pid, url): (&async_nats::Client, u32, &str),
    contenders: &[Contender],
    shape: Shape,
    runs: usize,
    table: &str,
    report: &mut Report,
    next_dir: &mut impl FnMut() -> anyhow::Result<PathBuf>,
) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = contenders
        .iter()
        .map(|c| Row::new(*c, shape.size))
        .collect();
    for run in 1..=runs {
        for row in &mut rows {
            let label = row.contender.label();
            match run_one(client, server_pid, url, row.contender, shape, &next_dir()?).await {
                Ok(r) => {
                    eprintln!(
                        "{table} run {run}: {label}: {:.0} msgs/s, p50 {:.2} ms, {:.3} CPU s/10k, server {:.3}, peak RSS {:.0} MiB",
                        r.msgs_per_s,
                        stats::percentile(&r.latencies_ms, 50.0),
                        r.cpu_per_10k,
                        r.server_cpu_per_10k,
                        r.peak_rss as f64 / f64::from(1 << 20)
                    );
                    row.runs.push(r);
                }
                Err(e) => {
                    eprintln!("{table} run {run}: {label} failed: {e:#}");
                    report.note(format!("{label} ({table}), run {run}: {e:#}"));
                }
            }
        }
    }
    Ok(rows)
}

/// One run of one contender.
async fn run_one(
    client: &async_nats::Client,
    server_pid: u32,
    url: &str,
    contender: Contender,
    shape: Shape,
    dir: &Path,
) -> anyhow::Result<throughput::RunResult> {
    let command = contender.job_command(url, dir)?;
    throughput::run(
        client,
        server_pid,
        command,
        &contender.label(),
        shape,
        dir,
        None,
    )
    .await
}
