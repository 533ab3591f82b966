//! The `natsplug` command: parses the CLI, sets up logging and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natsplug::offline;

/// Run WebAssembly message handlers on NATS JetStream.
#[derive(Parser)]
#[command(name = "natsplug", version, about)]
struct Cli {
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "NATSPLUG_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that a file is a natsplug plugin component and that its manifest parses.
    Validate {
        /// The plugin component (NAME.wasm; NAME.toml beside it is its manifest).
        plugin: PathBuf,
        /// A manifest file to use instead of the one beside the plugin.
        #[arg(long)]
        manifest: Option<PathBuf>,
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
    },
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Validate { plugin, manifest } => match offline::load(&plugin, manifest.as_deref()) {
            Ok((_, p)) => {
                println!(
                    "ok: {} is a natsplug:plugin/plugin component (plugin {:?}, version {})",
                    plugin.display(),
                    p.name(),
                    p.version()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Call { plugin, subject, payload, reply, headers, manifest } => {
            let (_runtime, plugin) = match offline::load(&plugin, manifest.as_deref()) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let message = offline::message(&subject, payload.as_bytes(), reply.as_deref(), &headers);
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
