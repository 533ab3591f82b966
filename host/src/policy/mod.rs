//! What a guest, a requester or a manifest may make the host do. Every check of bytes they
//! control (a published subject, a requester's reply subject, a header, a size) is a small pure
//! function here, named for what it refuses, and every refusal is a typed [`Denied`] that the
//! caller counts (`natsplug_policy_denials_total{plugin,kind}`).
//!
//! Why it exists: the host publishes with its own credentials, which reach far more than any
//! one plugin should. Before these checks, a request whose reply subject was
//! `$JS.API.STREAM.DELETE.ORDERS` and whose payload the plugin rejected deleted the stream (the
//! host's error answer went there), a guest's `Nats-Rollup: all` header purged a KV key's
//! history, and a header the protocol cannot carry panicked inside async-nats.
//!
//! The reserved space ([`reserved_prefix`]) is every subject whose first token starts with `$`
//! (the server's APIs: `$JS.`, `$KV.`, `$O.`, `$OBJ.`, `$SYS.`, `$SRV.`...), the host's control
//! plane (`natsplug.control.`) and the host's own inboxes (`_INBOX.natsplug.`, where its pull
//! requests and API replies arrive). A grant reaches it only when it names the reserved prefix
//! literally (`$KV.orders.>`); `>` or `*.>` never do. A reply subject never reaches it.
//!
//! Layout:
//! - [`pattern`]: subject patterns (match, overlap, containment); malformed ones match nothing.
//! - [`headers`]: headers the protocol can carry, and the ones that steer the server.
//! - [`capabilities`]: a request's subject, a KV bucket and key, an HTTP origin.
//! - here: [`Denied`], the reserved space, [`Grants`] (a manifest's, compiled once) and the
//!   subject and size checks.

pub mod capabilities;
pub mod headers;
pub mod pattern;

pub use self::capabilities::Origin;
pub use self::pattern::Pattern;
use crate::manifest::PublishPolicy;
use crate::message::Output;

/// The inbox prefix of every connection the host opens: its inboxes are reserved space, so a
/// requester cannot steer a reply into the host's own pull requests or API calls.
pub const HOST_INBOX_PREFIX: &str = "_INBOX.natsplug";
/// The inbox prefix of the connection handlers' requests and KV calls go out on
/// ([`crate::capability`]). Reserved, but a reply may go there: the services a guest asks,
/// natsplug plugins among them, answer there. A forged answer would need a pending request's
/// token, which async-nats makes with a CSPRNG (its `nuid` feature is off), and could only
/// answer that request.
pub const CAPABILITY_INBOX_PREFIX: &str = "_INBOX.natsplug-requests";
/// The host's own subjects and the server's routing prefixes (`_GR_.` and `_R_.` carry
/// replies across gateways, where the prefix is stripped), besides the server's `$` space.
/// The capabilities' inbox is among them: no output, request or subscription reaches it
/// unless named, so no plugin can read or forge the answers other plugins' requests and KV
/// calls get; only a reply goes there ([`refuse_reply`]), so that service plugins can answer.
const HOST_PREFIXES: &[&str] = &[
    "natsplug.control.",
    "_INBOX.natsplug.",
    "_INBOX.natsplug-requests.",
    "_GR_.",
    "_R_.",
];
/// The longest subject the host publishes to. The server's control line (`HPUB subject reply
/// sizes`) is 4 KiB by default and a longer one closes the connection, failing every publish on
/// it.
pub const MAX_SUBJECT: usize = 1024;
/// What an output costs besides its bytes (its record).
const OUTPUT_OVERHEAD: u64 = 64;
/// What a header entry costs besides its bytes: the host holds each as two strings (48 bytes)
/// and their allocations, so a flood of empty headers is counted at what it takes.
const HEADER_OVERHEAD: usize = 64;
/// The longest subject a denial repeats.
const MAX_SHOWN: usize = 128;

