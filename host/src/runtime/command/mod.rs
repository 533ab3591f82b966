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
//! A message whose subject or reply subject holds a NUL byte (which a WASI environment, a list
//! of NUL-terminated strings, cannot carry) is rejected without running the program.
//!
//! Standard output: one JSON object per line, each an output (blank lines are skipped):
//! `{"subject": "out.x", "payload": "text", "headers": {"k": "v"}}`. A frame without `subject`
//! goes to the manifest's `[config] output`, or else answers the request (the message's reply
//! subject); with neither the handler fails with `no-reply-subject`, as a component's reply
//! does. `payload` is UTF-8 text, or `payload_base64` holds bytes (standard alphabet, padded);
//! a header's value is a string or a list of strings, and a name given twice keeps its last
//! value. Any other field, a line that is not such an object, more than [`MAX_FRAMES`] frames
//! or more than [`MAX_FRAME_HEADERS`] header names and values in one frame is a malformed
//! frame: the message is rejected with a reason naming the line. Each frame is checked against
//! the grant and the output budget as soon as it is read, so a flood stops at the budget.
//!
//! The exit status: 0 is success (the frames are the outputs), [`EXIT_RETRY`] (75, `EX_TEMPFAIL`
//! of sysexits.h) asks for another delivery after the manifest's backoff, anything else rejects
//! the message, with the last line the program wrote to standard error as the reason.

mod runner;
mod stdout;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

pub(crate) use self::runner::{Program, RESERVED_ENV_PREFIX, Run, is_core_module, linker};
use super::Outcome;
use crate::message::{Headers, Message, Output};

/// The exit status that asks for another delivery: `EX_TEMPFAIL` of sysexits.h.
pub const EXIT_RETRY: i32 = 75;

/// The most of a reason taken from standard error.
const MAX_REASON: usize = 1024;

/// The most output frames one run may write: as many as a component's `publish` calls.
pub const MAX_FRAMES: usize = 10_000;

/// The most header names and values one frame may carry (each name and each value counts one).
pub const MAX_FRAME_HEADERS: usize = 1_000;

/// The environment `message` becomes, in a fixed order; or why it cannot be one (a NUL byte
/// in its subject or reply subject).
pub fn environment(message: &Message) -> Result<Vec<(String, String)>, String> {
    for (what, text) in [
        ("subject", Some(&message.subject)),
        ("reply subject", message.reply.as_ref()),
    ] {
        if text.is_some_and(|t| t.contains('\0')) {
            return Err(format!(
                "the message's {what} holds a NUL byte, which a WASI environment cannot carry"
            ));
        }
    }
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
    Ok(env)
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
    headers: FrameHeaders,
}

/// A frame's `headers`: each name to its values, a repeated name keeping its last. Read
/// through a visitor that counts names and values against [`MAX_FRAME_HEADERS`] as it goes, so
/// a line of millions of empty values fails at the limit instead of taking the host's memory.
#[derive(Default)]
struct FrameHeaders(BTreeMap<String, Vec<String>>);

impl<'de> Deserialize<'de> for FrameHeaders {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeadersVisitor)
    }
}

struct HeadersVisitor;

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = FrameHeaders;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of header names to a string or a list of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FrameHeaders, A::Error> {
        let mut left = MAX_FRAME_HEADERS;
        let mut headers = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            take(&mut left)?;
            let values = map.next_value_seed(HeaderValues { left: &mut left })?;
            headers.insert(name, values);
        }
        Ok(FrameHeaders(headers))
    }
}

/// Counts one header name or value against what is `left` of [`MAX_FRAME_HEADERS`].
fn take<E: de::Error>(left: &mut usize) -> Result<(), E> {
    *left = left.checked_sub(1).ok_or_else(|| {
        E::custom(format!(
            "more than {MAX_FRAME_HEADERS} header names and values in one frame"
        ))
    })?;
    Ok(())
}

/// A header's value in a frame: one string or a list of them.
struct HeaderValues<'a> {
    left: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for HeaderValues<'_> {
    type Value = Vec<String>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HeaderValues<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a list of strings")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        take(self.left)?;
        Ok(vec![value.to_owned()])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element::<String>()? {
            take(self.left)?;
            values.push(value);
        }
        Ok(values)
    }
}

/// What a finished program's exit status, standard output and standard error mean.
/// `default_subject` is the manifest's `[config] output`, for frames that name no subject (a
/// frame with neither is a reply, `subject: None`).
pub fn outcome(
    status: i32,
    stdout: &[u8],
    stderr: &[u8],
    default_subject: Option<&str>,
) -> Outcome {
    outcome_admitting(status, stdout, stderr, default_subject, Ok::<_, Infallible>)
        .unwrap_or_else(|never| match never {})
}

/// [`outcome`], each output passed through `admit` as soon as its frame is read: the first
/// refusal ends the reading and is the answer.
pub fn outcome_admitting<E>(
    status: i32,
    stdout: &[u8],
    stderr: &[u8],
    default_subject: Option<&str>,
    mut admit: impl FnMut(Output) -> Result<Output, E>,
) -> Result<Outcome, E> {
    Ok(match status {
        0 => {
            let mut outputs = Vec::new();
            for frame in frames(stdout, default_subject) {
                match frame {
                    Ok(output) => outputs.push(admit(output)?),
                    Err(reason) => return Ok(Outcome::Reject { reason }),
                }
            }
            Outcome::Success(outputs)
        }
        EXIT_RETRY => Outcome::Retry {
            reason: last_line(stderr).unwrap_or_else(|| format!("exited with {EXIT_RETRY}")),
            delay: None,
        },
        other => Outcome::Reject {
            reason: last_line(stderr).unwrap_or_else(|| format!("exited with {other}")),
        },
    })
}

