//! Dead letters: the input's payload with headers saying why ([`header`]), stored in the stream
//! that captures the plugin's dead-letter subject, never sent without storage: a plugin is not
//! served until a stream captures it ([`ensure_stored`]). One that the
//! server finds too large is cut to fit ([`DeadLetter::cut`]): first without the payload and
//! the input's headers, then with its reason and subject cut short, so it can always be stored.

use bytes::Bytes;

use crate::message::{Headers, Message};
use crate::policy::headers::{is_the_hosts, steers_the_server};

/// Header names on dead-lettered messages.
pub mod header {
    /// The plugin that gave up on the message.
    pub const PLUGIN: &str = "Natsplug-Plugin";
    /// Why, in words.
    pub const REASON: &str = "Natsplug-Reason";
    /// The kind: reject, fuel, deadline, memory, panic, trap, retries-exhausted, publish...
    pub const KIND: &str = "Natsplug-Error-Kind";
    /// Deliveries so far.
    pub const DELIVERED: &str = "Natsplug-Delivered";
    /// The input's stream.
    pub const STREAM: &str = "Natsplug-Stream";
    /// The input's stream sequence.
    pub const SEQUENCE: &str = "Natsplug-Sequence";
    /// The input's subject.
    pub const SUBJECT: &str = "Natsplug-Subject";
    /// Set when the input was too large to dead-letter whole: its payload size. The original
    /// is still in its stream at `Natsplug-Stream` / `Natsplug-Sequence`.
    pub const PAYLOAD_OMITTED: &str = "Natsplug-Payload-Omitted";
}

/// How long a reason (and the subject header) is kept at the second cut and the third.
const CUTS: [usize; 2] = [1024, 64];
/// What ends a reason or a subject that was cut.
pub const CUT_MARKER: &str = "…(cut)";

/// One input's dead letter, as it goes out.
pub struct DeadLetter<'a> {
    plugin: &'a str,
    input: &'a Message,
    kind: &'a str,
    reason: &'a str,
    /// How many times it was cut to fit.
    cuts: usize,
}

impl<'a> DeadLetter<'a> {
    /// The dead letter of `input`, whole.
    pub fn new(plugin: &'a str, input: &'a Message, kind: &'a str, reason: &'a str) -> Self {
        Self {
            plugin,
            input,
            kind,
            reason,
            cuts: 0,
        }
    }

    /// Cuts it to fit a smaller `max_payload`; false when there is nothing left to cut.
    pub fn cut(&mut self) -> bool {
        if self.cuts > CUTS.len() {
            return false;
        }
        self.cuts += 1;
        true
    }

    /// Its `Nats-Msg-Id`: one per input, so a dead letter stored twice (a retry after a lost
    /// publish ack, two hosts seeing the same input) is kept once.
    pub fn msg_id(&self) -> Option<String> {
        self.input.delivery.as_ref().map(|d| {
            format!(
                "natsplug-dead:{}:{}:{}",
                d.stream, d.consumer, d.stream_sequence
            )
        })
    }

    /// Its payload: the input's, or nothing once cut.
    pub fn payload(&self) -> Bytes {
        if self.cuts == 0 {
            self.input.payload.clone()
        } else {
            Bytes::new()
        }
    }

    /// Its headers: the input's own (until cut; never its `Nats-*` ones, which the dead-letter
    /// stream would act on, nor its `Natsplug-*` ones, which a sender must not forge) plus the
    /// `Natsplug-*` headers saying why.
    pub fn headers(&self) -> async_nats::HeaderMap {
        let kept = match self.cuts {
            0 => Headers(
                self.input
                    .headers
                    .0
                    .iter()
                    .filter(|(name, _)| !is_the_hosts(name) && !steers_the_server(name))
                    .cloned()
                    .collect(),
            ),
            _ => Headers::default(),
        };
        let mut headers = kept.to_nats();
        let cut = |text: &str| match self.cuts.checked_sub(2).and_then(|i| CUTS.get(i)) {
            Some(&max) => cut_to(text, max),
            None => header_value(text),
        };
        headers.insert(header::PLUGIN, self.plugin);
        headers.insert(header::KIND, self.kind);
        headers.insert(header::REASON, cut(self.reason).as_str());
        headers.insert(header::SUBJECT, cut(&self.input.subject).as_str());
        let delivered = self.input.delivered();
        headers.insert(header::DELIVERED, delivered.to_string().as_str());
        if let Some(d) = &self.input.delivery {
            headers.insert(header::STREAM, d.stream.as_str());
            headers.insert(header::SEQUENCE, d.stream_sequence.to_string().as_str());
        }
        if self.cuts > 0 {
            headers.insert(
                header::PAYLOAD_OMITTED,
                self.input.payload.len().to_string().as_str(),
            );
        }
        headers
    }
}

