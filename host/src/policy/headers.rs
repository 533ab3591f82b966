//! Output headers: which ones the protocol can carry, and which ones steer the server.
//!
//! async-nats panics on a header name with a space, a `:` or a non-ASCII character and on a
//! value with CR or LF, so every header a guest writes is checked here before a `HeaderMap` is
//! built. And JetStream acts on `Nats-*` headers when it stores a message: `Nats-Rollup: all`
//! purges the subject's earlier messages, `Nats-Expected-*` makes the store fail, `Nats-TTL`
//! and `Nats-Schedule*` change when it goes, `Nats-Batch-*` and `Nats-Incr` change what it is.
//! A guest may set one only when its manifest grants it by name (`publish.headers`).

use super::{Denied, shown};

/// The prefix of every header the server interprets.
const SERVER_PREFIX: &str = "Nats-";
/// The prefix of the host's own headers.
const HOST_PREFIX: &str = "Natsplug-";
/// The dedup id the host sets on every stored output itself.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// What to do with a header a guest wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Publish it as it is.
    Keep,
    /// Leave it out: the host sets it itself (`Nats-Msg-Id`), so a handler that copies its
    /// input's headers keeps working.
    Drop,
}

/// Whether `name` is a header the server acts on (`Nats-*`, any case).
pub fn steers_the_server(name: &str) -> bool {
    starts_with_ignore_case(name, SERVER_PREFIX)
}

/// Whether `name` is one of the host's own headers (`Natsplug-*`, any case), which only the
/// host may write on a dead letter or an error answer.
pub fn is_the_hosts(name: &str) -> bool {
    starts_with_ignore_case(name, HOST_PREFIX)
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Refuses a header name the protocol cannot carry: empty, non-ASCII, a control character, a
/// space or a `:`.
pub fn refuse_unsendable_name(name: &str) -> Result<(), Denied> {
    let why = if name.is_empty() {
        Some("an empty name")
    } else if name.bytes().any(|b| !b.is_ascii_graphic()) {
        Some("a name with a space, a control or a non-ASCII character")
    } else if name.contains(':') {
        Some("a name with ':'")
    } else {
        None
    };
    match why {
        Some(why) => Err(Denied::InvalidHeader {
            name: shown(name),
            why: why.into(),
        }),
        None => Ok(()),
    }
}

/// Refuses a header value the protocol cannot carry: one with CR or LF.
pub fn refuse_unsendable_value(name: &str, value: &str) -> Result<(), Denied> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(Denied::InvalidHeader {
            name: shown(name),
            why: "a value with CR or LF".into(),
        });
    }
    Ok(())
}

/// Checks one output header against the protocol and the manifest's `publish.headers` grant.
pub fn admit(name: &str, value: &str, granted: &[String]) -> Result<Admit, Denied> {
    refuse_unsendable_name(name)?;
    refuse_unsendable_value(name, value)?;
    if !steers_the_server(name) {
        return Ok(Admit::Keep);
    }
    if name.eq_ignore_ascii_case(MSG_ID) {
        return Ok(Admit::Drop);
    }
    if granted.iter().any(|g| g.eq_ignore_ascii_case(name)) {
        Ok(Admit::Keep)
    } else {
        Err(Denied::ForbiddenHeader { name: shown(name) })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_and_values_the_protocol_cannot_carry_are_refused() {
        for bad in ["", "a b", "a:b", "caf\u{e9}", "a\tb", "a\r\nb"] {
            assert!(
                matches!(admit(bad, "v", &[]), Err(Denied::InvalidHeader { .. })),
                "{bad:?}"
            );
        }
        let err = admit("X-Ok", "one\r\ntwo", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header \"X-Ok\" is invalid: a value with CR or LF"
        );
        assert_eq!(admit("X-Ok", "caf\u{e9} \t fine", &[]), Ok(Admit::Keep));
    }

    #[test]
    fn server_headers_need_a_grant_and_the_dedup_id_is_the_hosts() {
        for steering in [
            "Nats-Rollup",
            "nats-rollup",
            "NATS-TTL",
            "Nats-Expected-Stream",
        ] {
            assert_eq!(
                admit(steering, "all", &[]),
                Err(Denied::ForbiddenHeader {
                    name: steering.into()
                })
            );
        }
        assert_eq!(
            admit("Nats-TTL", "1s", &["Nats-TTL".into()]),
            Ok(Admit::Keep)
        );
        assert_eq!(
            admit("nats-ttl", "1s", &["Nats-TTL".into()]),
            Ok(Admit::Keep)
        );
        assert_eq!(admit("Nats-Msg-Id", "x", &[]), Ok(Admit::Drop));
        assert_eq!(admit("Natsplug-Plugin", "x", &[]), Ok(Admit::Keep));
        assert_eq!(admit("Nats", "x", &[]), Ok(Admit::Keep));
    }

    #[test]
    fn a_long_name_is_cut_in_the_denial() {
        let name = "\u{e9}".repeat(1000);
        let Err(Denied::InvalidHeader { name: shown, .. }) = admit(&name, "v", &[]) else {
            panic!("refused");
        };
        assert!(shown.len() <= 131, "{shown}");
    }

    proptest! {
        /// Whatever a guest writes, the check never panics, and what it keeps is what
        /// async-nats accepts without panicking.
        #[test]
        fn what_is_kept_can_be_sent(name in "\\PC{0,12}|[ -~]{0,12}|Nats-[A-Za-z-]{0,8}", value in "\\PC{0,12}|[\r\n a-z]{0,6}") {
            if let Ok(Admit::Keep) = admit(&name, &value, &[]) {
                prop_assert!(!steers_the_server(&name));
                let mut map = async_nats::HeaderMap::new();
                map.insert(name.as_str(), value.as_str());
                prop_assert_eq!(map.get(name.as_str()).map(|v| v.as_str()), Some(value.as_str()));
            }
        }
    }
}
