//! The results: one row per contender and payload size (medians over the runs), the ratios to
//! native and to FastStream, the targets, request-reply, hot reload and the settings tried,
//! written as Markdown (printed, and saved as `bench/results.md`).

use std::fmt::Write as _;

use crate::contenders::natsplug::{Guest, Instances};
use crate::contenders::{Contender, Kind};
use crate::hot_reload::Reload;
use crate::stats::{median, percentile};
use crate::throughput::{RunResult, Shape};

/// natsplug's throughput target against native, a fresh instance per message.
pub const TARGET_VS_NATIVE: f64 = 0.6;
/// natsplug's throughput target against native with instance reuse opted in.
pub const TARGET_VS_NATIVE_REUSE: f64 = 0.85;
/// natsplug's throughput target against FastStream (one process per core), Rust.
pub const TARGET_VS_FASTSTREAM: f64 = 8.0;
/// The same for Python at its shipped manifest, for JavaScript, and for a Python batch
/// handler against FastStream's batch handler.
pub const TARGET_PYTHON_VS_FASTSTREAM: f64 = 5.0;
pub const TARGET_JS_VS_FASTSTREAM: f64 = 3.0;
pub const TARGET_PYTHON_BATCH_VS_FASTSTREAM_BATCH: f64 = 3.0;
/// Peak RSS of the Python plugin at concurrency 64 against FastStream's.
pub const TARGET_PYTHON_RSS_VS_FASTSTREAM: f64 = 2.5;
/// The longest allowed gap in outputs while the plugin is hot-reloaded, ms.
pub const TARGET_RELOAD_GAP_MS: f64 = 50.0;

/// One contender on one payload size.
pub struct Row {
    /// Who.
    pub contender: Contender,
    /// Payload bytes.
    pub size: usize,
    /// Every run that succeeded.
    pub runs: Vec<RunResult>,
}

impl Row {
    /// No runs yet.
    pub fn new(contender: Contender, size: usize) -> Self {
        Self {
            contender,
            size,
            runs: Vec::new(),
        }
    }

    /// Median msgs/s.
    pub fn msgs_per_s(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.msgs_per_s).collect::<Vec<_>>())
    }

    /// Median CPU seconds per 10k messages.
    pub fn cpu_per_10k(&self) -> f64 {
        median(&self.runs.iter().map(|r| r.cpu_per_10k).collect::<Vec<_>>())
    }

    /// Median nats-server CPU seconds per 10k messages.
    pub fn server_cpu_per_10k(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.server_cpu_per_10k)
                .collect::<Vec<_>>(),
        )
    }

    /// Largest peak RSS of the runs, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.runs.iter().map(|r| r.peak_rss).max().unwrap_or(0) as f64 / (1024.0 * 1024.0)
    }

    /// Median of the runs' longest output gap, ms.
    pub fn longest_gap_ms(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.longest_gap_ms)
                .collect::<Vec<_>>(),
        )
    }

    /// Latency percentile over every run's latency phase, ms.
    pub fn latency(&self, p: f64) -> f64 {
        let all: Vec<f64> = self
            .runs
            .iter()
            .flat_map(|r| r.latencies_ms.iter().copied())
            .collect();
        percentile(&all, p)
    }
}

/// One settings trial.
pub struct Sweep {
    label: String,
    size: usize,
    messages: u64,
    msgs_per_s: f64,
    cpu_per_10k: f64,
}

impl Sweep {
    /// From a run.
    pub fn new(label: String, shape: Shape, run: &RunResult) -> Self {
        Self {
            label,
            size: shape.size,
            messages: shape.messages,
            msgs_per_s: run.msgs_per_s,
            cpu_per_10k: run.cpu_per_10k,
        }
    }
}

/// Everything measured.
pub struct Report {
    messages: u64,
    runs: usize,
    server: String,
    faststream: bool,
    load_at_start: String,
    /// The table.
    pub rows: Vec<Row>,
    /// Settings tried.
    pub sweeps: Vec<Sweep>,
    /// Request-reply round trips, ms.
    pub request_reply: Vec<(Kind, Vec<f64>)>,
    /// The hot-reload run.
    pub reload: Option<Reload>,
    /// The Python and JavaScript table, and its messages per run.
    pub language_rows: Vec<Row>,
    pub language_messages: u64,
    notes: Vec<String>,
}