/// Why something a guest or a requester asked for was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not a subject the protocol can carry: empty, an empty token, whitespace or a control
    /// character, or longer than [`MAX_SUBJECT`].
    #[error("{subject:?} is not a valid subject: {why}")]
    InvalidSubject {
        /// The subject (cut).
        subject: String,
        /// What is wrong.
        why: String,
    },
    /// A wildcard in a subject to publish to.
    #[error("may not publish to {subject:?}: a wildcard, where outputs need a concrete subject")]
    Wildcard {
        /// The subject (cut).
        subject: String,
    },
    /// In reserved space, and no grant names it.
    #[error(
        "may not publish to {subject:?}: reserved space ({prefix}), which only a grant naming {prefix} reaches"
    )]
    Reserved {
        /// The subject (cut).
        subject: String,
        /// The reserved prefix it falls in.
        prefix: String,
    },
    /// No grant matches.
    #[error("may not publish to {subject:?} (not in its publish.allow list)")]
    NotGranted {
        /// The subject (cut).
        subject: String,
    },
    /// A reply subject in reserved space or outside `publish.reply_allow`.
    #[error("reply subject {subject:?} is refused: {why}")]
    Reply {
        /// The reply subject (cut).
        subject: String,
        /// Why.
        why: String,
    },
    /// A header the protocol cannot carry.
    #[error("header {name:?} is invalid: {why}")]
    InvalidHeader {
        /// The header name (cut).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A header that steers the server, not granted in `publish.headers`.
    #[error("header {name:?} steers the server and is not in its publish.headers list")]
    ForbiddenHeader {
        /// The header name.
        name: String,
    },
    /// The outputs of one message passed the plugin's byte budget.
    #[error("the outputs of one message passed its limits.output_bytes of {limit} bytes")]
    OutputLimit {
        /// The budget in bytes.
        limit: u64,
    },
    /// A request to reserved space: never reachable, named or not.
    #[error(
        "may not send a request to {subject:?}: reserved space ({prefix}) is never reachable by a request"
    )]
    ReservedRequest {
        /// The subject (cut).
        subject: String,
        /// The reserved prefix it falls in.
        prefix: String,
    },
    /// A request no `[request] allow` pattern matches.
    #[error("may not send a request to {subject:?} (not in its request.allow list)")]
    RequestNotGranted {
        /// The subject (cut).
        subject: String,
    },
    /// A bucket name NATS KV cannot hold.
    #[error("{bucket:?} is not a valid bucket name (letters, digits, _ and -)")]
    InvalidBucket {
        /// The bucket (cut).
        bucket: String,
    },
    /// A bucket `[kv] buckets` does not grant.
    #[error("may not open bucket {bucket:?} (not in its kv.buckets)")]
    BucketNotGranted {
        /// The bucket (cut).
        bucket: String,
    },
    /// A write to a bucket granted `read`.
    #[error("may not write to bucket {bucket:?}: kv.buckets grants it \"read\"")]
    ReadOnlyBucket {
        /// The bucket.
        bucket: String,
    },
    /// A key NATS KV cannot hold in its bucket.
    #[error("{key:?} is not a valid key: {why}")]
    InvalidKey {
        /// The key (cut).
        key: String,
        /// What is wrong.
        why: String,
    },
    /// An HTTP request to an origin `[http] allow` does not list.
    #[error("may not send an HTTP request to {origin} (not in its http.allow list)")]
    OriginNotGranted {
        /// The origin (cut).
        origin: String,
    },
    /// A core subscription that reaches reserved space without naming it.
    #[error(
        "subscription {pattern:?} reaches reserved space ({prefix}); name the prefix to subscribe there"
    )]
    Subscription {
        /// The pattern.
        pattern: String,
        /// A reserved prefix it overlaps.
        prefix: String,
    },
}

impl Denied {
    /// Whether it refuses an output's subject (which a guest's `publish` call hears about and
    /// may handle), not its headers or size.
    pub fn is_subject(&self) -> bool {
        matches!(
            self,
            Self::InvalidSubject { .. }
                | Self::Wildcard { .. }
                | Self::Reserved { .. }
                | Self::NotGranted { .. }
        )
    }

    /// A short lowercase name, for metric labels, headers and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidSubject { .. } => "invalid-subject",
            Self::Wildcard { .. } => "wildcard-subject",
            Self::Reserved { .. } => "reserved-subject",
            Self::NotGranted { .. } => "forbidden-subject",
            Self::Reply { .. } => "reply-subject",
            Self::InvalidHeader { .. } => "invalid-header",
            Self::ForbiddenHeader { .. } => "forbidden-header",
            Self::OutputLimit { .. } => "output-limit",
            Self::Subscription { .. } => "reserved-subscription",
            Self::ReservedRequest { .. } => "reserved-request",
            Self::RequestNotGranted { .. } => "forbidden-request",
            Self::InvalidBucket { .. } => "invalid-bucket",
            Self::BucketNotGranted { .. } => "forbidden-bucket",
            Self::ReadOnlyBucket { .. } => "read-only-bucket",
            Self::InvalidKey { .. } => "invalid-key",
            Self::OriginNotGranted { .. } => "forbidden-origin",
        }
    }
}

