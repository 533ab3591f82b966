//! Hot reload and the control plane against a real nats-server: a swap under steady load loses
//! and duplicates nothing, a broken or half-written file never replaces the served version, and
//! the CLI reaches every host.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{
    PluginsDir, TestHost, consumer_info, jetstream_setup, natsplug_cli, plugin_path,
    plugin_version, publish_all, replace_file, stream_count, stream_messages, try_natsplug_cli,
    wait_until,
};

fn manifest(marker: &str) -> String {
    format!(
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\nconcurrency = 8\n\
         [publish]\nallow = [\"out.upper\"]\n\
         [config]\noutput = \"out.upper\"\nsubjects = \"out.upper\"\nmarker = \"{marker}\"\n"
    )
}

async fn setup() -> (NatsServer, jetstream::Context, PluginsDir) {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add("uppercase", "uppercase", &manifest("v1"));
    (server, js, plugins)
}

/// The served version and load error of `plugin` on every host, through `natsplug list
/// --json`; empty while no host answers.
fn listed(url: &str, plugin: &str) -> Vec<(Option<String>, Option<String>)> {
    try_natsplug_cli(&["list", "--json", "--server", url])
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let p = v["answer"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == plugin)
                .cloned()
                .unwrap_or_default();
            (
                p["version"].as_str().map(String::from),
                p["error"].as_str().map(String::from),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_under_steady_load_switches_markers_and_loses_nothing() {
    let (server, js, plugins) = setup().await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    let wasm = std::fs::read(plugin_path("uppercase")).unwrap();
    let v2 = plugin_version(&wasm, &manifest("v2"));

    // A steady stream of 1,500 inputs, one per millisecond or so.
    let producer = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut sent_at = Vec::new();
            for i in 0..1_500 {
                js.publish("in.upper", format!("m{i:04}").into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                sent_at.push(Instant::now());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent_at
        })
    };
    wait_until(Duration::from_secs(30), "300 outputs", || async {
        stream_count(&js, "OUT").await >= 300
    })
    .await;
    replace_file(
        &plugins.path().join("uppercase.toml"),
        manifest("v2").as_bytes(),
    );
    let url = server.url();
    wait_until(Duration::from_secs(10), "v2 served", || {
        let url = url.clone();
        let v2 = v2.clone();
        async move { listed(&url, "uppercase") == vec![(Some(v2), None)] }
    })
    .await;
    let swapped_at = Instant::now();
    let sent_at = producer.await.unwrap();
    wait_until(Duration::from_secs(60), "1,500 outputs", || async {
        stream_count(&js, "OUT").await >= 1_500
    })
    .await;
    wait_until(Duration::from_secs(10), "all acked", || async {
        consumer_info(&js, "IN", "uppercase").await.num_ack_pending == 0
    })
    .await;
    host.stop().await;

    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 1_500, "one output per input");
    let mut markers = BTreeMap::new();
    for m in &outputs {
        let marker = m.headers.get("marker").unwrap().as_str().to_owned();
        assert!(
            markers.insert(m.payload.clone(), marker).is_none(),
            "{} twice",
            m.payload
        );
    }
    let count = |v: &str| markers.values().filter(|m| *m == v).count();
    assert!(
        count("v1") >= 300 && count("v2") > 0,
        "v1 {} v2 {}",
        count("v1"),
        count("v2")
    );
    assert_eq!(count("v1") + count("v2"), 1_500);
    // Everything published after v2 was served went through v2.
    for (i, at) in sent_at.iter().enumerate() {
        if *at > swapped_at {
            assert_eq!(
                markers[&format!("M{i:04}")],
                "v2",
                "input {i} after the swap"
            );
        }
    }
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        (info.num_redelivered, info.delivered.consumer_sequence),
        (0, 1_500)
    );
}

