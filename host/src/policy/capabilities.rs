//! The checks on what a guest asks of a capability (`crate::capability`): the subject of a
//! request, the bucket and key of a KV call, the origin of an HTTP request. Each is a pure
//! function of the guest's bytes and the manifest's grant, refusing with a typed [`Denied`].
//!
//! The rules:
//! - a request goes only to a subject `[request] allow` matches, and never into reserved space,
//!   named or not: a request to `$JS.API.STREAM.DELETE.X` or `$KV.orders.k` would drive the
//!   server's APIs (or bypass `[kv]`) with the host's credentials;
//! - a KV key is what NATS KV stores as one subject token sequence (`[-/_=.a-zA-Z0-9]`, no empty
//!   token), so `$KV.<bucket>.<key>` stays in its bucket and never holds a wildcard;
//! - an HTTP request goes only to an origin (scheme, host, port) `[http] allow` lists exactly.

use std::fmt;

use super::{Denied, Pattern, reserved_prefix, shown};

/// The longest KV key: its subject (`$KV.<bucket>.<key>`) must fit the host's subject limit.
pub const MAX_KEY: usize = 768;

/// Refuses, at load, a `[request] allow` pattern that reaches into reserved space by naming it
/// (`$JS.API.>`, `natsplug.control.>`): no request ever goes there, so the grant is a mistake.
/// A wide pattern (`>`) is accepted; the call-time check keeps it out of reserved space.
pub fn refuse_reserved_request(pattern: &str) -> Result<(), Denied> {
    let requested = Pattern::parse(pattern);
    if !requested.is_valid() {
        return Err(Denied::InvalidSubject {
            subject: shown(pattern),
            why: "not a valid subject pattern".into(),
        });
    }
    match reserved_prefix(pattern) {
        Some(prefix) => Err(Denied::ReservedRequest {
            subject: shown(pattern),
            prefix,
        }),
        None => Ok(()),
    }
}

/// Refuses a request subject: not a concrete subject the protocol carries, in reserved space
/// (always), or not matched by `allow`.
pub fn refuse_request(subject: &str, allow: &[Pattern]) -> Result<(), Denied> {
    super::refuse_invalid_subject(subject)?;
    super::refuse_wildcard(subject)?;
    if let Some(prefix) = reserved_prefix(subject) {
        return Err(Denied::ReservedRequest {
            subject: shown(subject),
            prefix,
        });
    }
    if !allow.iter().any(|p| p.matches(subject)) {
        return Err(Denied::RequestNotGranted {
            subject: shown(subject),
        });
    }
    Ok(())
}

/// Refuses a bucket name NATS KV would refuse (`[a-zA-Z0-9_-]+`): it goes into the stream name
/// `KV_<bucket>` and the subjects `$KV.<bucket>.>`.
pub fn refuse_invalid_bucket(bucket: &str) -> Result<(), Denied> {
    let valid = !bucket.is_empty()
        && bucket.len() <= 255
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Denied::InvalidBucket {
            bucket: shown(bucket),
        })
    }
}

/// Refuses a key that is not a sequence of non-empty tokens of `[-/_=a-zA-Z0-9]` joined by dots,
/// or longer than [`MAX_KEY`].
pub fn refuse_invalid_key(key: &str) -> Result<(), Denied> {
    let why = if key.is_empty() {
        "empty"
    } else if key.len() > MAX_KEY {
        "longer than 768 bytes"
    } else if key.split('.').any(str::is_empty) {
        "an empty token (a leading, trailing or double dot)"
    } else if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'))
    {
        "a character other than letters, digits and - / _ = ."
    } else {
        return Ok(());
    };
    Err(Denied::InvalidKey {
        key: shown(key),
        why: why.into(),
    })
}

