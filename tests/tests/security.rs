//! The boundary against hostile input, against a real nats-server: a requester that forges its
//! reply subject, a guest that writes headers to steer the server or that the protocol cannot
//! carry, and a guest that floods the host with outputs and log lines. Each test fails on a
//! host without the checks of `natsplug::policy`.

use std::time::Duration;

use async_nats::jetstream;
use natsplug_tests::{
    HostProcess, PluginsDir, TestHost, admin_get, consumer_info, create_stream, free_addr,
    jetstream_setup, publish_all, sample, stream_count, stream_messages, wait_until,
};

/// The number a host's `/metrics` shows for `series`, 0 when it has none.
async fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    match admin_get(admin, "/metrics").await {
        Some((200, text)) => sample(&text, series).unwrap_or(0.0),
        _ => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_reply_subject_cannot_make_the_host_act_on_reserved_space() {
    let (server, client, js) = jetstream_setup().await;
    create_stream(&js, "VICTIM", &["victim.>"]).await;
    create_stream(&js, "PURGED", &["purged.>"]).await;
    let three: Vec<String> = (0..3).map(|i| format!("kept {i}")).collect();
    publish_all(&js, "victim.x", &three).await;
    publish_all(&js, "purged.x", &three).await;
    // A message another consumer holds unacked: its ack subject is what a forged reply aims at.
    let victim = js.get_stream("VICTIM").await.unwrap();
    let held = victim
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("held".into()),
            ack_wait: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = held.fetch().max_messages(1).messages().await.unwrap();
    let pending = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();
    let ack_subject = pending.reply.clone().unwrap().to_string();
    assert!(ack_subject.starts_with("$JS.ACK."), "{ack_subject}");

    let plugins = PluginsDir::new();
    plugins
        .add(
            "poison",
            "poison",
            "[subscribe]\nsubjects = [\"svc.poison\"]\n[publish]\ndead_letter = \"dead.svc\"\n",
        )
        .add(
            "probe",
            "probe",
            "[subscribe]\nsubjects = [\"svc.probe\"]\n",
        );
    let admin = free_addr();
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.admin.listen = Some(admin);
    let host_id = config.host.id.clone().unwrap();
    let host = TestHost::start(config);
    wait_until(Duration::from_secs(10), "the probe's reply", || async {
        client
            .request("svc.probe", "reply".into())
            .await
            .is_ok_and(|r| &r.payload[..] == b"pong")
    })
    .await;

    // The host's error answer (empty payload, as a delete, purge or ack needs) and a handler's
    // reply output, each aimed at reserved space.
    let denied = |plugin: &str| {
        format!("natsplug_policy_denials_total{{plugin=\"{plugin}\",kind=\"reply-subject\"}}")
    };
    let forged = [
        ("svc.poison", "$JS.API.STREAM.DELETE.VICTIM", "bad"),
        ("svc.poison", "$JS.API.STREAM.PURGE.PURGED", "bad"),
        ("svc.poison", ack_subject.as_str(), "bad"),
        ("svc.poison", "$KV.config.key", "bad"),
        ("svc.poison", "$SYS.REQ.SERVER.PING", "bad"),
        (
            "svc.poison",
            &format!("natsplug.control.{host_id}.reload"),
            "bad",
        ),
        ("svc.poison", "_INBOX.natsplug.forged.1", "bad"),
        ("svc.probe", "$JS.API.STREAM.DELETE.VICTIM", "reply"),
        // Outside reserved space but not an inbox: a stream captures it.
        ("svc.probe", "victim.forged", "reply"),
    ];
    for (subject, reply, payload) in forged {
        client
            .publish_with_reply(subject, reply.to_owned(), payload.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // nats-server drops a client's message whose reply is a `$JS.ACK.` subject before any
    // subscriber sees it, so the host refuses eight replies, not nine.
    wait_until(Duration::from_secs(20), "eight replies refused", || async {
        metric(admin, &denied("poison")).await == 6.0
            && metric(admin, &denied("probe")).await == 2.0
    })
    .await;

    // A requester with an ordinary inbox still gets both answers.
    let answer = client.request("svc.poison", "bad".into()).await.unwrap();
    assert_eq!(
        answer
            .headers
            .unwrap()
            .get("Natsplug-Error-Kind")
            .unwrap()
            .as_str(),
        "reject"
    );
    let pong = client.request("svc.probe", "reply".into()).await.unwrap();
    assert_eq!(&pong.payload[..], b"pong");
    host.stop().await;

    assert_eq!(
        stream_count(&js, "VICTIM").await,
        3,
        "the stream survives, whole"
    );
    assert_eq!(stream_count(&js, "PURGED").await, 3, "nothing purged");
    let info = consumer_info(&js, "VICTIM", "held").await;
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.delivered.consumer_sequence
        ),
        (1, 2, 1),
        "the other consumer's message is still unacked"
    );
    // Six forged requests and one real one were rejected by poison: seven dead letters.
    assert_eq!(stream_count(&js, "DEAD").await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_steer_the_server_or_break_the_protocol_are_refused_typed() {
    let (server, _client, js) = jetstream_setup().await;
    js.create_stream(jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe.out".into()],
        allow_rollup: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let earlier: Vec<String> = (0..3).map(|i| format!("earlier {i}")).collect();
    publish_all(&js, "probe.out", &earlier).await;
    let plugins = PluginsDir::new();
    let manifest = |subject: &str, grant: &str| {
        format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"{subject}\"]\n[publish]\n\
             allow = [\"probe.out\"]\ndead_letter = \"dead.probe\"\nheaders = [{grant}]\n"
        )
    };
    plugins
        .add("probe", "probe", &manifest("in.probe", ""))
        .add("roller", "probe", &manifest("in.roller", "\"Nats-Rollup\""));
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    let hostile = [
        ("header:Nats-Rollup=sub", "forbidden-header", "Nats-Rollup"),
        (
            "header:nats-expected-stream=OTHER",
            "forbidden-header",
            "nats-expected-stream",
        ),
        ("header:Bad Name=v", "invalid-header", "Bad Name"),
        ("header:Bad:Name=v", "invalid-header", "Bad:Name"),
        ("header:caf\u{e9}=v", "invalid-header", "caf\u{e9}"),
        ("header:X-Ok=one\r\ntwo", "invalid-header", "X-Ok"),
    ];
    let mut inputs: Vec<String> = hostile.iter().map(|(p, _, _)| p.to_string()).collect();
    // The dedup id the host sets replaces a copied one: two outputs, not one deduplicated.
    inputs.extend([
        "header:Nats-Msg-Id=copied".into(),
        "header:Nats-Msg-Id=copied".into(),
    ]);
    publish_all(&js, "in.probe", &inputs).await;
    wait_until(
        Duration::from_secs(30),
        "6 dead letters and 2 outputs",
        || async { stream_count(&js, "DEAD").await == 6 && stream_count(&js, "PROBE").await == 5 },
    )
    .await;
    let info = consumer_info(&js, "IN", "probe").await;
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.delivered.consumer_sequence
        ),
        (0, 0, 8),
        "each input delivered once and settled"
    );
    let dead = stream_messages(&js, "DEAD").await;
    for (input, kind, name) in hostile {
        let m = dead
            .iter()
            .find(|m| m.payload == input)
            .unwrap_or_else(|| panic!("no dead letter for {input:?}"));
        assert_eq!(m.header("Natsplug-Error-Kind"), kind, "{input:?}");
        let reason = m.header("Natsplug-Reason");
        assert!(reason.contains(&format!("{name:?}")), "{input:?}: {reason}");
        assert_eq!(m.header("Natsplug-Delivered"), "1");
    }
    let kept = stream_messages(&js, "PROBE").await;
    assert_eq!(
        kept.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(),
        ["earlier 0", "earlier 1", "earlier 2", "header", "header"],
        "no rollup purged the earlier messages"
    );
    let ids: Vec<&str> = kept[3..].iter().map(|m| m.header("Nats-Msg-Id")).collect();
    assert!(
        ids.iter().all(|id| id.starts_with("IN:probe:")) && ids[0] != ids[1],
        "the host's own dedup ids: {ids:?}"
    );

    // Granted by name, the same header does act: the grant is what decides.
    publish_all(&js, "in.roller", &["header:Nats-Rollup=sub".into()]).await;
    wait_until(Duration::from_secs(20), "the granted rollup", || async {
        stream_count(&js, "PROBE").await == 1
    })
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_flood_and_a_log_flood_stay_within_the_hosts_bounds() {
    let (server, _client, js) = jetstream_setup().await;
    create_stream(&js, "PROBE", &["probe.out"]).await;
    let plugins = PluginsDir::new();
    plugins.add(
        "probe",
        "probe",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.probe\"]\nconcurrency = 1\n[publish]\n\
         allow = [\"probe.out\"]\ndead_letter = \"dead.probe\"\n",
    );
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("host.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut host = HostProcess::spawn_logging(&server.url(), plugins.path(), &[], log);
    // 200 x 8 MiB from one buffer, then 2,000 lines of 256 KiB through `log` and through stderr.
    let floods = [
        "publish:200:8388608".to_owned(),
        "log:2000:262144".to_owned(),
        "stderr:2000:262144".to_owned(),
    ];
    publish_all(&js, "in.probe", &floods).await;
    wait_until(
        Duration::from_secs(120),
        "a dead letter and 2 outputs",
        || async { stream_count(&js, "DEAD").await == 1 && stream_count(&js, "PROBE").await == 2 },
    )
    .await;
    let peak = host.peak_rss();
    host.terminate();
    host.wait(Duration::from_secs(20)).await;

    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(dead[0].header("Natsplug-Error-Kind"), "output-limit");
    assert_eq!(
        dead[0].header("Natsplug-Reason"),
        "plugin \"probe\": the outputs of one message passed its limits.output_bytes of \
         16777216 bytes"
    );
    let outputs = stream_messages(&js, "PROBE").await;
    let mut got: Vec<&str> = outputs.iter().map(|m| m.payload.as_str()).collect();
    got.sort();
    assert_eq!(got, ["logged 2000", "logged 2000"]);
    let info = consumer_info(&js, "IN", "probe").await;
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.delivered.consumer_sequence
        ),
        (0, 0, 3)
    );

    // Each flood wrote 500 MiB before; now 64 KiB of lines a message and a line saying so.
    let log_bytes = std::fs::metadata(&log_path).unwrap().len();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(log_bytes < 512 << 10, "the host logged {log_bytes} bytes");
    assert_eq!(
        text.matches("log lines dropped").count(),
        2,
        "one summary per flooding message"
    );
    // The guest's buffer is 8 MiB; the host held 1.6 GiB of copies before.
    assert!(peak < 400 << 20, "host peak RSS {} MiB", peak >> 20);
    println!(
        "flood: host peak RSS {} MiB, host log {} KiB",
        peak >> 20,
        log_bytes >> 10
    );
}

/// Publishes `payload` to `subject` with one raw header line, over a connection of its own
/// that speaks the protocol directly: async-nats would refuse to build such a message.
async fn publish_raw_header(port: u16, subject: &str, header_line: &str, payload: &str) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    let mut info = String::new();
    stream.read_line(&mut info).await.unwrap();
    assert!(info.starts_with("INFO "), "{info}");
    let headers = format!("NATS/1.0\r\n{header_line}\r\n\r\n");
    let frame = format!(
        "CONNECT {{\"headers\":true,\"verbose\":false}}\r\nHPUB {subject} {} {}\r\n{headers}{payload}\r\nPING\r\n",
        headers.len(),
        headers.len() + payload.len()
    );
    stream.get_mut().write_all(frame.as_bytes()).await.unwrap();
    let mut pong = String::new();
    stream.read_line(&mut pong).await.unwrap();
    assert_eq!(pong, "PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_whose_header_the_client_cannot_parse_does_not_take_the_connection_down() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\nack_wait = \"2s\"\n\
         [publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n",
    );
    // The server stores these as they came; upstream async-nats drops the connection on
    // each (and panics on the lone CR).
    let hostile = [
        ("caf\u{e9}: x", "non-ascii name"),
        ("Bad Name: x", "a space in the name"),
        ("no colon at all", "no colon"),
        ("X-Cr: a\rb", "a lone CR in the value"),
    ];
    for (line, payload) in hostile {
        publish_raw_header(server.port(), "in.upper", line, payload).await;
    }
    let normal: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    publish_all(&js, "in.upper", &normal).await;
    let admin = free_addr();
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.admin.listen = Some(admin);
    let host = TestHost::start(config);
    wait_until(Duration::from_secs(30), "14 outputs", || async {
        stream_count(&js, "OUT").await >= 14
    })
    .await;
    // Past three ack_waits: a message that had dropped the connection would be back by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = admin_get(admin, "/metrics").await.unwrap().1;
    let reconnects: f64 = text
        .lines()
        .filter(|l| l.starts_with("natsplug_connection_reconnects_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    host.stop().await;
    assert_eq!(reconnects, 0.0, "connections dropped by hostile inputs");
    let outputs = stream_messages(&js, "OUT").await;
    let mut got: Vec<&str> = outputs.iter().map(|m| m.payload.as_str()).collect();
    got.sort();
    let mut want: Vec<String> = hostile.iter().map(|(_, p)| p.to_uppercase()).collect();
    want.extend(normal.iter().map(|n| n.to_uppercase()));
    want.sort();
    assert_eq!(
        got, want,
        "each input handled once, the unparsable header left out"
    );
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.delivered.consumer_sequence
        ),
        (0, 0, 14)
    );
    // What could not be parsed of the hostile inputs' headers is left out.
    for m in &outputs {
        assert!(m.headers.iter().all(|(name, _)| {
            let name: &str = name.as_ref();
            name != "Bad Name" && !name.contains('\u{e9}')
        }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_delivery_on_the_pull_inbox_is_dropped_not_handled_or_acked() {
    let (server, client, js) = jetstream_setup().await;
    create_stream(&js, "VICTIM", &["victim.>"]).await;
    // The attacker watches the pull requests to learn the host's inbox, and the subject it
    // steers the host's answer to.
    let mut requests = client
        .subscribe("$JS.API.CONSUMER.MSG.NEXT.IN.uppercase")
        .await
        .unwrap();
    let mut kv = client.subscribe("$KV.config.>").await.unwrap();
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\n[publish]\n\
         allow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n",
    );
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    let request = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut requests),
    )
    .await
    .unwrap()
    .unwrap();
    let inbox = request.reply.unwrap().to_string();
    assert!(inbox.starts_with("_INBOX.natsplug."), "{inbox}");
    // Replies that are no ack subject: the host terminated such a "delivery" by sending +TERM
    // there, into a KV key or a stream. (A `$JS.ACK.` reply the server itself drops.)
    for reply in ["$KV.config.admin", "victim.forged"] {
        client
            .publish_with_reply(inbox.clone(), reply.to_owned(), "forged".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    publish_all(&js, "in.upper", &["real".into()]).await;
    wait_until(Duration::from_secs(20), "the real output", || async {
        stream_count(&js, "OUT").await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.stop().await;
    let outputs = stream_messages(&js, "OUT").await;
    let got: Vec<&str> = outputs.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(got, ["REAL"]);
    assert_eq!(
        stream_count(&js, "VICTIM").await,
        0,
        "no +TERM stored in a stream"
    );
    let steered = tokio::time::timeout(
        Duration::from_millis(200),
        futures::StreamExt::next(&mut kv),
    )
    .await;
    assert!(
        steered.is_err(),
        "the host published to $KV.config.admin: {steered:?}"
    );
}
