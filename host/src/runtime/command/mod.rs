//! The command contract: how a plain WASI program (not a `plugin`-world component) is a
//! handler. The message goes in through the program's standard input and environment; its
//! outputs come back on standard output, one frame per line; its exit status is the outcome;
//! what it writes to standard error is its log. This module owns the contract's two pure
//! halves, the environment a message becomes and the outcome a finished program's exit status
//! and output frames become, so that every language (Go, C, Zig, anything with WASI) gets the
//! same rules and the same errors.
//!
//! The environment (nothing else of the host's is visible):
//! - `NATSPLUG_SUBJECT`: the subject; `NATSPLUG_REPLY`: the reply subject, when there is one.
//! - `NATSPLUG_HEADERS`: the headers as one JSON object, each name to its list of values
//!   (`{"trace":["1"]}`; `{}` when there are none). JSON, so any byte of a value arrives intact.
//! - For a JetStream delivery: `NATSPLUG_STREAM`, `NATSPLUG_CONSUMER`,
//!   `NATSPLUG_STREAM_SEQUENCE`, `NATSPLUG_CONSUMER_SEQUENCE`, `NATSPLUG_DELIVERED` (1 on the
//!   first delivery), `NATSPLUG_PENDING`, `NATSPLUG_TIMESTAMP_NS` (decimal integers).
//! - The manifest's `[config]`: each key as `NATSPLUG_CONFIG_KEY`, the key upper-cased and
//!   every character but ASCII letters and digits made `_` (`marker` is
//!   `NATSPLUG_CONFIG_MARKER`, `max-size` is `NATSPLUG_CONFIG_MAX_SIZE`); two keys with the same
//!   name fail the load.
//! - `sandbox.env`'s variables, which may not start with `NATSPLUG_`.
//!
//! Standard output: one JSON object per line, each an output (blank lines are skipped):
//! `{"subject": "out.x", "payload": "text", "headers": {"k": "v"}}`. A frame without `subject`
//! goes to the manifest's `[config] output`, or else answers the request (the message's reply
//! subject); with neither it is malformed. `payload` is UTF-8 text, or
//! `payload_base64` holds bytes (standard alphabet, padded); a header's value is a string or a
//! list of strings. Any other field, or a line that is not such an object, is a malformed frame:
//! the message is rejected with a reason naming the line.
//!
//! The exit status: 0 is success (the frames are the outputs), [`EXIT_RETRY`] (75, `EX_TEMPFAIL`
//! of sysexits.h) asks for another delivery after the manifest's backoff, anything else rejects
//! the message, with the last line the program wrote to standard error as the reason.

mod runner;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

pub(crate) use self::runner::{Program, RESERVED_ENV_PREFIX, Run, is_core_module, linker};
use super::Outcome;
use crate::message::{Headers, Message, Output};

/// The exit status that asks for another delivery: `EX_TEMPFAIL` of sysexits.h.
pub const EXIT_RETRY: i32 = 75;

/// The most of a reason taken from standard error.
const MAX_REASON: usize = 1024;

/// The environment `message` becomes, in a fixed order.
pub fn environment(message: &Message) -> Vec<(String, String)> {
    let mut headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in &message.headers.0 {
        headers.entry(name).or_default().push(value);
    }
    let mut env = vec![
        ("NATSPLUG_SUBJECT".to_owned(), message.subject.clone()),
        (
            "NATSPLUG_HEADERS".to_owned(),
            serde_json::to_string(&headers).unwrap_or_else(|_| "{}".to_owned()),
        ),
    ];
    if let Some(reply) = &message.reply {
        env.push(("NATSPLUG_REPLY".to_owned(), reply.clone()));
    }
    if let Some(d) = &message.delivery {
        env.extend([
            ("NATSPLUG_STREAM".to_owned(), d.stream.clone()),
            ("NATSPLUG_CONSUMER".to_owned(), d.consumer.clone()),
            (
                "NATSPLUG_STREAM_SEQUENCE".to_owned(),
                d.stream_sequence.to_string(),
            ),
            (
                "NATSPLUG_CONSUMER_SEQUENCE".to_owned(),
                d.consumer_sequence.to_string(),
            ),
            ("NATSPLUG_DELIVERED".to_owned(), d.delivered.to_string()),
            ("NATSPLUG_PENDING".to_owned(), d.pending.to_string()),
            (
                "NATSPLUG_TIMESTAMP_NS".to_owned(),
                d.timestamp_ns.to_string(),
            ),
        ]);
    }
    env
}