/// "64 B", "4 KiB".
pub fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu})")
}

impl Report {
    /// An empty report.
    pub fn new(messages: u64, runs: usize, server: &str, faststream: bool) -> Self {
        Self {
            messages,
            runs,
            server: server.to_owned(),
            faststream,
            load_at_start: load_average(),
            rows: Vec::new(),
            sweeps: Vec::new(),
            request_reply: Vec::new(),
            reload: None,
            language_rows: Vec::new(),
            language_messages: 0,
            notes: Vec::new(),
        }
    }

    /// Adds a note (a failure, a contender left out).
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The row of a kind and size, if it has runs.
    pub fn row(&self, kind: Kind, size: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.contender.kind() == kind && r.size == size && !r.runs.is_empty())
    }

    /// The payload sizes, in order.
    pub fn sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = Vec::new();
        for row in &self.rows {
            if !sizes.contains(&row.size) {
                sizes.push(row.size);
            }
        }
        sizes
    }

    fn ratio(&self, row: &Row, kind: Kind) -> Option<f64> {
        self.row(kind, row.size)
            .map(|base| row.msgs_per_s() / base.msgs_per_s())
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# natsplug benchmark results\n");
        let _ = writeln!(
            md,
            "Measured by `natsplug-bench` (see bench/README.md) on {}, {}, one loopback server for \
             every contender. {} messages per run, median of {} run(s). Load average (1, 5, 15 min) \
             at the start: {}; at the end: {} (the machine is shared: anything above ~0.5 at the \
             start was someone else's work).\n",
            machine(),
            self.server,
            self.messages,
            self.runs,
            self.load_at_start,
            load_average(),
        );
        let _ = writeln!(
            md,
            "## Job: pull, upper-case, publish with Nats-Msg-Id and awaited ack, ack\n"
        );
        let _ = writeln!(
            md,
            "| contender | payload | msgs/s | x native | x FastStream | p50 latency | p99 latency | CPU s / 10k msgs | server CPU s / 10k msgs | peak RSS | longest output gap |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in self.rows.iter().filter(|r| !r.runs.is_empty()) {
            let ratio = |kind| {
                self.ratio(row, kind)
                    .map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {:.2} ms | {:.2} ms | {:.3} | {:.3} | {:.0} MiB | {:.1} ms |",
                row.contender.label(),
                size_label(row.size),
                row.msgs_per_s(),
                ratio(Kind::Native),
                ratio(Kind::FastStream),
                row.latency(50.0),
                row.latency(99.0),
                row.cpu_per_10k(),
                row.server_cpu_per_10k(),
                row.peak_rss_mib(),
                row.longest_gap_ms(),
            );
        }
        let _ = writeln!(
            md,
            "\nmsgs/s: a backlog of {} stored inputs drained after the paused consumer is resumed. \
             Latency: input stored to output stored (server timestamps) at a steady offered load, \
             not at saturation. CPU: utime+stime of the contender process over the throughput phase; server CPU: the same of nats-server (the work a contender makes the server do). \
             Peak RSS: VmHWM of the contender process.\n",
            self.messages
        );

        let _ = writeln!(md, "## Targets\n");
        let _ = writeln!(md, "| target | payload | measured | met |");
        let _ = writeln!(md, "|---|---|---:|---|");
        for size in self.sizes() {
            for row in self.rows.iter().filter(|r| {
                r.contender.kind() == Kind::Natsplug && r.size == size && !r.runs.is_empty()
            }) {
                let who = row.contender.label();
                let target = match row.contender {
                    Contender::Natsplug(n) if n.instances != Instances::Fresh => {
                        TARGET_VS_NATIVE_REUSE
                    }
                    _ => TARGET_VS_NATIVE,
                };
                if let Some(r) = self.ratio(row, Kind::Native) {
                    let _ = writeln!(
                        md,
                        "| {who} >= {target}x native msgs/s | {} | {r:.2}x | {} |",
                        size_label(size),
                        yes(r >= target)
                    );
                }
                match self.ratio(row, Kind::FastStream) {
                    Some(r) => {
                        let _ = writeln!(
                            md,
                            "| {who} >= {TARGET_VS_FASTSTREAM}x FastStream msgs/s | {} | {r:.2}x | {} |",
                            size_label(size),
                            yes(r >= TARGET_VS_FASTSTREAM)
                        );
                    }
                    None if !self.faststream => {
                        let _ = writeln!(
                            md,
                            "| {who} >= {TARGET_VS_FASTSTREAM}x FastStream msgs/s | {} | not measured | - |",
                            size_label(size)
                        );
                    }
                    None => {}
                }
                if let Some(r) = self.ratio(row, Kind::FastStreamBatch) {
                    let _ = writeln!(
                        md,
                        "| {who} >= {TARGET_VS_FASTSTREAM}x FastStream with a batch handler | {} | {r:.2}x | {} |",
                        size_label(size),
                        yes(r >= TARGET_VS_FASTSTREAM)
                    );
                }
            }
        }
        if let Some(reload) = &self.reload {
            let _ = writeln!(
                md,
                "| hot reload: longest output gap < {TARGET_RELOAD_GAP_MS} ms | {} | {:.1} ms | {} |",
                size_label(self.sizes().first().copied().unwrap_or(64)),
                reload.longest_gap_ms,
                yes(reload.longest_gap_ms < TARGET_RELOAD_GAP_MS)
            );
        }

        self.languages_markdown(&mut md);

        if !self.request_reply.is_empty() {
            let _ = writeln!(md, "\n## Request-reply through a core NATS subject\n");
            let _ = writeln!(md, "| responder | p50 | p99 |");
            let _ = writeln!(md, "|---|---:|---:|");
            for (kind, times) in &self.request_reply {
                let name = match kind {
                    Kind::Native | Kind::NativeDoubleAck => "native (async-nats subscriber)",
                    Kind::Natsplug => "natsplug (`slow` plugin, payload 0, `Output::reply()`)",
                    Kind::FastStream | Kind::FastStreamOneProcess | Kind::FastStreamBatch => {
                        "FastStream (core subscriber returning the reply)"
                    }
                };
                let _ = writeln!(
                    md,
                    "| {name} | {:.3} ms | {:.3} ms |",
                    percentile(times, 50.0),
                    percentile(times, 99.0)
                );
            }
            let _ = writeln!(
                md,
                "\n{} sequential requests after 200 of warm-up, timed by the requester.",
                self.request_reply.first().map_or(0, |r| r.1.len())
            );
        }

        if let Some(r) = &self.reload {
            let baseline = self
                .row(Kind::Natsplug, self.sizes().first().copied().unwrap_or(64))
                .map(Row::longest_gap_ms);
            let _ = writeln!(md, "\n## Hot reload under load\n");
            let _ = writeln!(
                md,
                "`uppercase` replaced after a quarter of {} outputs: a new component (new bytes, \
                 compiled by the host, never seen by its cache), then its manifest (`marker = \"before\"` \
                 -> `\"after\"`). {} outputs by the old version, {} by the new one; the new version's \
                 first output came {:.0} ms after the replacement (the host waits for the folder to be \
                 quiet for 300 ms, then compiles). Longest gap between consecutive stored outputs: **{:.1} ms** over the run, \
                 {:.1} ms within 1 s of the switch; {} in runs without a reload. Throughput of the run: \
                 {:.0} msgs/s.",
                r.messages,
                r.before,
                r.after,
                r.switch_after_ms,
                r.longest_gap_ms,
                r.gap_at_switch_ms,
                baseline.map_or_else(|| "-".into(), |b| format!("{b:.1} ms (median)")),
                r.msgs_per_s
            );
        }

        if !self.sweeps.is_empty() {
            let _ = writeln!(
                md,
                "\n## Settings tried (one run each; the best is used above)\n"
            );
            let _ = writeln!(
                md,
                "| contender | payload | messages | msgs/s | CPU s / 10k msgs |"
            );
            let _ = writeln!(md, "|---|---|---:|---:|---:|");
            for s in &self.sweeps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} | {:.3} |",
                    s.label,
                    size_label(s.size),
                    s.messages,
                    s.msgs_per_s,
                    s.cpu_per_10k
                );
            }
        }

        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {}", note.replace('\n', " "));
            }
        }
        md
    }
}