/// Makes sure a stream stores what is published to the dead-letter `subject`, and names it. With
/// no stream capturing it, the host creates (or extends) `create_in` when the operator named
/// one (`host.dead_letter_stream`); else the error says what to do, and the plugin is not
/// served until it is done.
pub async fn ensure_stored(
    js: &async_nats::jetstream::Context,
    subject: &str,
    create_in: Option<&str>,
) -> anyhow::Result<String> {
    use async_nats::jetstream::stream::Config;
    // Workers start together: one at a time, so two plugins extending the stream do not each
    // write back a subject list without the other's subject.
    static EXTENDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if let Ok(stream) = js.stream_by_subject(subject).await {
        return Ok(stream);
    }
    let Some(name) = create_in else {
        anyhow::bail!(
            "no stream captures the dead-letter subject {subject:?}, so a dead letter could not \
             be stored: create one (e.g. `nats stream add DEAD --subjects {subject:?}`), set \
             publish.dead_letter to a stored subject, or set host.dead_letter_stream"
        );
    };
    let _one = EXTENDING.lock().await;
    let mut stream = js
        .get_or_create_stream(Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            description: Some("natsplug dead letters".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the dead-letter stream {name:?}: {e}"))?;
    let mut config = stream.info().await?.config.clone();
    if !config.subjects.iter().any(|s| s == subject) {
        config.subjects.push(subject.to_owned());
        js.update_stream(config).await.map_err(|e| {
            anyhow::anyhow!("adding {subject:?} to the dead-letter stream {name:?}: {e}")
        })?;
    }
    // Another host may have written the list at the same time: served only if it stuck.
    let stored = js.stream_by_subject(subject).await.map_err(|e| {
        anyhow::anyhow!("{subject:?} is not stored after adding it to {name:?}: {e}")
    })?;
    tracing::info!(
        stream = stored,
        subject,
        "dead letters stored in the host's dead-letter stream"
    );
    Ok(stored)
}

/// `text` as a header value: one line.
pub fn header_value(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// `text` as a header value of at most about `max` bytes, with [`CUT_MARKER`] if it was longer.
fn cut_to(text: &str, max: usize) -> String {
    let line = header_value(text);
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARKER}", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_none_of_the_inputs_server_or_host_headers() {
        let mut input = Message::new("in.x", "p");
        for (name, value) in [
            ("keep", "yes"),
            ("Nats-Expected-Stream", "OTHER"),
            ("nats-rollup", "all"),
            ("natsplug-reason", "forged"),
            ("Natsplug-Payload-Omitted", "0"),
        ] {
            input.headers.append(name, value);
        }
        let headers = DeadLetter::new("p", &input, "reject", "real").headers();
        let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "Natsplug-Delivered",
                "Natsplug-Error-Kind",
                "Natsplug-Plugin",
                "Natsplug-Reason",
                "Natsplug-Subject",
                "keep"
            ]
        );
        assert_eq!(headers.get(header::REASON).unwrap().as_str(), "real");
    }

    #[test]
    fn each_cut_leaves_less_and_keeps_why() {
        let mut input = Message::new("in.x", "p");
        input.headers.append("keep", "yes");
        input.payload = Bytes::from(vec![b'x'; 5000]);
        let reason = "é".repeat(3000);
        let mut letter = DeadLetter::new("p", &input, "reject", &reason);
        let size = |l: &DeadLetter<'_>| {
            l.payload().len()
                + l.headers()
                    .iter()
                    .map(|(n, v)| {
                        n.to_string().len() + v.iter().map(|v| v.as_str().len()).sum::<usize>()
                    })
                    .sum::<usize>()
        };
        let mut sizes = vec![size(&letter)];
        while letter.cut() {
            let headers = letter.headers();
            assert_eq!(
                headers.get(header::PAYLOAD_OMITTED).unwrap().as_str(),
                "5000"
            );
            assert!(headers.get("keep").is_none());
            assert_eq!(headers.get(header::KIND).unwrap().as_str(), "reject");
            let reason = headers.get(header::REASON).unwrap().as_str();
            assert_eq!(
                reason.ends_with(CUT_MARKER),
                sizes.len() > 1,
                "{}",
                reason.len()
            );
            assert!(letter.payload().is_empty());
            sizes.push(size(&letter));
        }
        assert_eq!(sizes.len(), 4, "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
        assert!(sizes[3] < 400, "{sizes:?}");
    }

    proptest::proptest! {
        /// Whatever a guest puts in its reason and a sender in its subject and headers, every
        /// cut is a sendable header set that only shrinks, down to a small bound.
        #[test]
        fn any_reason_and_subject_cut_to_sendable_bounded_headers(
            reason in ".{0,3000}",
            subject in "[^ ]{1,600}",
            name in "[!-9;-~]{1,20}",
            value in ".{0,100}",
        ) {
            let mut input = Message::new(subject.as_str(), "payload");
            input.headers.append(name.as_str(), value.as_str());
            let mut letter = DeadLetter::new("p", &input, "reject", &reason);
            let mut cuts = 0;
            loop {
                let headers = letter.headers();
                for (name, values) in headers.iter() {
                    for v in values {
                        let v = v.as_str();
                        proptest::prop_assert!(!v.contains(['\r', '\n']), "{name}: {v:?}");
                    }
                }
                let reason_len = headers.get(header::REASON).map_or(0, |v| v.as_str().len());
                let subject_len = headers.get(header::SUBJECT).map_or(0, |v| v.as_str().len());
                if cuts == 3 {
                    proptest::prop_assert!(reason_len <= CUTS[1] + CUT_MARKER.len());
                    proptest::prop_assert!(subject_len <= CUTS[1] + CUT_MARKER.len());
                    proptest::prop_assert!(letter.payload().is_empty());
                }
                if !letter.cut() {
                    break;
                }
                cuts += 1;
            }
            proptest::prop_assert_eq!(cuts, 3);
        }
    }
}