/// The environment name of `[config]` key `key`: `NATSPLUG_CONFIG_` and the key upper-cased,
/// every character but an ASCII letter or digit made `_`.
pub fn config_env_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("NATSPLUG_CONFIG_{name}")
}

/// One line of standard output.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    subject: Option<String>,
    payload: Option<String>,
    payload_base64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, HeaderValues>,
}

/// A header's value in a frame: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

/// What a finished program's exit status, standard output and standard error mean.
/// `default_subject` is the manifest's `[config] output`, for frames that name no subject.
/// The outputs still go through every check of the plugin's grant, as a component's do.
pub fn outcome(
    status: i32,
    stdout: &[u8],
    stderr: &[u8],
    default_subject: Option<&str>,
    has_reply: bool,
) -> Outcome {
    match status {
        0 => match outputs(stdout, default_subject, has_reply) {
            Ok(outputs) => Outcome::Success(outputs),
            Err(reason) => Outcome::Reject { reason },
        },
        EXIT_RETRY => Outcome::Retry {
            reason: last_line(stderr).unwrap_or_else(|| format!("exited with {EXIT_RETRY}")),
            delay: None,
        },
        other => Outcome::Reject {
            reason: last_line(stderr).unwrap_or_else(|| format!("exited with {other}")),
        },
    }
}

/// The outputs of standard output, or why a frame is malformed ("output line N: ..."). A
/// frame without a subject goes to `default_subject`, else to the reply when `has_reply`.
pub fn outputs(
    stdout: &[u8],
    default_subject: Option<&str>,
    has_reply: bool,
) -> Result<Vec<Output>, String> {
    let mut outputs = Vec::new();
    for (index, line) in stdout.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // A frame's text (an unknown field's name, say) is the guest's: cut to a reason's size.
        let malformed = |why: String| cut(&format!("output line {}: {why}", index + 1));
        let frame: Frame = serde_json::from_slice(line)
            .map_err(|e| malformed(format!("not an output frame: {e}")))?;
        let payload = match (frame.payload, frame.payload_base64) {
            (Some(text), None) => bytes::Bytes::from(text),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map(bytes::Bytes::from)
                .map_err(|e| malformed(format!("payload_base64 is not base64: {e}")))?,
            (None, None) => bytes::Bytes::new(),
            (Some(_), Some(_)) => {
                return Err(malformed(
                    "both payload and payload_base64: give one".to_owned(),
                ));
            }
        };
        let subject = match (frame.subject, default_subject) {
            (Some(subject), _) => Some(subject),
            (None, Some(default)) => Some(default.to_owned()),
            (None, None) if has_reply => None,
            (None, None) => {
                return Err(malformed(
                    "no subject, no [config] output and no reply subject to send it to".to_owned(),
                ));
            }
        };
        let mut headers = Headers::default();
        for (name, values) in frame.headers {
            match values {
                HeaderValues::One(value) => headers.append(name, value),
                HeaderValues::Many(values) => {
                    for value in values {
                        headers.append(name.clone(), value);
                    }
                }
            }
        }
        outputs.push(Output {
            subject,
            headers,
            payload,
        });
    }
    Ok(outputs)
}

/// The last non-blank line of `stderr`, cut to [`MAX_REASON`] bytes.
fn last_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(cut(line))
}