/// The origin of an HTTP request: scheme, host (lowercase) and port (explicit or the scheme's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an `[http] allow` entry: `http://` or `https://`, a host, an optional port, and
    /// nothing else (a trailing `/` is tolerated).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not an origin: {why}");
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("write scheme://host[:port]"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@', '*']) || rest.is_empty() {
            return Err(bad("only a host and a port, no path, user or wildcard"));
        }
        let authority: http::uri::Authority = rest.parse().map_err(|_| bad("not a host[:port]"))?;
        Self::new(scheme, authority.host(), authority.port_u16()).map_err(|why| bad(&why))
    }

    /// The origin of a request's URI, if it has a scheme and a host.
    pub fn of(uri: &http::Uri) -> Result<Self, String> {
        let scheme = uri.scheme_str().ok_or("the request has no scheme")?;
        let host = uri.host().ok_or("the request has no host")?;
        Self::new(scheme, host, uri.port_u16())
    }

    fn new(scheme: &str, host: &str, port: Option<u16>) -> Result<Self, String> {
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("scheme {scheme:?} is not http or https")),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Refuses a request URI whose origin is not in `allow`, or that carries a user
/// (`user@host`): an origin is a scheme, a host and a port, nothing else.
pub fn refuse_origin(uri: &http::Uri, allow: &[Origin]) -> Result<(), Denied> {
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Denied::OriginNotGranted {
            origin: shown(&format!("{uri} (a user in the authority)")),
        });
    }
    match Origin::of(uri) {
        Ok(origin) if allow.contains(&origin) => Ok(()),
        Ok(origin) => Err(Denied::OriginNotGranted {
            origin: shown(&origin.to_string()),
        }),
        Err(why) => Err(Denied::OriginNotGranted {
            origin: shown(&format!("{uri} ({why})")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn allow(patterns: &[&str]) -> Vec<Pattern> {
        patterns.iter().map(|p| Pattern::parse(p)).collect()
    }

    #[test]
    fn a_request_never_reaches_reserved_space_even_when_named() {
        let wide = allow(&[">", "$JS.API.>", "$KV.>", "natsplug.>", "_INBOX.>"]);
        for reserved in [
            "$JS.API.STREAM.DELETE.IN",
            "$KV.orders.k",
            "$SYS.REQ.SERVER.PING",
            "natsplug.control.h1.reload",
            "_INBOX.natsplug.x.1",
            "_GR_.c.s.$JS.API.INFO",
        ] {
            assert!(
                matches!(
                    refuse_request(reserved, &wide),
                    Err(Denied::ReservedRequest { .. })
                ),
                "{reserved}"
            );
        }
        assert_eq!(refuse_request("pricing.quote", &wide), Ok(()));
        let narrow = allow(&["pricing.quote", "users.*"]);
        assert_eq!(refuse_request("users.42", &narrow), Ok(()));
        for refused in ["users.42.x", "pricing", "orders.new"] {
            assert!(
                matches!(
                    refuse_request(refused, &narrow),
                    Err(Denied::RequestNotGranted { .. })
                ),
                "{refused}"
            );
        }
        for invalid in ["", "users.*", "a b", "a..b", "users.>"] {
            assert!(refuse_request(invalid, &narrow).is_err(), "{invalid:?}");
        }
    }

    #[test]
    fn request_grants_naming_reserved_space_are_refused_at_load() {
        for named in [
            "$JS.API.>",
            "$KV.orders.*",
            "natsplug.control.>",
            "_INBOX.natsplug.>",
        ] {
            assert!(refuse_reserved_request(named).is_err(), "{named}");
        }
        for fine in [">", "pricing.*", "_INBOX.x"] {
            assert_eq!(refuse_reserved_request(fine), Ok(()), "{fine}");
        }
    }

    #[test]
    fn keys_and_buckets() {
        for key in ["a", "orders/42", "a.b.c", "x=1", "A-Z_09"] {
            assert_eq!(refuse_invalid_key(key), Ok(()), "{key}");
        }
        for key in [
            "",
            ".a",
            "a.",
            "a..b",
            "a.>",
            "*",
            "a b",
            "é",
            "a\r\n",
            &"k".repeat(769),
        ] {
            assert!(refuse_invalid_key(key).is_err(), "{key:?}");
        }
        assert_eq!(refuse_invalid_bucket("orders_v2-x"), Ok(()));
        for bucket in ["", "a.b", "a>", "a b", "$KV"] {
            assert!(refuse_invalid_bucket(bucket).is_err(), "{bucket:?}");
        }
    }

    #[test]
    fn origins_match_scheme_host_and_port_exactly() {
        let allow: Vec<Origin> = ["https://api.example.com", "http://127.0.0.1:8080/"]
            .iter()
            .map(|o| Origin::parse(o).unwrap())
            .collect();
        for ok in [
            "https://api.example.com/v1/x?q=1",
            "https://API.example.com:443/",
            "http://127.0.0.1:8080/quote",
        ] {
            assert_eq!(refuse_origin(&ok.parse().unwrap(), &allow), Ok(()), "{ok}");
        }
        for refused in [
            "http://api.example.com/",
            "https://api.example.com:8443/",
            "https://api.example.com.evil.test/",
            "https://evil.test/?api.example.com",
            "http://127.0.0.1:8081/",
            "http://localhost:8080/",
            "http://user@127.0.0.1:8080/",
            "/relative",
        ] {
            assert!(
                matches!(
                    refuse_origin(&refused.parse().unwrap(), &allow),
                    Err(Denied::OriginNotGranted { .. })
                ),
                "{refused}"
            );
        }
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://x/path",
            "https://*.example.com",
            "https://user@x",
            "https://",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Whatever the guest's subject and whatever the grant, a request never reaches
        /// reserved space and never goes where no grant matches.
        #[test]
        fn random_requests_never_widen_the_grant(
            subject in "[a-zA-Z0-9$_.*> -]{0,40}",
            grant in "[a-zA-Z0-9$_.*>-]{1,20}",
        ) {
            let allow = allow(&[&grant, ">"]);
            if refuse_request(&subject, &allow).is_ok() {
                prop_assert!(reserved_prefix(&subject).is_none());
                prop_assert!(super::super::refuse_invalid_subject(&subject).is_ok());
                prop_assert!(!subject.split('.').any(|t| t == "*" || t == ">"));
            }
            let narrow = [Pattern::parse(&grant)];
            if refuse_request(&subject, &narrow).is_ok() {
                prop_assert!(narrow[0].matches(&subject));
            }
        }

        /// A key that passes stays inside its bucket's subjects: `$KV.<bucket>.<key>` is a
        /// valid concrete subject whose first two tokens are `$KV` and the bucket.
        #[test]
        fn random_keys_stay_in_their_bucket(key in "[a-zA-Z0-9$_.*>/=\\- ]{0,24}") {
            if refuse_invalid_key(&key).is_ok() {
                let subject = format!("$KV.orders.{key}");
                prop_assert!(super::super::refuse_invalid_subject(&subject).is_ok());
                prop_assert!(super::super::refuse_wildcard(&subject).is_ok());
                let mut tokens = subject.split('.');
                prop_assert_eq!(tokens.next(), Some("$KV"));
                prop_assert_eq!(tokens.next(), Some("orders"));
            }
        }

        /// Random origins never panic, and a request passes only to an origin listed.
        #[test]
        fn random_uris_pass_only_to_a_listed_origin(uri in "[a-z]{0,6}://[a-z0-9.:@/?#]{0,30}") {
            let allow = [Origin::parse("http://127.0.0.1:8080").unwrap()];
            if let Ok(parsed) = uri.parse::<http::Uri>()
                && refuse_origin(&parsed, &allow).is_ok()
            {
                prop_assert_eq!(Origin::of(&parsed).unwrap(), allow[0].clone());
            }
            let _ = Origin::parse(&uri);
        }
    }
}