/// The reserved prefix `subject` falls in (with its trailing dot), if any: `$X.` for the
/// server's space (a single `$X` token too), else one of the host's own.
pub fn reserved_prefix(subject: &str) -> Option<String> {
    let first = subject.split('.').next().unwrap_or_default();
    if first.starts_with('$') {
        return Some(format!("{first}."));
    }
    HOST_PREFIXES
        .iter()
        .find(|prefix| subject.starts_with(*prefix) || subject == prefix.trim_end_matches('.'))
        .map(|prefix| (*prefix).to_owned())
}

/// Refuses a subject the protocol cannot carry.
pub fn refuse_invalid_subject(subject: &str) -> Result<(), Denied> {
    let why = if subject.is_empty() {
        "empty"
    } else if subject.len() > MAX_SUBJECT {
        "longer than 1024 bytes"
    } else {
        // One pass over the tokens: this runs for every output.
        let bad = subject.split('.').find_map(|token| match token {
            "" => Some("an empty token"),
            token if !pattern::is_token(token) => Some("whitespace or a control character"),
            _ => None,
        });
        match bad {
            Some(why) => why,
            None => return Ok(()),
        }
    };
    Err(Denied::InvalidSubject {
        subject: shown(subject),
        why: why.into(),
    })
}

/// Refuses a subject with a `*` or `>` token.
pub fn refuse_wildcard(subject: &str) -> Result<(), Denied> {
    if subject.split('.').any(|t| t == "*" || t == ">") {
        return Err(Denied::Wildcard {
            subject: shown(subject),
        });
    }
    Ok(())
}

/// Refuses a requester's reply subject that the host must not publish to: an invalid one, one
/// with a wildcard, one in reserved space, or one that the manifest's `publish.reply_allow`
/// (default `_INBOX.>`, where clients receive their replies) does not match: a requester
/// must not make the host store what it likes on `orders.new` with the host's credentials.
pub fn refuse_reply(reply: &str, allow: &[Pattern]) -> Result<(), Denied> {
    let refused = |why: String| Denied::Reply {
        subject: shown(reply),
        why,
    };
    refuse_invalid_subject(reply).map_err(|e| refused(e.to_string()))?;
    refuse_wildcard(reply).map_err(|e| refused(e.to_string()))?;
    if let Some(prefix) = reserved_prefix(reply)
        && prefix != format!("{CAPABILITY_INBOX_PREFIX}.")
    {
        return Err(refused(format!("{prefix} is reserved space")));
    }
    if !allow.iter().any(|p| p.matches(reply)) {
        return Err(refused("not in publish.reply_allow".to_owned()));
    }
    Ok(())
}

/// Refuses a core subscription pattern that overlaps reserved space without naming it (`>`,
/// `*.>`, `natsplug.*.>`): it would receive the server's API traffic or the host's own, and
/// could answer it.
pub fn refuse_reserved_subscription(pattern: &str) -> Result<(), Denied> {
    let requested = Pattern::parse(pattern);
    // A leading wildcard reaches every `$` space at once.
    let dollar = requested.is_valid()
        && pattern
            .split('.')
            .next()
            .is_some_and(|t| t == "*" || t == ">");
    let host = HOST_PREFIXES
        .iter()
        .find(|prefix| {
            // The prefix's own subject (`natsplug.control`) is reserved too.
            let reaches = requested.overlaps(&Pattern::parse(&format!("{prefix}>")))
                || requested.overlaps(&Pattern::parse(prefix.trim_end_matches('.')));
            reaches && !requested.names(prefix)
        })
        .copied();
    match (dollar, host) {
        (true, _) => Err(Denied::Subscription {
            pattern: shown(pattern),
            prefix: "$".into(),
        }),
        (false, Some(prefix)) => Err(Denied::Subscription {
            pattern: shown(pattern),
            prefix: prefix.into(),
        }),
        (false, None) => Ok(()),
    }
}

/// Refuses a stream, consumer, queue or plugin name that could change the API subject it is put
/// in (`$JS.API.CONSUMER.CREATE.<stream>.<durable>`): empty, longer than 255 bytes, or with a
/// `.`, `*`, `>`, `/`, a backslash, whitespace or a control character. `field` names it in the error.
pub fn refuse_invalid_name(field: &str, name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        });
    if bad {
        return Err(format!(
            "{field} = {name:?} is not a valid name (no '.', '*', '>', '/', whitespace or control characters)"
        ));
    }
    Ok(())
}

