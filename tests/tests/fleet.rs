//! A fleet: `natsplug` hosts (the binary, so one can be SIGKILLed) on a 3-node JetStream
//! cluster with R3 streams, all on one durable consumer. They share the work, and faults lose
//! nothing: a host SIGKILLed under load, the stream leader's node killed under load and
//! brought back (hosts connected to it move on to the others). And plugins shipped through a
//! NATS Object Store bucket: pushed, rolled out and rolled back on every host under load.
//! Exact counts: every input gets exactly one stored output, nothing is dead-lettered,
//! nothing is left pending.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use natsplug_tests::cluster::NatsCluster;
use natsplug_tests::{
    HostProcess, PluginsDir, Stored, admin_get, free_addr, publish_all, stream_count,
    stream_messages, wait_until,
};

/// Creates an R3 stream.
async fn create_r3(js: &jetstream::Context, name: &str, subject: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot create {name}: {e}"));
}

/// Publishes with a message id, again and again (30 s at most) until the stream acks it: a
/// leader election in the middle loses nothing and, thanks to the id, stores nothing twice.
async fn publish_surely(js: &jetstream::Context, subject: &str, payload: String) {
    let started = Instant::now();
    loop {
        let sent = js
            .send_publish(
                subject.to_owned(),
                jetstream::message::PublishMessage::build()
                    .message_id(payload.clone())
                    .payload(payload.clone().into()),
            )
            .await;
        let acked = match sent {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match acked {
            Ok(()) => return,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot publish {payload}: {e}"),
        }
    }
}

/// Publishes `m0`..`m{inputs-1}` to `subject` in a task, surely (see [`publish_surely`]),
/// pausing `pause` after every `every` of them: inputs that go on arriving while a test acts.
fn publish_paced(
    js: &jetstream::Context,
    subject: &'static str,
    inputs: usize,
    every: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let js = js.clone();
    tokio::spawn(async move {
        for i in 0..inputs {
            publish_surely(&js, subject, format!("m{i}")).await;
            if i % every == 0 {
                tokio::time::sleep(pause).await;
            }
        }
    })
}

/// One plugins folder per host: `uppercase` on the shared durable, marking its outputs with
/// the host's name.
fn host_plugins(host: &str) -> PluginsDir {
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        &format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.fleet\"]\ndurable = \"fleet\"\n\
             concurrency = 16\nack_wait = \"2s\"\nmax_deliver = -1\n\
             [publish]\nallow = [\"out.fleet\"]\n\
             [config]\noutput = \"out.fleet\"\nmarker = \"{host}\"\n"
        ),
    );
    plugins
}

/// Starts `natsplug run` on `urls` serving `plugins`, its admin endpoints on a free port.
fn spawn_host(urls: &str, plugins: &PluginsDir) -> (HostProcess, SocketAddr) {
    let admin = free_addr();
    let host = HostProcess::spawn(urls, plugins.path(), &["--admin", &admin.to_string()]);
    (host, admin)
}

/// Waits until every host is ready (`/readyz`: connected, its plugins loaded, every consumer
/// set up). Inputs published before would measure start-up, not sharing: on a busy machine a
/// host that set its consumer up late found the work done.
async fn wait_ready(admins: &[SocketAddr]) {
    for &admin in admins {
        wait_until(Duration::from_secs(60), "every host ready", || async {
            admin_get(admin, "/readyz")
                .await
                .is_some_and(|(status, _)| status == 200)
        })
        .await;
    }
}

/// Waits until every input has its output and the consumer has nothing pending; checks that
/// each input got exactly one output and nothing was dead-lettered. Gives the outputs.
async fn all_handled_once(js: &jetstream::Context, inputs: usize) -> Vec<Stored> {
    wait_until(Duration::from_secs(120), "every output", || async {
        stream_count(js, "OUT").await >= inputs as u64
    })
    .await;
    wait_until(Duration::from_secs(60), "nothing pending", || async {
        let Ok(stream) = js.get_stream("IN").await else {
            return false;
        };
        stream
            .consumer_info("fleet")
            .await
            .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
    })
    .await;
    let outputs = stream_messages(js, "OUT").await;
    assert_eq!(outputs.len(), inputs, "one output per input, no more");
    let payloads: BTreeSet<String> = outputs.iter().map(|o| o.payload.clone()).collect();
    let want: BTreeSet<String> = (0..inputs).map(|i| format!("M{i}")).collect();
    assert_eq!(payloads, want);
    assert_eq!(stream_count(js, "NATSPLUG_DEAD").await, 0, "no dead letter");
    outputs
}

