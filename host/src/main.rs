//! The `natsplug` command: parses the CLI, sets up logging and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use natsplug::config::HostConfig;
use natsplug::offline;
use natsplug::shutdown::{self, Shutdown};

/// Run WebAssembly message handlers on NATS JetStream.
#[derive(Parser)]
#[command(name = "natsplug", version, about)]
struct Cli {
    /// Log filter (tracing env-filter syntax). Default: `info,async_nats=warn` (the host's own
    /// connection events say what async-nats would); for `natsplug dev`,
    /// `warn,natsplug::plugins=info` (the demo's story on stdout; warnings and plugin loads on
    /// stderr).
    #[arg(long, env = "NATSPLUG_LOG", global = true)]
    log: Option<String>,
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(
        long,
        env = "NATSPLUG_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Options of the commands that run a host.
#[derive(Args)]
struct HostArgs {
    /// The host configuration file (natsplug.toml). Default: built-in defaults.
    #[arg(long, env = "NATSPLUG_CONFIG")]
    config: Option<PathBuf>,
    /// The plugins folder (overrides host.plugins).
    #[arg(long, env = "NATSPLUG_PLUGINS")]
    plugins: Option<PathBuf>,
    /// NATS server URLs, comma-separated (overrides nats.servers).
    #[arg(long, env = "NATSPLUG_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// Graceful shutdown timeout, e.g. "20s" (overrides host.graceful_timeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    graceful_timeout: Option<std::time::Duration>,
    /// Serve /metrics, /healthz and /readyz on this address (overrides admin.listen).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
}

impl HostArgs {
    fn load(&self) -> anyhow::Result<HostConfig> {
        let mut config = HostConfig::load(self.config.as_deref())?;
        if let Some(plugins) = &self.plugins {
            config.host.plugins = plugins.clone();
        }
        if !self.server.is_empty() {
            config.nats.servers = self.server.clone();
        }
        if let Some(timeout) = self.graceful_timeout {
            config.host.graceful_timeout = timeout;
        }
        if let Some(addr) = self.admin {
            config.admin.listen = Some(addr);
        }
        Ok(config)
    }
}

/// The plugins bucket and how to reach it.
#[derive(Args)]
struct BucketArgs {
    #[command(flatten)]
    host: HostArgs,
    /// The Object Store bucket (overrides host.bucket; default "natsplug-plugins").
    #[arg(long)]
    bucket: Option<String>,
}

impl BucketArgs {
    async fn open(&self) -> anyhow::Result<async_nats::jetstream::object_store::ObjectStore> {
        let config = self.host.load()?;
        let bucket = self
            .bucket
            .clone()
            .or(config.host.bucket.clone())
            .unwrap_or_else(|| "natsplug-plugins".into());
        let client = natsplug::connection::connect(&config.nats, "push").await?;
        natsplug::source::open(&async_nats::jetstream::new(client), &bucket, true).await
    }
}

/// Options of the control commands.
#[derive(Args)]
struct ControlArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Ask only this host (its id), instead of every host on the NATS system.
    #[arg(long = "host-id")]
    host_id: Option<String>,
    /// How long to wait for the hosts' answers.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Print one JSON line per host instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List the plugins of every host (version, loaded-at, counters, load errors).
    List {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Reload one plugin, or all, from the plugins folder on every host.
    Reload {
        /// The plugin; all when absent.
        plugin: Option<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Store a plugin version in the plugins bucket (checked first: it must load) and make it
    /// the one every host with `host.bucket` serves. Prints the version.
    Push {
        /// The plugin component (NAME.wasm; NAME.toml beside it is its manifest).
        plugin: PathBuf,
        /// A manifest file to use instead of the one beside the plugin.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Serve it on this host only (a canary), not on every host.
        #[arg(long = "host-id")]
        host_id: Option<String>,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Make a stored version of a plugin the one every host serves (removing the hosts' pins),
    /// or pin it on one host.
    Rollout {
        /// The plugin's name.
        name: String,
        /// The version (as `push` and `natsplug list` print it).
        version: String,
        /// Serve it on this host only (a canary).
        #[arg(long = "host-id")]
        host_id: Option<String>,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Make the version stored before the current one current again on every host, and print
    /// it; with --host-id, remove that host's pin instead.
    Rollback {
        /// The plugin's name.
        name: String,
        /// Remove this host's pin: it serves the fleet's version again.
        #[arg(long = "host-id")]
        host_id: Option<String>,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Create a plugin project: a handler, a manifest and a test through the real runtime.
    New {
        /// The plugin's name (lowercase, digits, '-', '_').
        name: String,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: natsplug::scaffold::Lang,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Write a guest SDK as a package of its own into DIR: the `natsplug-sdk` crate, Python
    /// package (`pip install DIR`) or npm package (`npm install DIR`).
    Sdk {
        /// Which SDK.
        #[arg(value_enum)]
        lang: natsplug::sdk::Package,
        /// Where to write it (created; nothing in it is overwritten).
        dir: PathBuf,
    },
    /// Print the WIT contract plugins are built against, or write it (with its deps) into DIR.
    Wit {
        /// Write `natsplug.wit` and `deps/` here instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The status of every host.
    Status {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Run the host: serve every plugin of the plugins folder until SIGINT/SIGTERM.
    Run {
        #[command(flatten)]
        host: HostArgs,
    },
    /// The demo: start a local nats-server (when none is configured), create the demo streams,
    /// serve the plugins, publish sample messages and print the outputs. Runs until Ctrl-C.
    Dev {
        #[command(flatten)]
        host: HostArgs,
        /// Exit once the samples' outputs were seen, failing if they are not within this time.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "build")]
        once: Option<std::time::Duration>,
        /// A plugin author's loop: run this build command (sh -c) now and after every source
        /// change in --watch, and hot-reload what it writes into --plugins. No samples.
        #[arg(long)]
        build: Option<String>,
        /// The folder whose sources trigger a rebuild, and where --build runs. Default: the
        /// current folder.
        #[arg(long, requires = "build")]
        watch: Option<PathBuf>,
    },
    /// Check that a file is a natsplug plugin component and that its manifest parses; with
    /// --server, also that the server has what the host needs to serve it (its stream, a bound
    /// consumer, a stream storing its dead letters).
    Validate {
        /// The plugin component (NAME.wasm; NAME.toml beside it is its manifest).
        plugin: PathBuf,
        /// A manifest file to use instead of the one beside the plugin.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// A NATS server URL to check the plugin against.
        #[arg(long)]
        server: Option<String>,
    },
    /// Make a core module built against the `plugin` world (C with wit-bindgen's bindings) into
    /// a component, with WASI's preview-1 adapter (the host does the same when it loads one).
    Componentize {
        /// The core module (built with wit-bindgen's component-type section).
        module: PathBuf,
        /// Where to write the component.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run a plugin's handler once, offline, and print each output as a JSON line.
    /// Exit code: 0 success, 2 retry, 3 reject, 4 limit hit or trap, 1 unusable plugin.
    Call {
        /// The plugin component.
        plugin: PathBuf,
        /// Subject of the message.
        #[arg(long)]
        subject: String,
        /// Payload text.
        #[arg(long, default_value = "")]
        payload: String,
        /// Reply subject (makes the message a request).
        #[arg(long)]
        reply: Option<String>,
        /// A header, NAME=VALUE; repeat for more.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// A manifest file to use instead of the one beside the plugin.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// A NATS server URL for the handler's `[request]` and `[kv]` capabilities (without,
        /// those calls fail; `[http]` works either way).
        #[arg(long)]
        server: Option<String>,
    },
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            cli.log.as_deref().unwrap_or(match cli.command {
                Command::Dev { .. } => "warn,natsplug::plugins=info",
                _ => "info,async_nats=warn",
            }),
        ))
        .with_writer(std::io::stderr)
        // Colours for a terminal only: not escape codes in a log file or a CI log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn control<T>(
    control: &ControlArgs,
    verb: &str,
    body: &impl serde::Serialize,
    show: impl Fn(&T) -> String,
) -> anyhow::Result<()>
where
    T: for<'de> serde::Deserialize<'de> + serde::Serialize,
{
    let config = control.host.load()?;
    let client = natsplug::connection::connect(&config.nats, "cli").await?;
    let answers = natsplug::control::call::<T>(
        &client,
        verb,
        body,
        control.host_id.as_deref(),
        control.timeout,
    )
    .await?;
    anyhow::ensure!(
        !answers.is_empty(),
        "no natsplug host answered within {:?}",
        control.timeout
    );
    let mut failed = false;
    for a in &answers {
        match (&a.answer, control.json) {
            (Ok(answer), true) => println!(
                "{}",
                serde_json::json!({ "host": a.host, "answer": answer })
            ),
            (Err(e), true) => println!("{}", serde_json::json!({ "host": a.host, "error": e })),
            (Ok(answer), false) => println!("host {}\n{}", a.host, show(answer)),
            (Err(e), false) => println!("host {}\n  error: {e}", a.host),
        }
        failed |= a.answer.is_err();
    }
    anyhow::ensure!(!failed, "some hosts did not answer");
    Ok(())
}

/// `text` with its control characters but newlines escaped: names and errors come from hosts
/// and from whoever wrote their plugins folder or bucket, and a CR or an escape sequence must
/// not forge a row.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn show_plugins(plugins: &natsplug::control::ListAnswer) -> String {
    let mut out = format!(
        "  {:<16} {:<17} {:<21} {:>9} {:>9} {:>7} {:>5} {:>6}  {}",
        "PLUGIN",
        "VERSION",
        "LOADED",
        "IN-FLIGHT",
        "PROCESSED",
        "RETRIED",
        "DEAD",
        "REDELV",
        "ERROR"
    );
    for p in plugins {
        out.push_str(&format!(
            "\n  {:<16} {:<17} {:<21} {:>9} {:>9} {:>7} {:>5} {:>6}  {}",
            printable(&p.name),
            p.version.as_deref().map_or("-".into(), printable),
            p.loaded_at
                .as_deref()
                .map(|t| t.get(..19).unwrap_or(t))
                .unwrap_or("-"),
            p.stats.in_flight,
            p.stats.processed,
            p.stats.retried,
            p.stats.dead_lettered,
            p.stats.redelivered,
            // A parser's error keeps its layout: the first line in the column, the rest
            // (source line, caret, expected fields) indented below the row.
            printable(p.error.as_deref().unwrap_or("")).replace('\n', "\n      "),
        ));
    }
    out
}

fn show_reload(results: &natsplug::control::ReloadAnswer) -> String {
    results
        .iter()
        .map(|r| {
            format!(
                "  {:<16} {:<10} {:<17} {}",
                r.plugin,
                serde_json::to_value(r.change)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                r.version.as_deref().unwrap_or("-"),
                r.error.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn show_status(s: &natsplug::control::HostStatus) -> String {
    format!(
        "  started {} (up {} s), connected: {}, plugins: {} ({} failed), in flight: {}, processed: {}, dead-lettered: {}",
        s.started_at,
        s.uptime_secs,
        s.connected,
        s.plugins,
        s.failed,
        s.in_flight,
        s.processed,
        s.dead_lettered
    )
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::List { control: c } => report(control(&c, "list", &(), show_plugins).await),
        Command::Reload { plugin, control: c } => {
            let body = natsplug::control::ReloadRequest { plugin };
            report(control(&c, "reload", &body, show_reload).await)
        }
        Command::Status { control: c } => report(control(&c, "status", &(), show_status).await),
        Command::Push {
            plugin,
            manifest,
            host_id,
            bucket,
        } => report(
            async {
                // Nothing is stored unless it loads here as it would on a host, and what is
                // stored is the bytes that loaded.
                let files = offline::Files::read(&plugin, manifest.as_deref())?;
                let (_, loaded) = offline::load_files(&files, Default::default())?;
                let store = bucket.open().await?;
                let version = natsplug::source::push(
                    &store,
                    loaded.name(),
                    &files.wasm,
                    files.manifest_text(),
                    host_id.as_deref(),
                )
                .await?;
                println!("{} {version}", loaded.name());
                Ok(())
            }
            .await,
        ),
        Command::Rollout {
            name,
            version,
            host_id,
            bucket,
        } => report(
            async {
                let store = bucket.open().await?;
                natsplug::source::rollout(&store, &name, &version, host_id.as_deref()).await?;
                println!("{name} {version}");
                Ok(())
            }
            .await,
        ),
        Command::Rollback {
            name,
            host_id,
            bucket,
        } => report(
            async {
                let store = bucket.open().await?;
                match host_id {
                    Some(host) => {
                        natsplug::source::unpin(&store, &name, &host).await?;
                        println!("{name} unpinned on {host}");
                    }
                    None => {
                        let version = natsplug::source::rollback(&store, &name).await?;
                        println!("{name} {version}");
                    }
                }
                Ok(())
            }
            .await,
        ),
        Command::New { name, lang, dir } => {
            report(natsplug::scaffold::new(&dir, &name, lang).map(|path| {
                use natsplug::scaffold::Lang;
                // The tests call `natsplug` on PATH (or NATSPLUG_BIN).
                let file = name.replace('-', "_");
                let (build, test) = match lang {
                    Lang::Rust => (
                        format!(
                            "cargo build --release --target wasm32-wasip2 && cp target/wasm32-wasip2/release/{file}.wasm {name}.wasm"
                        ),
                        "cargo test",
                    ),
                    Lang::Python => ("./build.sh".to_owned(), "python3 -m unittest"),
                    Lang::Js => ("npm install && npm run build".to_owned(), "npm test"),
                    Lang::Go => ("./build.sh".to_owned(), "go test"),
                    Lang::C => ("make".to_owned(), "make check"),
                };
                println!("created {}", path.display());
                println!("build: {build}");
                println!("test:  {test}");
                // The project folder is a plugins folder once built: NAME.wasm beside NAME.toml.
                println!("dev:   natsplug dev --plugins . --build {build:?}");
            }))
        }
        Command::Sdk { lang, dir } => report(
            natsplug::sdk::write(&dir, lang.files()).map(|()| println!("wrote {}", dir.display())),
        ),
        Command::Wit { dir: None } => {
            print!("{}", natsplug::sdk::main_wit());
            ExitCode::SUCCESS
        }
        Command::Wit { dir: Some(dir) } => report(
            natsplug::sdk::write(&dir, natsplug::sdk::wit())
                .map(|()| println!("wrote {}", dir.display())),
        ),
        Command::Run { host } => report(
            async {
                let config = host.load()?;
                let shutdown = Shutdown::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    shutdown::signal().await;
                    signal.stop();
                });
                natsplug::host::run(config, shutdown).await
            }
            .await,
        ),
        Command::Dev {
            host,
            once,
            build,
            watch,
        } => report(
            async {
                let mut config = host.load()?;
                if host.plugins.is_none() && config.host.plugins == std::path::Path::new("plugins")
                {
                    config.host.plugins = PathBuf::from("target/plugins/dist");
                }
                let build = build
                    .map(|command| {
                        let dir = watch.unwrap_or_else(|| PathBuf::from("."));
                        natsplug::watch::Build::new(command, &dir, &config.host.plugins)
                    })
                    .transpose()?;
                natsplug::dev::run(config, Shutdown::new(), once, build).await
            }
            .await,
        ),
        Command::Componentize { module, output } => report(
            std::fs::read(&module)
                .with_context(|| format!("cannot read {}", module.display()))
                .and_then(|wasm| natsplug::runtime::componentize::componentize(&wasm))
                .and_then(|component| {
                    std::fs::write(&output, component)
                        .with_context(|| format!("cannot write {}", output.display()))
                })
                .map(|()| println!("wrote {}", output.display())),
        ),
        Command::Validate {
            plugin,
            manifest,
            server,
        } => match offline::Files::read(&plugin, manifest.as_deref())
            .and_then(|files| Ok((offline::load_files(&files, Default::default())?, files)))
        {
            Ok(((_, p), files)) => {
                let version = files.version();
                println!(
                    "ok: {} is {} (plugin {:?}, version {version})",
                    plugin.display(),
                    p.kind(),
                    p.name(),
                );
                let Some(server) = server else {
                    return ExitCode::SUCCESS;
                };
                let mut ok = true;
                for check in offline::check_server(&p, &server).await {
                    match check {
                        Ok(line) => println!("ok: {line}"),
                        Err(line) => {
                            ok = false;
                            eprintln!("error: {line}");
                        }
                    }
                }
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Call {
            plugin,
            subject,
            payload,
            reply,
            headers,
            manifest,
            server,
        } => {
            let services = match &server {
                None => Default::default(),
                Some(url) => match offline::services(url).await {
                    Ok(services) => services,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let loaded = offline::load_with(&plugin, manifest.as_deref(), services);
            let (_runtime, plugin) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = plugin.open_capabilities().await {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            let message =
                offline::message(&subject, payload.as_bytes(), reply.as_deref(), &headers);
            let result = offline::call(&plugin, &message).await;
            for line in offline::report_lines(&result) {
                println!("{line}");
            }
            if let Err(e) = &result {
                eprintln!("error: {e}");
            }
            ExitCode::from(offline::exit_code(&result))
        }
    }
}
