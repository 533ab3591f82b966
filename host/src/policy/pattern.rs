//! NATS subject patterns: literal tokens, `*` for one token, a final `>` for one or more.
//!
//! Three questions, kept apart because a grant check needs a different one each time: does a
//! pattern [match](Pattern::matches) a concrete subject (a publish), do two patterns
//! [overlap](Pattern::overlaps) (could a subscription receive anything of a reserved space),
//! and does one [contain](Pattern::contains) the other (is every subject of a request inside a
//! grant). A malformed pattern (an empty token, `>` before the end, whitespace) matches,
//! overlaps and contains nothing, so a typo in a grant can never widen it.

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: any one token.
    Any,
}

/// A parsed subject pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
    /// Ends in `>`: one or more tokens after `tokens`.
    tail: bool,
    /// False when the text was malformed: then the pattern matches nothing.
    valid: bool,
    text: String,
}

impl Pattern {
    /// Parses `text`; a malformed pattern parses too, and matches nothing.
    pub fn parse(text: &str) -> Self {
        let mut tokens = Vec::new();
        let mut tail = false;
        let mut valid = !text.is_empty();
        let parts: Vec<&str> = text.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            match *part {
                ">" if i + 1 == parts.len() => tail = true,
                "*" => tokens.push(Token::Any),
                part if part.is_empty() || part.contains(['>', '*']) || !is_token(part) => {
                    valid = false
                }
                literal => tokens.push(Token::Literal(literal.to_owned())),
            }
        }
        Self {
            tokens,
            tail,
            valid,
            text: text.to_owned(),
        }
    }

    /// Whether the text was a well-formed pattern.
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern is one literal subject (no wildcard).
    pub fn is_literal(&self) -> bool {
        self.valid && !self.tail && self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether the concrete `subject` is one of the pattern's subjects. A subject with a
    /// wildcard token is not concrete and matches only where the pattern has that same literal.
    pub fn matches(&self, subject: &str) -> bool {
        if !self.valid {
            return false;
        }
        let mut parts = subject.split('.');
        for token in &self.tokens {
            match (token, parts.next()) {
                (_, None) | (_, Some("")) => return false,
                (Token::Any, Some(_)) => {}
                (Token::Literal(literal), Some(part)) if literal == part => {}
                (Token::Literal(_), Some(_)) => return false,
            }
        }
        match parts.next() {
            None => !self.tail,
            Some("") => false,
            Some(_) => self.tail && parts.all(|p| !p.is_empty()),
        }
    }

    /// Whether some concrete subject is matched by both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        if !self.valid || !other.valid {
            return false;
        }
        let both = self
            .tokens
            .iter()
            .zip(&other.tokens)
            .all(|pair| match pair {
                (Token::Any, _) | (_, Token::Any) => true,
                (Token::Literal(a), Token::Literal(b)) => a == b,
            });
        both && match self.tokens.len().cmp(&other.tokens.len()) {
            // Same length: both end there, or both go on past it.
            std::cmp::Ordering::Equal => self.tail == other.tail,
            // Only a `>` reaches past the shorter pattern's end.
            std::cmp::Ordering::Less => self.tail,
            std::cmp::Ordering::Greater => other.tail,
        }
    }

    /// Whether every subject `other` matches is also matched by `self`.
    pub fn contains(&self, other: &Pattern) -> bool {
        if !self.valid || !other.valid {
            return false;
        }
        if other.tail && !self.tail {
            return false;
        }
        let long_enough = if self.tail {
            // `>` needs at least one token past the grant's own.
            let least = self.tokens.len() + usize::from(!other.tail);
            other.tokens.len() >= least
        } else {
            other.tokens.len() == self.tokens.len()
        };
        long_enough
            && self
                .tokens
                .iter()
                .zip(&other.tokens)
                .all(|pair| match pair {
                    (Token::Any, _) => true,
                    (Token::Literal(a), Token::Literal(b)) => a == b,
                    (Token::Literal(_), Token::Any) => false,
                })
    }

    /// Whether the pattern's first tokens are literally `prefix`'s tokens (`prefix` is a
    /// subject prefix with its trailing dot, `$KV.`): a grant that names a reserved space.
    pub fn names(&self, prefix: &str) -> bool {
        let wanted = prefix.trim_end_matches('.').split('.');
        let mut have = self.tokens.iter();
        self.valid
            && wanted
                .into_iter()
                .all(|w| matches!(have.next(), Some(Token::Literal(l)) if l == w))
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `token` can stand in a subject: no whitespace and no control characters (the
/// protocol separates fields with spaces and lines with CR LF).
pub(crate) fn is_token(token: &str) -> bool {
    if token.is_ascii() {
        // The common case, a byte at a time: space and below, and DEL.
        return !token.is_empty() && token.bytes().all(|b| b > b' ' && b != 0x7f);
    }
    !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text)
    }

    #[test]
    fn matching_follows_nats_wildcards() {
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.b.c"));
        assert!(p("a.*").matches("a.b"));
        assert!(!p("a.*").matches("a.b.c"));
        assert!(!p("a.*").matches("a"));
        assert!(p("a.>").matches("a.b.c"));
        assert!(!p("a.>").matches("a"));
        assert!(p(">").matches("x"));
        assert!(p("*.>").matches("x.y"));
        assert!(!p("*.>").matches("x"));
        assert!(!p("a.*.c").matches("a.b.d"));
        assert!(!p("a.>").matches("a..b"));
        assert!(!p("a.*").matches("a."));
    }

    #[test]
    fn malformed_patterns_match_nothing() {
        for bad in [
            "", "a..b", ".a", "a.", "a.>.b", "a b", "a.b*", "a.>x", "a\r\n.b", ">.>",
        ] {
            let bad = p(bad);
            assert!(!bad.is_valid(), "{bad:?}");
            assert!(!bad.matches("a.b"));
            assert!(!bad.overlaps(&p(">")));
            assert!(!p(">").contains(&bad));
            assert!(!bad.contains(&p("a.b")));
        }
    }

    #[test]
    fn overlap_and_containment_differ() {
        assert!(p("a.*").overlaps(&p("a.>")));
        assert!(!p("a.*").contains(&p("a.>")));
        assert!(p("a.>").contains(&p("a.*")));
        assert!(p(">").overlaps(&p("$JS.>")));
        assert!(p("*.>").overlaps(&p("$JS.>")));
        assert!(!p("a.*").overlaps(&p("b.*")));
        assert!(!p("a").overlaps(&p("a.>")));
        assert!(!p("*.>").contains(&p("a")));
        assert!(p("*.>").contains(&p("a.b")));
        assert!(p("natsplug.*.>").overlaps(&p("natsplug.control.>")));
    }

    #[test]
    fn names_means_literal_tokens() {
        assert!(p("$KV.orders.>").names("$KV."));
        assert!(p("$KV.>").names("$KV."));
        assert!(!p("*.orders.>").names("$KV."));
        assert!(!p(">").names("$KV."));
        assert!(p("natsplug.control.h1.list").names("natsplug.control."));
        assert!(!p("natsplug.*.h1.list").names("natsplug.control."));
    }

    /// Subjects and patterns from a small alphabet, so that random ones meet often.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("$JS".to_owned()),
            Just("*".to_owned()),
            Just(">".to_owned()),
            Just(String::new()),
            "[a-c$ .*>\r\n\u{e9}]{1,3}",
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(token(), 1..5).prop_map(|t| t.join("."))
    }

    fn subject() -> impl Strategy<Value = String> {
        let token = prop_oneof![Just("a"), Just("b"), Just("c"), Just("$JS")];
        prop::collection::vec(token, 1..5).prop_map(|t| t.join("."))
    }

    proptest! {
        #[test]
        fn random_patterns_never_panic(pattern in text(), other in text(), subject in text()) {
            let (a, b) = (p(&pattern), p(&other));
            let _ = (a.matches(&subject), a.overlaps(&b), a.contains(&b), a.names("$JS."));
        }

        #[test]
        fn containment_implies_matching(grant in text(), request in text(), s in subject()) {
            let (grant, request) = (p(&grant), p(&request));
            if grant.contains(&request) && request.matches(&s) {
                prop_assert!(grant.matches(&s));
            }
        }

        #[test]
        fn a_subject_both_match_means_overlap(a in text(), b in text(), s in subject()) {
            let (a, b) = (p(&a), p(&b));
            if a.matches(&s) && b.matches(&s) {
                prop_assert!(a.overlaps(&b) && b.overlaps(&a));
            }
        }

        #[test]
        fn a_literal_pattern_matches_only_itself(s in subject(), t in subject()) {
            prop_assert!(p(&s).is_literal());
            prop_assert_eq!(p(&s).matches(&t), s == t);
        }
    }
}