fn by_host(outputs: &[Stored]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in outputs {
        *counts.entry(o.header("marker").to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_one_durable_and_one_sigkilled_under_load_loses_nothing() {
    natsplug_tests::init_tracing();
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let js = jetstream::new(client);
    create_r3(&js, "IN", "in.>").await;
    create_r3(&js, "OUT", "out.>").await;
    let folders: Vec<PluginsDir> = (0..3).map(|i| host_plugins(&format!("h{i}"))).collect();
    let (mut hosts, admins): (Vec<HostProcess>, Vec<SocketAddr>) = (0..3)
        .map(|i| spawn_host(&cluster.urls_from(i), &folders[i]))
        .unzip();
    wait_ready(&admins).await;
    const INPUTS: usize = 3000;
    let payloads: Vec<String> = (0..INPUTS).map(|i| format!("m{i}")).collect();
    publish_all(&js, "in.fleet", &payloads).await;
    wait_until(
        Duration::from_secs(60),
        "a third of the outputs",
        || async { stream_count(&js, "OUT").await >= (INPUTS / 3) as u64 },
    )
    .await;
    // SIGKILL one host mid-run: its unacked inputs come back after ack_wait to the others.
    hosts[0].kill();
    let outputs = all_handled_once(&js, INPUTS).await;
    let shares = by_host(&outputs);
    eprintln!("fleet: outputs by host {shares:?}");
    assert_eq!(shares.values().sum::<usize>(), INPUTS);
    for host in ["h1", "h2"] {
        // Each surviving host did a real share: none starves behind the other.
        assert!(
            shares.get(host).copied().unwrap_or(0) >= INPUTS / 10,
            "{host}: {shares:?}"
        );
    }
    assert!(
        shares.contains_key("h0"),
        "h0 handled some before it died: {shares:?}"
    );
    drop(hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leaders_node_killed_under_load_and_brought_back_loses_nothing() {
    natsplug_tests::init_tracing();
    let mut cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let js = jetstream::new(client);
    create_r3(&js, "IN", "in.>").await;
    create_r3(&js, "OUT", "out.>").await;
    let leader = js
        .get_stream("IN")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let node = cluster.index_of(&leader);
    let folders: Vec<PluginsDir> = (0..2).map(|i| host_plugins(&format!("h{i}"))).collect();
    // h0 is connected to the leader's node, which dies; h1 to another node.
    let (hosts, admins): (Vec<HostProcess>, Vec<SocketAddr>) = (0..2)
        .map(|i| spawn_host(&cluster.urls_from(node + i), &folders[i]))
        .unzip();
    wait_ready(&admins).await;
    const INPUTS: usize = 3000;
    // Inputs go on arriving (about 1,000 a second) while the leader dies and comes back.
    let publisher = publish_paced(&js, "in.fleet", INPUTS, 50, Duration::from_millis(50));
    wait_until(Duration::from_secs(60), "the first outputs", || async {
        stream_count(&js, "OUT").await >= 500
    })
    .await;
    cluster.kill(node);
    let killed_at = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(node);
    publisher.await.unwrap();
    // The host whose server died moves on to another and handles again. The election and
    // its set-up again may take seconds, in which the other host can drain every input: more
    // inputs, a hundred at a time, until one of h0's outputs is stored after the kill.
    let mut inputs = INPUTS;
    let resumed = Instant::now();
    loop {
        wait_until(Duration::from_secs(120), "every output so far", || async {
            stream_count(&js, "OUT").await >= inputs as u64
        })
        .await;
        let h0_after = stream_messages(&js, "OUT")
            .await
            .iter()
            .any(|o| o.header("marker") == "h0" && o.stored_at > killed_at);
        if h0_after || resumed.elapsed() > Duration::from_secs(60) {
            break;
        }
        for i in inputs..inputs + 100 {
            publish_surely(&js, "in.fleet", format!("m{i}")).await;
        }
        inputs += 100;
    }
    let outputs = all_handled_once(&js, inputs).await;
    let mut stored: Vec<_> = outputs.iter().map(|o| o.stored_at).collect();
    stored.sort();
    let gap = stored
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "fleet: leader {leader} killed for 3 s; longest gap between outputs {gap}; by host {:?}",
        by_host(&outputs)
    );
    // The host whose server died moved on to another and went on handling.
    let after = outputs
        .iter()
        .filter(|o| o.header("marker") == "h0" && o.stored_at > killed_at)
        .count();
    assert!(
        after > 0,
        "h0 handled nothing in the 60 s after its server died"
    );
    drop(hosts);
}

/// Writes `uppercase` as plugin `up` with the marker `marker` into `dir`; its component path.
fn up_version(dir: &std::path::Path, marker: &str) -> std::path::PathBuf {
    let wasm = dir.join("up.wasm");
    std::fs::copy(natsplug_tests::plugin_path("uppercase"), &wasm).unwrap();
    std::fs::write(
        dir.join("up.toml"),
        format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.bucket\"]\ndurable = \"up\"\n\
             ack_wait = \"5s\"\n[publish]\nallow = [\"out.bucket\"]\n\
             [config]\noutput = \"out.bucket\"\nmarker = \"{marker}\"\n"
        ),
    )
    .unwrap();
    wasm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_pushed_to_a_bucket_go_to_a_canary_then_all_then_back_under_load_each_input_once() {
    let (server, _client, js) = natsplug_tests::jetstream_setup().await;
    let url = server.url();
    let work = tempfile::tempdir().unwrap();
    let configs: Vec<std::path::PathBuf> = ["canary", "stable"]
        .iter()
        .map(|id| {
            let config = work.path().join(format!("{id}.toml"));
            std::fs::write(
                &config,
                format!("[host]\nbucket = \"natsplug-plugins\"\nid = \"{id}\"\n"),
            )
            .unwrap();
            config
        })
        .collect();
    let v1 = up_version(work.path(), "v1");
    let pushed = natsplug_tests::natsplug_cli(&["push", v1.to_str().unwrap(), "--server", &url]);
    let version1 = pushed.split_whitespace().nth(1).unwrap().to_owned();
    // Nothing is stored that would not load: a file that is not a component is refused.
    let broken = work.path().join("broken.wasm");
    std::fs::write(&broken, b"not wasm").unwrap();
    assert!(
        natsplug_tests::try_natsplug_cli(&["push", broken.to_str().unwrap(), "--server", &url])
            .is_none()
    );

    // Two hosts, each with an empty folder the bucket fills.
    let folders: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let hosts: Vec<HostProcess> = folders
        .iter()
        .zip(&configs)
        .map(|(f, c)| HostProcess::spawn(&url, f.path(), &["--config", c.to_str().unwrap()]))
        .collect();
    // About 6 s of inputs: every stage below happens while they arrive.
    const INPUTS: usize = 3000;
    let publisher = publish_paced(&js, "in.bucket", INPUTS, 10, Duration::from_millis(20));
    let markers = |outputs: Vec<Stored>| -> Vec<String> {
        let mut outputs = outputs;
        outputs.sort_by_key(|o| o.stored_at);
        outputs
            .iter()
            .map(|o| o.header("marker").to_owned())
            .collect()
    };
    let latest = |n: usize| {
        let js = js.clone();
        async move {
            let all = markers(stream_messages(&js, "OUT").await);
            all[all.len().saturating_sub(n)..].to_vec()
        }
    };
    wait_until(Duration::from_secs(60), "outputs of v1", || async {
        stream_count(&js, "OUT").await >= 200
    })
    .await;
    // A new version on the canary host only: both versions serve side by side.
    let v2 = up_version(work.path(), "v2");
    let pushed = natsplug_tests::natsplug_cli(&[
        "push",
        v2.to_str().unwrap(),
        "--host-id",
        "canary",
        "--server",
        &url,
    ]);
    let version2 = pushed.split_whitespace().nth(1).unwrap().to_owned();
    assert_ne!(version1, version2);
    wait_until(
        Duration::from_secs(60),
        "v1 and v2 side by side",
        || async {
            let recent = latest(60).await;
            recent.iter().any(|m| m == "v1") && recent.iter().any(|m| m == "v2")
        },
    )
    .await;
    // Then on every host.
    natsplug_tests::natsplug_cli(&["rollout", "up", &version2, "--server", &url]);
    wait_until(Duration::from_secs(60), "outputs of v2 only", || async {
        latest(40).await.iter().all(|m| m == "v2")
    })
    .await;
    // And back: the version before the current one serves again.
    let back = natsplug_tests::natsplug_cli(&["rollback", "up", "--server", &url]);
    assert_eq!(back.trim(), format!("up {version1}"));
    wait_until(Duration::from_secs(60), "outputs of v1 again", || async {
        latest(40).await.iter().all(|m| m == "v1")
    })
    .await;
    publisher.await.unwrap();

    wait_until(Duration::from_secs(60), "every output", || async {
        stream_count(&js, "OUT").await >= INPUTS as u64
    })
    .await;
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), INPUTS, "one output per input");
    let payloads: BTreeSet<String> = outputs.iter().map(|o| o.payload.clone()).collect();
    assert_eq!(payloads.len(), INPUTS);
    let seen: BTreeSet<String> = markers(outputs).into_iter().collect();
    assert_eq!(seen, BTreeSet::from(["v1".to_owned(), "v2".to_owned()]));
    assert_eq!(stream_count(&js, "DEAD").await, 0);
    drop(hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_version_that_fails_on_a_host_leaves_the_old_one_serving_and_list_says_why() {
    let (server, _client, js) = natsplug_tests::jetstream_setup().await;
    let url = server.url();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("natsplug.toml");
    std::fs::write(
        &config,
        "[host]\nbucket = \"natsplug-plugins\"\nid = \"h\"\n\
         [runtime]\nmax_plugin_bytes = 1000000\n",
    )
    .unwrap();
    let v1 = up_version(work.path(), "v1");
    let pushed = natsplug_tests::natsplug_cli(&["push", v1.to_str().unwrap(), "--server", &url]);
    let v1_version = pushed.trim().strip_prefix("up ").unwrap().to_owned();
    let folder = tempfile::tempdir().unwrap();
    // Metadata that does not decode, in the bucket before the host starts: left out of the
    // listing, not a host that cannot start.
    let garbage = js
        .publish("$O.natsplug-plugins.M.Z2FyYmFnZQ==", "{not json".into())
        .await
        .unwrap();
    garbage.await.unwrap();
    let _host = HostProcess::spawn(&url, folder.path(), &["--config", config.to_str().unwrap()]);
    publish_surely(&js, "in.bucket", "m0".into()).await;
    wait_until(Duration::from_secs(60), "v1's output", || async {
        stream_count(&js, "OUT").await == 1
    })
    .await;
    // v2 loads offline (push checks that), but its bucket is not on the server: the host
    // cannot serve it.
    let v2 = up_version(work.path(), "v2");
    let manifest = work.path().join("up.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("{text}[kv]\nbuckets = {{ nowhere = \"read\" }}\n"),
    )
    .unwrap();
    natsplug_tests::natsplug_cli(&["push", v2.to_str().unwrap(), "--server", &url]);
    let list = || natsplug_tests::natsplug_cli(&["list", "--server", &url, "--json"]);
    wait_until(
        Duration::from_secs(60),
        "the load error in natsplug list",
        || async { list().contains("nowhere") },
    )
    .await;
    publish_surely(&js, "in.bucket", "m1".into()).await;
    wait_until(Duration::from_secs(30), "the second output", || async {
        stream_count(&js, "OUT").await == 2
    })
    .await;
    let outputs = stream_messages(&js, "OUT").await;
    let markers: Vec<&str> = outputs.iter().map(|o| o.header("marker")).collect();
    assert_eq!(markers, ["v1", "v1"], "the old version goes on serving");

    // Whoever writes the bucket controls the sizes a host reads: a component past the host's
    // runtime.max_plugin_bytes, a pin past the pointer bound and a name a host would not load
    // are not mirrored, and `natsplug list` says why.
    let store = js.get_object_store("natsplug-plugins").await.unwrap();
    let put = |name: &'static str, bytes: Vec<u8>| {
        let store = store.clone();
        async move { store.put(name, &mut &bytes[..]).await.unwrap() }
    };
    let listed = || {
        let plugins: serde_json::Value = serde_json::from_str(&list()).unwrap();
        plugins["answer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["version"].as_str().map(str::to_owned),
                    p["error"].as_str().map(str::to_owned),
                )
            })
            .collect::<Vec<_>>()
    };
    let wait_listed = |expect: Vec<(&'static str, Option<String>, Option<String>)>| async move {
        let expect: Vec<(String, Option<String>, Option<String>)> = expect
            .into_iter()
            .map(|(n, v, e)| (n.to_owned(), v, e))
            .collect();
        wait_until(Duration::from_secs(30), &format!("{expect:?}"), || {
            let expect = expect.clone();
            async move { listed() == expect }
        })
        .await;
    };
    put("up/big.wasm", vec![0; 1_000_001]).await;
    put("up/current", b"big".to_vec()).await;
    wait_listed(vec![(
        "up",
        Some(v1_version.clone()),
        Some(
            "cannot mirror from the bucket: cannot read \"up/big.wasm\": 1000001 bytes, over \
             runtime.max_plugin_bytes (1000000 bytes)"
                .into(),
        ),
    )])
    .await;
    // A link (here a pin to an object of another bucket, read with the host's permissions) is
    // refused, not followed.
    let other = js
        .create_object_store(jetstream::object_store::Config {
            bucket: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = other.put("secret", &mut &b"big"[..]).await.unwrap();
    store.add_link("up/current@h", &secret).await.unwrap();
    wait_listed(vec![(
        "up",
        Some(v1_version.clone()),
        Some("cannot mirror from the bucket: cannot read \"up/current@h\": a link; a host reads no links".into()),
    )])
    .await;
    put("up/current@h", vec![b'a'; 70_000]).await;
    put("../current", v1_version.clone().into_bytes()).await;
    wait_listed(vec![
        (
            "..",
            None,
            Some(
                "cannot mirror from the bucket: the plugin name = \"..\" is not a valid name \
                 (no '.', '*', '>', '/', whitespace or control characters)"
                    .into(),
            ),
        ),
        (
            "up",
            Some(v1_version.clone()),
            Some(
                "cannot mirror from the bucket: cannot read \"up/current@h\": 70000 bytes, \
                 over the pointer bound (65536 bytes)"
                    .into(),
            ),
        ),
    ])
    .await;
    publish_surely(&js, "in.bucket", "m2".into()).await;
    wait_until(Duration::from_secs(30), "the third output", || async {
        stream_count(&js, "OUT").await == 3
    })
    .await;
    assert_eq!(stream_messages(&js, "OUT").await[2].header("marker"), "v1");
    assert!(
        !folder.path().join("...wasm").exists() && !folder.path().join("..wasm").exists(),
        "nothing written for the bad name"
    );

    // Rolled out to v1 again (which removes the pin), and the bad name's pointer deleted:
    // mirrored, and nothing is wrong any more.
    natsplug_tests::natsplug_cli(&["rollout", "up", &v1_version, "--server", &url]);
    store.delete("../current").await.unwrap();
    wait_listed(vec![("up", Some(v1_version.clone()), None)]).await;

    // A pointer stored before its version's objects (a bucket sourced from another, say) is
    // refused, and tried again until they arrive: no later change to a pointer is needed.
    put("up/current", b"v3".to_vec()).await;
    wait_listed(vec![(
        "up",
        Some(v1_version.clone()),
        Some("cannot mirror from the bucket: up: version v3 has no component".into()),
    )])
    .await;
    let v3_wasm = std::fs::read(up_version(work.path(), "v3")).unwrap();
    let v3_manifest = std::fs::read_to_string(work.path().join("up.toml")).unwrap();
    put("up/v3.toml", v3_manifest.clone().into_bytes()).await;
    put("up/v3.wasm", v3_wasm.clone()).await;
    let v3_version = natsplug::plugins::version_of(&v3_wasm, Some(&v3_manifest));
    wait_listed(vec![("up", Some(v3_version), None)]).await;
    publish_surely(&js, "in.bucket", "m3".into()).await;
    wait_until(Duration::from_secs(30), "the fourth output", || async {
        stream_count(&js, "OUT").await == 4
    })
    .await;
    assert_eq!(stream_messages(&js, "OUT").await[3].header("marker"), "v3");
}
