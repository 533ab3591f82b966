//! The plugin author's loop without NATS: `natsplug validate` checks that a file is a component
//! of our world and that its manifest parses; `natsplug call` runs the handler once in the real
//! sandbox and reports what the host would do with the answer.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::capability::Services;
use crate::manifest::Manifest;
use crate::message::{Headers, Message, Output};
use crate::runtime::{HandlerError, Hooks, LoadError, Outcome, Plugin, Runtime};

/// A plugin's files, read once within the host's bounds: what `natsplug validate` checks and
/// `natsplug push` stores are the same bytes, even if the files change meanwhile.
#[derive(Debug)]
pub struct Files {
    /// The plugin name, from the file name (`NAME.wasm`).
    pub name: String,
    /// The component or module.
    pub wasm: Vec<u8>,
    /// The manifest's path and text: `manifest`, else the one beside the file, if there is one.
    pub manifest: Option<(PathBuf, String)>,
}

impl Files {
    /// Reads `path` within `runtime.max_plugin_bytes` and the manifest (`manifest`, else the
    /// one beside the file) within [`Bound::MANIFEST`](crate::bounded::Bound::MANIFEST). A
    /// manifest named by `manifest` must be there.
    pub fn read(path: &Path, manifest: Option<&Path>) -> Result<Self, LoadError> {
        let max = crate::config::RuntimeSection::default().max_plugin_bytes;
        let wasm =
            crate::bounded::read(path, crate::bounded::Bound::plugin(max)).map_err(|source| {
                LoadError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let manifest = match manifest {
            Some(named) => Some((named.to_owned(), Manifest::read_text(named)?)),
            None => Manifest::read_beside(path)?,
        };
        Ok(Self {
            name: crate::runtime::plugin_name(path),
            wasm,
            manifest,
        })
    }

    /// The manifest's text, if there is one.
    pub fn manifest_text(&self) -> Option<&str> {
        self.manifest.as_ref().map(|(_, text)| text.as_str())
    }

    /// The version `natsplug list` would show for these files: see
    /// [`crate::plugins::version_of`].
    pub fn version(&self) -> String {
        crate::plugins::version_of(&self.wasm, self.manifest_text())
    }
}

/// Loads a plugin file the way the host would: the manifest from `manifest`, else the one
/// beside the file, else the defaults. Compiled components come from the host's default compile
/// cache, so the second `natsplug call` of a large (Python, JavaScript) plugin starts at once.
pub fn load(path: &Path, manifest: Option<&Path>) -> Result<(Runtime, Plugin), LoadError> {
    load_with(path, manifest, Services::default())
}

/// [`load`], with capabilities that reach `services` (`natsplug call --server`).
pub fn load_with(
    path: &Path,
    manifest: Option<&Path>,
    services: Services,
) -> Result<(Runtime, Plugin), LoadError> {
    load_files(&Files::read(path, manifest)?, services)
}

/// Loads plugin files already read ([`Files::read`]) the way the host would.
pub fn load_files(files: &Files, services: Services) -> Result<(Runtime, Plugin), LoadError> {
    let config = crate::config::RuntimeSection::default().runtime_config();
    let runtime = Runtime::new(config)
        .map_err(|e| LoadError::NotAComponent {
            plugin: files.name.clone(),
            reason: format!("{e:#}"),
        })?
        .with_services(services);
    let manifest = match &files.manifest {
        Some((path, text)) => Manifest::parse(text, path)?,
        None => Manifest::default(),
    };
    let plugin = runtime.load(&files.name, &files.wasm, manifest)?;
    Ok((runtime, plugin))
}

/// The services `natsplug call --server URL` gives a handler's `[request]` and `[kv]`: a
/// connection to `url`.
pub async fn services(url: &str) -> Result<Services, String> {
    let nats = crate::config::NatsConfig {
        servers: vec![url.to_owned()],
        ..Default::default()
    };
    crate::connection::connect(&nats, crate::connection::CAPABILITIES)
        .await
        .map(|client| Services::new(client, None))
        .map_err(|e| format!("cannot connect to {url}: {e:#}"))
}

/// What `natsplug validate --server URL` checks on the server: that the host could serve the
/// plugin there. One line per check, an error for each that fails.
pub async fn check_server(plugin: &Plugin, url: &str) -> Vec<Result<String, String>> {
    let nats = crate::config::NatsConfig {
        servers: vec![url.to_owned()],
        ..Default::default()
    };
    let client = match crate::connection::connect(&nats, "validate").await {
        Ok(client) => client,
        Err(e) => return vec![Err(format!("cannot connect to {url}: {e:#}"))],
    };
    let js = async_nats::jetstream::new(client);
    let manifest = plugin.manifest();
    let mut checks = Vec::new();
    if let Some(subscribe) = &manifest.subscribe
        && let Some(name) = &subscribe.stream
    {
        match js.get_stream(name).await {
            Err(e) => checks.push(Err(format!("stream {name:?}: {e}"))),
            Ok(stream) => {
                checks.push(Ok(format!("stream {name:?} exists")));
                let durable = subscribe.durable.as_deref().unwrap_or(plugin.name());
                if subscribe.bind {
                    checks.push(match stream.consumer_info(durable).await {
                        Ok(info) => Ok(format!(
                            "bound consumer {durable:?}: ack_wait {:?}, max_deliver {}",
                            info.config.ack_wait, info.config.max_deliver
                        )),
                        Err(e) => Err(format!("bound consumer {durable:?}: {e}")),
                    });
                }
            }
        }
    }
    for (bucket, grant) in &manifest.kv.buckets {
        checks.push(match (js.get_key_value(bucket).await, grant.create()) {
            (Ok(_), _) => Ok(format!("kv bucket {bucket:?} exists")),
            (Err(_), Some(_)) => Ok(format!(
                "kv bucket {bucket:?} does not exist; the host creates it at load"
            )),
            (Err(e), None) => Err(format!("kv bucket {bucket:?}: {e}")),
        });
    }
    let dead = manifest.publish.dead_letter_subject(plugin.name());
    checks.push(
        match crate::delivery::settle::ensure_stored(&js, &dead, None).await {
            Ok(stream) => Ok(format!(
                "dead letters on {dead:?} are stored in stream {stream:?}"
            )),
            Err(e) => Err(format!("{e:#}")),
        },
    );
    checks
}

/// One line of `natsplug call`'s output.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Report<'a> {
    /// One output of a successful call.
    Output(&'a Output),
    /// The handler asked for a retry.
    Retry {
        /// Why.
        reason: &'a str,
        /// The guest's delay in ms, if any.
        delay_ms: Option<u128>,
    },
    /// The handler rejected the message.
    Reject {
        /// Why.
        reason: &'a str,
    },
    /// The call ended on a limit or a trap.
    Error {
        /// The kind (fuel, deadline, memory, panic, trap, forbidden-subject...).
        kind: &'a str,
        /// The full message.
        message: String,
    },
}

/// Exit code of `natsplug call` for each answer.
pub fn exit_code(result: &Result<Outcome, HandlerError>) -> u8 {
    match result {
        Ok(Outcome::Success(_)) => 0,
        Ok(Outcome::Retry { .. }) => 2,
        Ok(Outcome::Reject { .. }) => 3,
        Err(_) => 4,
    }
}

/// The JSON lines `natsplug call` prints for an answer.
pub fn report_lines(result: &Result<Outcome, HandlerError>) -> Vec<String> {
    let lines: Vec<Report<'_>> = match result {
        Ok(Outcome::Success(outputs)) => outputs.iter().map(Report::Output).collect(),
        Ok(Outcome::Retry { reason, delay }) => vec![Report::Retry {
            reason,
            delay_ms: delay.map(|d| d.as_millis()),
        }],
        Ok(Outcome::Reject { reason }) => vec![Report::Reject { reason }],
        Err(e) => vec![Report::Error {
            kind: e.kind(),
            message: e.to_string(),
        }],
    };
    lines
        .iter()
        .map(|line| {
            serde_json::to_string(line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        })
        .collect()
}

/// Builds the message `natsplug call` sends.
pub fn message(
    subject: &str,
    payload: &[u8],
    reply: Option<&str>,
    headers: &[(String, String)],
) -> Message {
    let mut message = Message::new(subject, payload.to_vec());
    message.reply = reply.map(str::to_owned);
    message.headers = Headers(headers.to_vec());
    message
}

/// Runs the handler once, offline.
pub async fn call(plugin: &Plugin, message: &Message) -> Result<Outcome, HandlerError> {
    plugin.handle(message, Hooks::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_files_are_read_once_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("up.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();

        let alone = Files::read(&wasm, None).unwrap();
        assert_eq!(alone.name, "up");
        assert_eq!(alone.wasm, b"\0asm");
        assert!(alone.manifest.is_none());
        assert_eq!(alone.version(), crate::plugins::version_of(b"\0asm", None));

        std::fs::write(dir.path().join("up.toml"), "[limits]\n").unwrap();
        let beside = Files::read(&wasm, None).unwrap();
        assert_eq!(
            beside.manifest,
            Some((dir.path().join("up.toml"), "[limits]\n".to_owned()))
        );

        // A manifest named on the command line must be there; one past the bound is refused
        // from its size, whether named or beside.
        let missing = dir.path().join("other.toml");
        let e = Files::read(&wasm, Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("other.toml"), "{e}");
        std::fs::write(
            dir.path().join("up.toml"),
            vec![b'#'; crate::bounded::MAX_MANIFEST_BYTES as usize + 1],
        )
        .unwrap();
        let e = Files::read(&wasm, None).unwrap_err().to_string();
        assert!(e.contains("up.toml") && e.contains("1048576"), "{e}");
    }
}