/// The outputs of standard output in order, each or why its frame is malformed ("output line
/// N: ..."). A frame without a subject goes to `default_subject`, else it is a reply.
pub fn frames<'a>(
    stdout: &'a [u8],
    default_subject: Option<&'a str>,
) -> impl Iterator<Item = Result<Output, String>> + 'a {
    stdout
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, line)| (index, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .enumerate()
        .map(move |(count, (index, line))| {
            // A frame's text (an unknown field's name, say) is the guest's: cut to a reason's size.
            let malformed = |why: String| cut(&format!("output line {}: {why}", index + 1));
            if count == MAX_FRAMES {
                return Err(malformed(format!("more than {MAX_FRAMES} output frames")));
            }
            frame(line, default_subject).map_err(malformed)
        })
}

/// One frame's output, or what is wrong with it.
fn frame(line: &[u8], default_subject: Option<&str>) -> Result<Output, String> {
    let frame: Frame =
        serde_json::from_slice(line).map_err(|e| format!("not an output frame: {e}"))?;
    let payload = match (frame.payload, frame.payload_base64) {
        (Some(text), None) => bytes::Bytes::from(text),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| format!("payload_base64 is not base64: {e}"))?,
        (None, None) => bytes::Bytes::new(),
        (Some(_), Some(_)) => return Err("both payload and payload_base64: give one".to_owned()),
    };
    let mut headers = Headers::default();
    for (name, values) in frame.headers.0 {
        for value in values {
            headers.append(name.clone(), value);
        }
    }
    Ok(Output {
        subject: frame.subject.or_else(|| default_subject.map(str::to_owned)),
        headers,
        payload,
    })
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
        let env = environment(&message).unwrap();
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
        let env = environment(&message).unwrap();
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

        // A NUL in the subject or reply subject cannot be an environment variable.
        message.subject = "in.x\0NATSPLUG_REPLY=forged".to_owned();
        assert_eq!(
            environment(&message),
            Err(
                "the message's subject holds a NUL byte, which a WASI environment cannot carry"
                    .to_owned()
            )
        );
        message.subject = "in.x".to_owned();
        message.reply = Some("_INBOX.\0".to_owned());
        assert!(environment(&message).unwrap_err().contains("reply subject"));
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
            outcome(0, stdout.as_bytes(), b"", Some("out.default")),
            Outcome::Success(vec![
                output("out.a", &[("k", "v"), ("m", "1"), ("m", "2")], b"HELLO"),
                output("out.default", &[], &[0x00, 0xff]),
                output("out.default", &[], b""),
            ])
        );
        assert_eq!(outcome(0, b"", b"", None), Outcome::Success(vec![]));
        // Without a subject or a default, a frame is a reply (admission refuses it when the
        // message is not a request).
        assert_eq!(
            outcome(0, br#"{"payload":"R"}"#, b"", None),
            Outcome::Success(vec![Output {
                subject: None,
                headers: Headers::default(),
                payload: bytes::Bytes::from_static(b"R"),
            }])
        );
    }

    #[test]
    fn a_malformed_frame_rejects_the_message_naming_its_line() {
        let reject =
            |stdout: &str, default: Option<&str>| match outcome(0, stdout.as_bytes(), b"", default)
            {
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
        // Floods end at a limit, not at the host's memory.
        let values = format!(
            "{{\"subject\":\"o\",\"headers\":{{\"k\":[{}]}}}}",
            vec!["\"\""; MAX_FRAME_HEADERS].join(",")
        );
        assert!(
            reject(&values, None).starts_with(
                "output line 1: not an output frame: more than 1000 header names and values in one frame"
            ),
            "{}",
            reject(&values, None)
        );
        let names: Vec<String> = (0..=MAX_FRAME_HEADERS)
            .map(|i| format!("\"h{i}\":[]"))
            .collect();
        assert!(
            reject(&format!("{{\"headers\":{{{}}}}}", names.join(",")), None)
                .contains("more than 1000 header names and values")
        );
        let frames = "{}\n".repeat(MAX_FRAMES + 1);
        assert_eq!(
            reject(&frames, Some("o")),
            "output line 10001: more than 10000 output frames"
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
            ),
            Outcome::Retry {
                reason: "the database is away".to_owned(),
                delay: None
            }
        );
        assert_eq!(
            outcome(EXIT_RETRY, b"", b"", None),
            Outcome::Retry {
                reason: "exited with 75".to_owned(),
                delay: None
            }
        );
        assert_eq!(
            outcome(1, b"{\"subject\":\"o\"}\n", b"panic: bad input\n", None),
            Outcome::Reject {
                reason: "panic: bad input".to_owned()
            }
        );
        assert_eq!(
            outcome(2, b"", b"", None),
            Outcome::Reject {
                reason: "exited with 2".to_owned()
            }
        );
        // A long last line is cut on a character boundary.
        let long = "é".repeat(MAX_REASON);
        match outcome(1, b"", long.as_bytes(), None) {
            Outcome::Reject { reason } => {
                assert_eq!(reason.len(), MAX_REASON);
                assert!(reason.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Any standard output and standard error give an outcome without a panic; with a
        /// default subject, a success's outputs all have a subject (their own or the default).
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
            match outcome(status, &stdout, &stderr, default.as_deref()) {
                Outcome::Success(outputs) => {
                    prop_assert_eq!(status, 0);
                    prop_assert!(default.is_none() || outputs.iter().all(|o| o.subject.is_some()));
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