/// What a manifest grants, compiled once per plugin version.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// `publish.allow`.
    pub allow: Vec<Pattern>,
    /// `publish.core`: allowed subjects published without storage.
    pub core: Vec<Pattern>,
    /// `publish.reply_allow`.
    pub reply_allow: Vec<Pattern>,
    /// `publish.headers`: server headers the guest may set.
    pub headers: Vec<String>,
}

impl Grants {
    /// Compiles a manifest's `[publish]` section.
    pub fn new(publish: &PublishPolicy) -> Self {
        let compile = |texts: &[String]| texts.iter().map(|t| Pattern::parse(t)).collect();
        Self {
            allow: compile(&publish.allow),
            core: compile(&publish.core),
            reply_allow: compile(&publish.reply_allow),
            headers: publish.headers.clone(),
        }
    }

    /// Refuses a subject an output may not go to: invalid, a wildcard, not granted, or in
    /// reserved space that no matching grant names.
    pub fn refuse_subject(&self, subject: &str) -> Result<(), Denied> {
        refuse_invalid_subject(subject)?;
        refuse_wildcard(subject)?;
        let mut matching = self.allow.iter().filter(|g| g.matches(subject)).peekable();
        if matching.peek().is_none() {
            return Err(Denied::NotGranted {
                subject: shown(subject),
            });
        }
        match reserved_prefix(subject) {
            Some(prefix) if !matching.any(|g| g.names(&prefix)) => Err(Denied::Reserved {
                subject: shown(subject),
                prefix,
            }),
            _ => Ok(()),
        }
    }

    /// Whether an allowed subject goes out as core NATS (`publish.core`).
    pub fn is_core(&self, subject: &str) -> bool {
        self.core.iter().any(|g| g.matches(subject))
    }

    /// Checks an output's headers, leaving out the ones the host sets itself.
    pub fn admit_headers(&self, output: &mut Output) -> Result<(), Denied> {
        let mut refused = None;
        output.headers.0.retain(
            |(name, value)| match headers::admit(name, value, &self.headers) {
                Ok(headers::Admit::Keep) => true,
                Ok(headers::Admit::Drop) => false,
                Err(denied) => {
                    refused.get_or_insert(denied);
                    true
                }
            },
        );
        refused.map_or(Ok(()), Err)
    }
}

/// Refuses a request header the protocol cannot carry, or one that steers the server
/// (`Nats-Msg-Id`, `Nats-Expected-*`, `Nats-Rollup`...): a request is not a publish, and no
/// grant lets it steer a stream that happens to capture its subject.
pub fn refuse_request_header(name: &str, value: &str) -> Result<(), Denied> {
    headers::refuse_unsendable_name(name)?;
    headers::refuse_unsendable_value(name, value)?;
    if headers::steers_the_server(name) {
        return Err(Denied::ForbiddenHeader { name: shown(name) });
    }
    Ok(())
}

/// What an output costs against the byte budgets: its subject, headers and payload, plus a
/// fixed overhead per output and per header so that a flood of empty ones is counted too.
pub fn output_size(output: &Output) -> u64 {
    let subject = output.subject.as_ref().map_or(0, String::len);
    let headers: usize = output
        .headers
        .0
        .iter()
        .map(|(n, v)| n.len() + v.len() + HEADER_OVERHEAD)
        .sum();
    (subject + headers + output.payload.len()) as u64 + OUTPUT_OVERHEAD
}