impl Report {
    /// The Python and JavaScript table and its targets.
    fn languages_markdown(&self, md: &mut String) {
        let rows: Vec<&Row> = self.language_rows.iter().collect();
        if rows.is_empty() {
            return;
        }
        let base = |kind: Kind| {
            rows.iter()
                .find(|r| r.contender.kind() == kind && !r.runs.is_empty())
                .copied()
        };
        let faststream = base(Kind::FastStream);
        let _ = writeln!(
            md,
            "\n## Python and JavaScript handlers against FastStream\n\n\
             The same job, {} messages per run, median of {}; every x FastStream is against \
             FastStream run as one process per core (its `--workers`).\n",
            self.language_messages, self.runs
        );
        let _ = writeln!(
            md,
            "| contender | msgs/s | x FastStream | CPU s / 10k msgs | peak RSS | runs (msgs/s) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---|");
        for row in &rows {
            let ratio = faststream.filter(|_| !row.runs.is_empty()).map_or_else(
                || "-".into(),
                |b| format!("{:.2}x", row.msgs_per_s() / b.msgs_per_s()),
            );
            let runs: Vec<String> = row
                .runs
                .iter()
                .map(|r| format!("{:.0}", r.msgs_per_s))
                .collect();
            if row.runs.is_empty() {
                let _ = writeln!(md, "| {} | failed | - | - | - | - |", row.contender.label());
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {:.0} | {ratio} | {:.3} | {:.0} MiB | {} |",
                row.contender.label(),
                row.msgs_per_s(),
                row.cpu_per_10k(),
                row.peak_rss_mib(),
                runs.join(", ")
            );
        }
        let _ = writeln!(md, "\n| target | measured | met |\n|---|---:|---|");
        let find = |guest: Guest, instances: Instances, batch: bool| {
            rows.iter().copied().find(|r| {
                matches!(r.contender, Contender::Natsplug(n)
                    if n.guest == guest && n.instances == instances && n.batch.is_some() == batch)
            })
        };
        let mut target = |what: String,
                          row: Option<&Row>,
                          against: Option<&Row>,
                          goal: f64,
                          measure: fn(&Row) -> f64,
                          higher: bool| {
            let measured = match (row, against) {
                (Some(r), Some(b)) if !r.runs.is_empty() && !b.runs.is_empty() => {
                    Some(measure(r) / measure(b))
                }
                _ => None,
            };
            let _ = match measured {
                Some(x) => writeln!(
                    md,
                    "| {what} | {x:.2}x | {} |",
                    yes(if higher { x >= goal } else { x <= goal })
                ),
                None => writeln!(md, "| {what} | not measured | **no** |"),
            };
        };
        let rate: fn(&Row) -> f64 = Row::msgs_per_s;
        let rss: fn(&Row) -> f64 = Row::peak_rss_mib;
        target(
            format!("Python, shipped manifest >= {TARGET_PYTHON_VS_FASTSTREAM}x FastStream"),
            find(Guest::Python, Instances::Shipped, false),
            faststream,
            TARGET_PYTHON_VS_FASTSTREAM,
            rate,
            true,
        );
        target(
            format!(
                "Python, batch handler >= {TARGET_PYTHON_BATCH_VS_FASTSTREAM_BATCH}x FastStream's batch handler"
            ),
            find(Guest::Python, Instances::Shipped, true),
            base(Kind::FastStreamBatch),
            TARGET_PYTHON_BATCH_VS_FASTSTREAM_BATCH,
            rate,
            true,
        );
        target(
            format!("JavaScript, shipped manifest >= {TARGET_JS_VS_FASTSTREAM}x FastStream"),
            find(Guest::JavaScript, Instances::Shipped, false),
            faststream,
            TARGET_JS_VS_FASTSTREAM,
            rate,
            true,
        );
        target(
            format!("Rust, shipped manifest >= {TARGET_VS_FASTSTREAM}x FastStream"),
            find(Guest::Rust, Instances::Shipped, false),
            faststream,
            TARGET_VS_FASTSTREAM,
            rate,
            true,
        );
        target(
            format!(
                "Python, shipped manifest, peak RSS <= {TARGET_PYTHON_RSS_VS_FASTSTREAM}x FastStream's"
            ),
            find(Guest::Python, Instances::Shipped, false),
            faststream,
            TARGET_PYTHON_RSS_VS_FASTSTREAM,
            rss,
            false,
        );
    }
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}