/// `text` cut to [`MAX_REASON`] bytes on a character boundary.
fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_key_becomes_an_environment_name() {
        assert_eq!(config_env_name("marker"), "NATSPLUG_CONFIG_MARKER");
        assert_eq!(
            config_env_name("max-size.v2"),
            "NATSPLUG_CONFIG_MAX_SIZE_V2"
        );
        assert_eq!(config_env_name("é=x"), "NATSPLUG_CONFIG___X");
    }
    use crate::message::Delivery;
    use proptest::prelude::*;

    fn output(subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> Output {
        Output {
            subject: Some(subject.to_owned()),
            headers: Headers(
                headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            payload: bytes::Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn a_message_becomes_the_documented_environment() {
        let mut message = Message::new("in.x", "payload");
        message.reply = Some("_INBOX.r".to_owned());
        message.headers.append("trace", "1");
        message.headers.append("trace", "2");
        message.headers.append("odd", "a\"b\u{0}c\r\n");
        let env = environment(&message);
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("NATSPLUG_SUBJECT"), Some("in.x"));
        assert_eq!(get("NATSPLUG_REPLY"), Some("_INBOX.r"));
        assert_eq!(
            get("NATSPLUG_HEADERS"),
            Some(r#"{"odd":["a\"b\u0000c\r\n"],"trace":["1","2"]}"#)
        );
        assert_eq!(get("NATSPLUG_DELIVERED"), None);
        // No value carries a NUL (the WASI environment is NUL-terminated strings).
        assert!(
            env.iter()
                .all(|(n, v)| !n.contains('\0') && !v.contains('\0'))
        );

        message.reply = None;
        message.headers = Headers::default();
        message.delivery = Some(Delivery {
            stream: "IN".to_owned(),
            consumer: "x".to_owned(),
            stream_sequence: 7,
            consumer_sequence: 3,
            delivered: 2,
            pending: 0,
            timestamp_ns: 1_700_000_000_000_000_000,
        });
        let env = environment(&message);
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "NATSPLUG_SUBJECT",
                "NATSPLUG_HEADERS",
                "NATSPLUG_STREAM",
                "NATSPLUG_CONSUMER",
                "NATSPLUG_STREAM_SEQUENCE",
                "NATSPLUG_CONSUMER_SEQUENCE",
                "NATSPLUG_DELIVERED",
                "NATSPLUG_PENDING",
                "NATSPLUG_TIMESTAMP_NS",
            ]
        );
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("NATSPLUG_HEADERS"), Some("{}"));
        assert_eq!(get("NATSPLUG_STREAM_SEQUENCE"), Some("7"));
        assert_eq!(get("NATSPLUG_DELIVERED"), Some("2"));
        assert_eq!(get("NATSPLUG_TIMESTAMP_NS"), Some("1700000000000000000"));
    }

    #[test]
    fn frames_become_outputs_in_order() {
        let stdout = concat!(
            r#"{"subject":"out.a","payload":"HELLO","headers":{"k":"v","m":["1","2"]}}"#,
            "\n\n",
            r#"{"payload_base64":"AP8="}"#,
            "\r\n",
            r#"{}"#,
            "\n",
        );
        assert_eq!(
            outcome(0, stdout.as_bytes(), b"", Some("out.default"), false),
            Outcome::Success(vec![
                output("out.a", &[("k", "v"), ("m", "1"), ("m", "2")], b"HELLO"),
                output("out.default", &[], &[0x00, 0xff]),
                output("out.default", &[], b""),
            ])
        );
        assert_eq!(outcome(0, b"", b"", None, false), Outcome::Success(vec![]));
        // Without a subject or a default, a frame answers the request when there is one.
        assert_eq!(
            outcome(0, br#"{"payload":"R"}"#, b"", None, true),
            Outcome::Success(vec![Output {
                subject: None,
                headers: Headers::default(),
                payload: bytes::Bytes::from_static(b"R"),
            }])
        );
    }

    #[test]
    fn a_malformed_frame_rejects_the_message_naming_its_line() {
        let reject = |stdout: &str, default: Option<&str>| match outcome(
            0,
            stdout.as_bytes(),
            b"",
            default,
            false,
        ) {
            Outcome::Reject { reason } => reason,
            other => panic!("{stdout:?}: not a reject: {other:?}"),
        };
        let ok = "{\"subject\":\"out.a\"}\n";
        assert!(
            reject(&format!("{ok}HELLO\n"), None)
                .starts_with("output line 2: not an output frame: expected value")
        );
        assert!(
            reject(
                &format!("{ok}{{\"subject\":\"out.a\",\"reply\":\"x\"}}\n"),
                None
            )
            .starts_with("output line 2: not an output frame: unknown field `reply`")
        );
        assert!(reject("[1,2]", None).starts_with("output line 1: not an output frame: "));
        // The guest's own text in a reason is cut to a reason's size.
        let huge = format!("{{\"subject\":\"o\",\"{}\":1}}", "x".repeat(10_000));
        assert_eq!(reject(&huge, None).len(), MAX_REASON);
        assert!(
            reject(r#"{"subject":"out.a","headers":{"k":1}}"#, None)
                .starts_with("output line 1: not an output frame: ")
        );
        assert_eq!(
            reject(r#"{"payload":"x"}"#, None),
            "output line 1: no subject, no [config] output and no reply subject to send it to"
        );
        assert_eq!(
            reject(
                r#"{"subject":"o","payload":"x","payload_base64":"eA=="}"#,
                None
            ),
            "output line 1: both payload and payload_base64: give one"
        );
        assert!(
            reject(r#"{"subject":"o","payload_base64":"not base64!"}"#, None)
                .starts_with("output line 1: payload_base64 is not base64: ")
        );
    }

    #[test]
    fn the_exit_status_is_the_outcome() {
        assert_eq!(
            outcome(
                EXIT_RETRY,
                b"{\"subject\":\"o\"}\n",
                b"log line\nthe database is away\n\n",
                None,
                false
            ),
            Outcome::Retry {
                reason: "the database is away".to_owned(),
                delay: None
            }
        );
        assert_eq!(
            outcome(EXIT_RETRY, b"", b"", None, false),
            Outcome::Retry {
                reason: "exited with 75".to_owned(),
                delay: None
            }
        );
        assert_eq!(
            outcome(
                1,
                b"{\"subject\":\"o\"}\n",
                b"panic: bad input\n",
                None,
                false
            ),
            Outcome::Reject {
                reason: "panic: bad input".to_owned()
            }
        );
        assert_eq!(
            outcome(2, b"", b"", None, false),
            Outcome::Reject {
                reason: "exited with 2".to_owned()
            }
        );
        // A long last line is cut on a character boundary.
        let long = "é".repeat(MAX_REASON);
        match outcome(1, b"", long.as_bytes(), None, false) {
            Outcome::Reject { reason } => {
                assert_eq!(reason.len(), MAX_REASON);
                assert!(reason.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Any standard output and standard error give an outcome without a panic; a success's
        /// outputs all have a subject (their own or the default).
        #[test]
        fn any_program_output_gives_an_outcome(
            status in prop_oneof![Just(0), Just(EXIT_RETRY), any::<i32>()],
            stdout in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                "(\\{\"subject\":\"[a-z.]{0,8}\"(,\"payload\":\"[ -~]{0,8}\")?\\}\n){0,4}"
                    .prop_map(String::into_bytes),
            ],
            stderr in proptest::collection::vec(any::<u8>(), 0..300),
            default in proptest::option::of("[a-z.]{1,8}"),
        ) {
            match outcome(status, &stdout, &stderr, default.as_deref(), false) {
                Outcome::Success(outputs) => {
                    prop_assert_eq!(status, 0);
                    prop_assert!(outputs.iter().all(|o| o.subject.is_some()));
                }
                Outcome::Retry { reason, .. } => {
                    prop_assert_eq!(status, EXIT_RETRY);
                    prop_assert!(!reason.is_empty() && reason.len() <= MAX_REASON);
                }
                Outcome::Reject { reason } => {
                    prop_assert!(!reason.is_empty() && reason.len() <= MAX_REASON);
                }
            }
        }
    }
}