/// A subject or header name cut to what a denial repeats (a reason must stay a header value
/// itself), on a character boundary; the denial's message quotes and escapes it.
fn shown(subject: &str) -> String {
    let mut end = subject.len().min(MAX_SHOWN);
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    if end < subject.len() {
        format!("{}...", &subject[..end])
    } else {
        subject.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn grants(allow: &[&str]) -> Grants {
        Grants {
            allow: allow.iter().map(|a| Pattern::parse(a)).collect(),
            ..Grants::default()
        }
    }

    #[test]
    fn the_reserved_space() {
        for (subject, prefix) in [
            ("$JS.API.STREAM.DELETE.IN", "$JS."),
            ("$JS.ACK.IN.c.1.2.3.4.5", "$JS."),
            ("$KV.orders.k", "$KV."),
            ("$O.files.x", "$O."),
            ("$OBJ.files.x", "$OBJ."),
            ("$SYS.REQ.SERVER.PING", "$SYS."),
            ("$SRV.PING", "$SRV."),
            ("$JS", "$JS."),
            ("natsplug.control.h1.reload", "natsplug.control."),
            ("_INBOX.natsplug.abc.1", "_INBOX.natsplug."),
            (
                "_INBOX.natsplug-requests.abc.1",
                "_INBOX.natsplug-requests.",
            ),
            ("_GR_.c1.s1.$JS.API.STREAM.DELETE.IN", "_GR_."),
            ("_R_.abc.x", "_R_."),
        ] {
            assert_eq!(
                reserved_prefix(subject).as_deref(),
                Some(prefix),
                "{subject}"
            );
        }
        for free in ["out.x", "_INBOX.abc", "natsplug.dead.p", "JS.API", "a.$JS"] {
            assert_eq!(reserved_prefix(free), None, "{free}");
        }
    }

    #[test]
    fn the_capabilities_inbox_takes_replies_and_nothing_else() {
        let inbox = "_INBOX.natsplug-requests.Xk3.7";
        assert_eq!(refuse_reply(inbox, &[Pattern::parse("_INBOX.>")]), Ok(()));
        assert!(matches!(
            grants(&[">", "_INBOX.>"]).refuse_subject(inbox),
            Err(Denied::Reserved { .. })
        ));
        assert!(refuse_reserved_subscription("_INBOX.*.>").is_err());
        assert!(capabilities::refuse_request(inbox, &[Pattern::parse(">")]).is_err());
    }

    #[test]
    fn wide_grants_never_reach_reserved_space() {
        let wide = grants(&[">", "*.>", "$*.>", "natsplug.*.>", "_INBOX.>"]);
        for reserved in [
            "$JS.API.STREAM.DELETE.IN",
            "$KV.orders.k",
            "$SYS.REQ.SERVER.PING",
            "natsplug.control.h1.reload",
            "_INBOX.natsplug.x.1",
        ] {
            assert!(
                matches!(wide.refuse_subject(reserved), Err(Denied::Reserved { .. })),
                "{reserved}"
            );
        }
        assert_eq!(wide.refuse_subject("out.x"), Ok(()));
        assert_eq!(wide.refuse_subject("_INBOX.abc"), Ok(()));
    }

    #[test]
    fn a_grant_that_names_a_reserved_prefix_reaches_it() {
        let named = grants(&["$KV.orders.>", "natsplug.control.h1.list"]);
        assert_eq!(named.refuse_subject("$KV.orders.k1"), Ok(()));
        assert!(matches!(
            named.refuse_subject("$KV.other.k1"),
            Err(Denied::NotGranted { .. })
        ));
        assert_eq!(named.refuse_subject("natsplug.control.h1.list"), Ok(()));
    }

    #[test]
    fn published_subjects_are_concrete_and_sendable() {
        let g = grants(&[">"]);
        for (subject, kind) in [
            ("out.*", "wildcard-subject"),
            ("out.>", "wildcard-subject"),
            ("", "invalid-subject"),
            ("out..x", "invalid-subject"),
            ("out.x\r\nPUB $JS.API.STREAM.DELETE.IN 0", "invalid-subject"),
            ("out x", "invalid-subject"),
            ("out.\u{0}", "invalid-subject"),
        ] {
            assert_eq!(
                g.refuse_subject(subject).unwrap_err().kind(),
                kind,
                "{subject:?}"
            );
        }
        let long = format!("out.{}", "x".repeat(MAX_SUBJECT));
        let err = g.refuse_subject(&long).unwrap_err();
        assert_eq!(err.kind(), "invalid-subject");
        assert!(err.to_string().len() < 300, "the denial is cut: {err}");
        assert_eq!(g.refuse_subject("out.caf\u{e9}"), Ok(()));
    }

    #[test]
    fn reply_subjects_outside_reserved_space_only() {
        let allow = [Pattern::parse("_INBOX.>"), Pattern::parse("replies.*")];
        assert_eq!(refuse_reply("_INBOX.abc.1", &allow), Ok(()));
        assert_eq!(refuse_reply("replies.r1", &allow), Ok(()));
        // Even an allow-list that covers everything never reaches reserved space.
        let all = [Pattern::parse(">")];
        assert_eq!(refuse_reply("orders.new", &all), Ok(()));
        assert!(refuse_reply("$JS.API.STREAM.DELETE.IN", &all).is_err());
        for bad in [
            "$JS.API.STREAM.DELETE.IN",
            "$JS.API.STREAM.PURGE.IN",
            "$JS.ACK.IN.c.1.1.1.1.0",
            "$KV.b.k",
            "$SYS.REQ.ACCOUNT.PING.CONNZ",
            "natsplug.control.h.reload",
            "_INBOX.natsplug.pull.1",
            "orders.new",
            "replies.r1.x",
            "a.*",
            "a b",
            "",
        ] {
            assert_eq!(
                refuse_reply(bad, &allow).unwrap_err().kind(),
                "reply-subject",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn core_subscriptions_do_not_straddle_reserved_space() {
        for bad in [
            ">",
            "*.>",
            "*.API.>",
            "natsplug.>",
            "natsplug.*.>",
            "natsplug.*",
            "*.control",
            "_INBOX.>",
            "*",
        ] {
            assert!(refuse_reserved_subscription(bad).is_err(), "{bad}");
        }
        for ok in [
            "svc.>",
            "svc.*",
            "natsplug.control.h1.>",
            "natsplug.events",
            "$SRV.x",
            "_INBOX.abc.>",
        ] {
            assert_eq!(refuse_reserved_subscription(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn headers_are_admitted_or_refused_whole() {
        let g = Grants {
            headers: vec!["Nats-TTL".into()],
            ..Grants::default()
        };
        let mut output = Output {
            subject: Some("out.x".into()),
            headers: crate::message::Headers(vec![
                ("Nats-Msg-Id".into(), "copied".into()),
                ("Nats-TTL".into(), "10s".into()),
                ("trace".into(), "1".into()),
            ]),
            payload: bytes::Bytes::new(),
        };
        assert_eq!(g.admit_headers(&mut output), Ok(()));
        assert_eq!(
            output.headers.0,
            vec![
                ("Nats-TTL".into(), "10s".into()),
                ("trace".into(), "1".into())
            ]
        );
        output.headers.append("Nats-Rollup", "all");
        assert_eq!(
            g.admit_headers(&mut output).unwrap_err().kind(),
            "forbidden-header"
        );
    }

    fn subject() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("$JS".to_owned()),
            Just("$KV".to_owned()),
            Just("$SYS".to_owned()),
            Just("natsplug".to_owned()),
            Just("control".to_owned()),
            Just("_INBOX".to_owned()),
            Just("out".to_owned()),
            Just("*".to_owned()),
            Just(">".to_owned()),
            "[a-z$_]{1,4}",
            "\\PC{0,3}",
        ];
        prop::collection::vec(token, 1..6).prop_map(|t| t.join("."))
    }

    proptest! {
        /// A grant never lets a subject into reserved space unless one of the grants that
        /// match it names that space literally.
        #[test]
        fn no_grant_widens_into_reserved_space(
            allow in prop::collection::vec(subject(), 0..4),
            published in subject(),
        ) {
            let g = Grants {
                allow: allow.iter().map(|a| Pattern::parse(a)).collect(),
                ..Grants::default()
            };
            if g.refuse_subject(&published).is_ok() {
                prop_assert!(g.allow.iter().any(|p| p.matches(&published)));
                prop_assert!(refuse_invalid_subject(&published).is_ok());
                prop_assert!(refuse_wildcard(&published).is_ok());
                if let Some(prefix) = reserved_prefix(&published) {
                    prop_assert!(g.allow.iter().any(|p| p.matches(&published) && p.names(&prefix)));
                }
            }
        }

        #[test]
        fn a_reply_that_passes_is_outside_reserved_space(reply in subject()) {
            if refuse_reply(&reply, &[Pattern::parse(">")]).is_ok() {
                prop_assert!(reserved_prefix(&reply).is_none());
                prop_assert!(refuse_invalid_subject(&reply).is_ok());
            }
        }

        #[test]
        fn a_subscription_that_passes_receives_no_unnamed_reserved_subject(
            pattern in subject(),
            received in subject(),
        ) {
            let p = Pattern::parse(&pattern);
            if refuse_reserved_subscription(&pattern).is_ok()
                && p.matches(&received)
                && let Some(prefix) = reserved_prefix(&received)
            {
                prop_assert!(p.names(&prefix) || pattern.starts_with('$'), "{pattern} got {received}");
            }
        }
    }
}