/// Waits until `natsplug list` shows `error` for `uppercase`, still serving `version`.
async fn listed_error(url: &str, version: &str, error: String) {
    wait_until(Duration::from_secs(10), &error, || async {
        listed(url, "uppercase")[0].1.as_deref() == Some(error.as_str())
    })
    .await;
    assert_eq!(listed(url, "uppercase")[0].0.as_deref(), Some(version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_keeps_the_old_version_serving_and_list_shows_why() {
    let (server, js, plugins) = setup().await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    let wasm = std::fs::read(plugin_path("uppercase")).unwrap();
    let v1 = plugin_version(&wasm, &manifest("v1"));
    let url = server.url();
    wait_until(Duration::from_secs(10), "v1 served", || {
        let (url, v1) = (url.clone(), v1.clone());
        async move { listed(&url, "uppercase") == vec![(Some(v1), None)] }
    })
    .await;
    // `natsplug validate` names the same version as `natsplug list` for the same files.
    let served = plugins.path().join("uppercase.wasm");
    let validated = natsplug_cli(&["validate", served.to_str().unwrap()]);
    assert_eq!(
        validated.trim(),
        format!(
            "ok: {} is a natsplug:plugin/plugin component (plugin \"uppercase\", version {v1})",
            served.display()
        )
    );

    replace_file(
        &plugins.path().join("uppercase.wasm"),
        b"\0asm this is not a component",
    );
    wait_until(Duration::from_secs(10), "the error listed", || {
        let url = url.clone();
        async move { listed(&url, "uppercase")[0].1.is_some() }
    })
    .await;
    let (version, error) = listed(&url, "uppercase").remove(0);
    assert_eq!(version, Some(v1.clone()), "the old version still serves");
    assert!(
        error
            .unwrap()
            .contains("is not a valid WebAssembly component")
    );

    // A 10 GiB file (sparse: it takes no disk) is refused from its size, unread, and so is a
    // 2 MiB manifest; the old version still serves.
    let wasm_path = plugins.path().join("uppercase.wasm");
    let manifest_path = plugins.path().join("uppercase.toml");
    let sparse = |path: &std::path::Path, len: u64| {
        let aside = path.with_file_name(".sparse.tmp");
        std::fs::File::create(&aside).unwrap().set_len(len).unwrap();
        std::fs::rename(&aside, path).unwrap();
    };
    sparse(&wasm_path, 10 << 30);
    listed_error(
        &url,
        &v1,
        format!(
            "cannot read {}: 10737418240 bytes, over runtime.max_plugin_bytes (134217728 bytes)",
            wasm_path.display()
        ),
    )
    .await;
    // A FIFO with no writer: refused at once, and the folder's later changes are still seen.
    let fifo = wasm_path.with_file_name(".fifo.tmp");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::rename(&fifo, &wasm_path).unwrap();
    listed_error(
        &url,
        &v1,
        format!(
            "cannot read {}: not a regular file (a FIFO, a device or a folder)",
            wasm_path.display()
        ),
    )
    .await;
    // Back to the served file: nothing is wrong any more.
    replace_file(&wasm_path, &wasm);
    wait_until(Duration::from_secs(10), "no error", || {
        let (url, v1) = (url.clone(), v1.clone());
        async move { listed(&url, "uppercase") == vec![(Some(v1), None)] }
    })
    .await;
    sparse(&manifest_path, 2 << 20);
    listed_error(
        &url,
        &v1,
        format!(
            "cannot read {}: 2097152 bytes, over the manifest bound (1048576 bytes)",
            manifest_path.display()
        ),
    )
    .await;

    publish_all(&js, "in.upper", &["still".to_owned(), "served".to_owned()]).await;
    wait_until(Duration::from_secs(10), "2 outputs", || async {
        stream_count(&js, "OUT").await == 2
    })
    .await;
    let outputs = stream_messages(&js, "OUT").await;
    assert!(
        outputs
            .iter()
            .all(|m| m.headers.get("marker").unwrap().as_str() == "v1")
    );
    replace_file(&manifest_path, manifest("v1").as_bytes());

    // Removing the plugin stops its worker: later inputs stay pending.
    std::fs::remove_file(plugins.path().join("uppercase.wasm")).unwrap();
    wait_until(Duration::from_secs(10), "the plugin gone", || {
        let url = url.clone();
        async move { listed(&url, "uppercase") == vec![(None, None)] }
    })
    .await;
    publish_all(&js, "in.upper", &["after".to_owned()]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stream_count(&js, "OUT").await, 2);
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        info.ack_floor.stream_sequence, 2,
        "the third input is not acked"
    );

    // Nothing was lost: with the plugin back, the waiting input is handled.
    std::fs::copy(
        plugin_path("uppercase"),
        plugins.path().join("uppercase.wasm"),
    )
    .unwrap();
    wait_until(Duration::from_secs(15), "the third output", || async {
        stream_count(&js, "OUT").await == 3
    })
    .await;
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs[2].payload, "AFTER");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_written_file_is_never_loaded_half_written() {
    let (server, js, plugins) = setup().await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    let old = plugin_version(
        &std::fs::read(plugin_path("uppercase")).unwrap(),
        &manifest("v1"),
    );
    // The new "uppercase" is the fanout component: its outputs keep the payload's case.
    let new_wasm = std::fs::read(plugin_path("fanout")).unwrap();
    let new = plugin_version(&new_wasm, &manifest("v1"));
    let url = server.url();
    wait_until(Duration::from_secs(10), "the old version", || {
        let (url, old) = (url.clone(), old.clone());
        async move { listed(&url, "uppercase") == vec![(Some(old), None)] }
    })
    .await;

    // Written in place in 6 chunks, 500 ms apart: longer than the debounce and settle times, so
    // the host does look at the partial file.
    let path = plugins.path().join("uppercase.wasm");
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in new_wasm.chunks(new_wasm.len() / 6 + 1) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    while !writer.is_finished() {
        if let Some((Some(version), _)) = listed(&url, "uppercase").first() {
            seen.insert(version.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(Duration::from_secs(10), "the new version", || {
        let (url, new) = (url.clone(), new.clone());
        async move { listed(&url, "uppercase") == vec![(Some(new), None)] }
    })
    .await;
    seen.insert(new.clone());
    assert_eq!(
        seen,
        [old, new].into_iter().collect(),
        "only complete versions were served"
    );

    publish_all(&js, "in.upper", &["lower".to_owned()]).await;
    wait_until(Duration::from_secs(10), "the output", || async {
        stream_count(&js, "OUT").await == 1
    })
    .await;
    let out = stream_messages(&js, "OUT").await;
    assert_eq!(out[0].payload, "lower", "served by the new component");
    assert_eq!(out[0].headers.get("fanout-index").unwrap().as_str(), "0");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_status_reach_every_host() {
    let (server, _js, plugins) = setup().await;
    let mut a = TestHost::config(&server.url(), plugins.path());
    a.host.id = Some("host-a".into());
    let mut b = TestHost::config(&server.url(), plugins.path());
    b.host.id = Some("host-b".into());
    let (a, b) = (TestHost::start(a), TestHost::start(b));
    let url = server.url();
    wait_until(Duration::from_secs(10), "both hosts", || {
        let url = url.clone();
        async move { listed(&url, "uppercase").len() == 2 }
    })
    .await;

    let out = natsplug_cli(&["reload", "uppercase", "--json", "--server", &url]);
    let answers: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hosts: Vec<&str> = answers
        .iter()
        .map(|a| a["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, vec!["host-a", "host-b"]);
    for a in &answers {
        assert_eq!(a["answer"][0]["plugin"], "uppercase");
        assert_eq!(a["answer"][0]["change"], "unchanged");
    }
    let out = natsplug_cli(&["status", "--json", "--server", &url, "--host-id", "host-b"]);
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["host"], "host-b");
    assert_eq!(status["answer"]["plugins"], 1);
    assert_eq!(status["answer"]["connected"], true);
    // The human format names both hosts too.
    let table = natsplug_cli(&["list", "--server", &url]);
    assert!(
        table.contains("host host-a") && table.contains("host host-b"),
        "{table}"
    );
    a.stop().await;
    b.stop().await;
}
