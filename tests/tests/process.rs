//! The `natsplug` binary as a process: killed with SIGKILL mid-run (nothing lost, nothing
//! stored twice) and stopped with SIGTERM (in-flight work finishes within graceful_timeout, or
//! is nak'ed at once for another host).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{
    HostProcess, PluginsDir, TestHost, consumer_info, jetstream_setup, publish_all, stream_count,
    stream_messages, wait_until,
};

async fn setup() -> (NatsServer, jetstream::Context) {
    let (server, _client, js) = jetstream_setup().await;
    (server, js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_five_thousand_messages_loses_and_duplicates_nothing() {
    let (server, js) = setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        r#"
        [subscribe]
        stream = "IN"
        subjects = ["in.upper"]
        ack_wait = "2s"
        concurrency = 32
        max_deliver = -1
        [publish]
        allow = ["out.upper"]
        [config]
        output = "out.upper"
        "#,
    );
    let payloads: Vec<String> = (0..5_000).map(|i| format!("k{i}")).collect();
    publish_all(&js, "in.upper", &payloads).await;

    let mut first = HostProcess::spawn(&server.url(), plugins.path(), &[]);
    wait_until(Duration::from_secs(60), "1,000 outputs", || async {
        stream_count(&js, "OUT").await >= 1_000
    })
    .await;
    first.kill();
    let at_kill = stream_count(&js, "OUT").await;
    assert!(
        at_kill < 5_000,
        "the first host finished before it was killed"
    );

    let mut second = HostProcess::spawn(&server.url(), plugins.path(), &[]);
    wait_until(Duration::from_secs(120), "every input acked", || async {
        let info = consumer_info(&js, "IN", "uppercase").await;
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    second.terminate();
    assert!(second.wait(Duration::from_secs(15)).await.success());

    let outputs = stream_messages(&js, "OUT").await;
    let got: BTreeSet<String> = outputs.iter().map(|m| m.payload.clone()).collect();
    let want: BTreeSet<String> = payloads.iter().map(|p| p.to_uppercase()).collect();
    assert_eq!(got, want, "every input has its output");
    assert_eq!(outputs.len(), 5_000, "no output stored twice");
}

fn slow_plugin(plugins: &PluginsDir, ack_wait: &str) {
    plugins.add(
        "slow",
        "slow",
        &format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\nack_wait = \"{ack_wait}\"\n\
             concurrency = 1\n[publish]\nallow = [\"out.slow\"]\n[config]\noutput = \"out.slow\"\n"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_handler_finish_within_the_graceful_timeout() {
    let (server, js) = setup().await;
    let plugins = PluginsDir::new();
    slow_plugin(&plugins, "3s");
    let mut host = HostProcess::spawn(
        &server.url(),
        plugins.path(),
        &["--graceful-timeout", "20s"],
    );
    publish_all(&js, "in.slow", &["10".to_owned()]).await;
    wait_until(Duration::from_secs(10), "the handler in flight", || async {
        consumer_info(&js, "IN", "slow").await.num_ack_pending == 1
    })
    .await;
    let terminated = Instant::now();
    host.terminate();
    let status = host.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        terminated.elapsed() >= Duration::from_secs(8),
        "it did not wait for the handler"
    );

    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].payload, "slept 10");
    let info = consumer_info(&js, "IN", "slow").await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0)
    );
    assert_eq!(info.delivered.consumer_sequence, 1, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_graceful_timeout_naks_for_another_host_at_once() {
    let (server, js) = setup().await;
    let plugins = PluginsDir::new();
    // A long ack_wait: a redelivery within seconds can only come from the nak.
    slow_plugin(&plugins, "60s");
    let mut first =
        HostProcess::spawn(&server.url(), plugins.path(), &["--graceful-timeout", "2s"]);
    publish_all(&js, "in.slow", &["10".to_owned()]).await;
    wait_until(Duration::from_secs(10), "the handler in flight", || async {
        consumer_info(&js, "IN", "slow").await.num_ack_pending == 1
    })
    .await;
    let second = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    let terminated = Instant::now();
    first.terminate();
    let status = first.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    let exited = terminated.elapsed();
    assert!(
        exited >= Duration::from_secs(2) && exited < Duration::from_secs(5),
        "{exited:?}"
    );

    // The second host got it at once (delivery 2) and finished its 10 s.
    wait_until(
        Duration::from_secs(20),
        "the output from the second host",
        || async { stream_count(&js, "OUT").await == 1 },
    )
    .await;
    assert!(
        terminated.elapsed() < Duration::from_secs(20),
        "waited for ack_wait"
    );
    let info = consumer_info(&js, "IN", "slow").await;
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "delivered twice: first host, then second"
    );
    wait_until(Duration::from_secs(5), "the ack", || async {
        consumer_info(&js, "IN", "slow").await.num_ack_pending == 0
    })
    .await;
    second.stop().await;
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].payload, "slept 10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_graceful_timeout_a_message_on_its_last_delivery_is_dead_lettered_not_lost() {
    let (server, js) = setup().await;
    let plugins = PluginsDir::new();
    // One delivery allowed: a nak would strand it (the server never redelivers it).
    plugins.add(
        "slow",
        "slow",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\nack_wait = \"60s\"\n\
         max_deliver = 1\nconcurrency = 1\n[publish]\nallow = [\"out.slow\"]\n\
         dead_letter = \"dead.slow\"\n[config]\noutput = \"out.slow\"\n",
    );
    let mut host = HostProcess::spawn(&server.url(), plugins.path(), &["--graceful-timeout", "2s"]);
    publish_all(&js, "in.slow", &["10".to_owned()]).await;
    wait_until(Duration::from_secs(10), "the handler in flight", || async {
        consumer_info(&js, "IN", "slow").await.num_ack_pending == 1
    })
    .await;
    host.terminate();
    let status = host.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");

    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(dead.len(), 1);
    let header = |name: &str| {
        dead[0]
            .headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(dead[0].payload, "10");
    assert_eq!(header("Natsplug-Error-Kind"), "given-back");
    assert_eq!(
        header("Natsplug-Reason"),
        "still in flight at the end of the graceful period, on its last allowed delivery"
    );
    assert_eq!(header("Natsplug-Delivered"), "1");
    assert_eq!(header("Natsplug-Sequence"), "1");
    assert_eq!(stream_count(&js, "OUT").await, 0);
    let info = consumer_info(&js, "IN", "slow").await;
    assert_eq!(info.num_ack_pending, 0, "terminated, not left pending");
    assert_eq!(info.delivered.consumer_sequence, 1);
}

/// The demo's plugins, as `scripts/demo.sh` lays them out: only those the samples go to.
fn demo_plugins_folder() -> tempfile::TempDir {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh"),
    )
    .expect("scripts/demo.sh");
    let listed = |var: &str| -> Vec<String> {
        let line = script
            .lines()
            .find(|l| l.starts_with(&format!("{var}=(")))
            .unwrap_or_else(|| panic!("scripts/demo.sh sets {var}"));
        line[var.len() + 2..line.len() - 1]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let mut in_script = listed("rust_plugins");
    in_script.extend(listed("guest_plugins"));
    assert_eq!(
        in_script,
        natsplug::dev::DEMO_PLUGINS,
        "scripts/demo.sh builds the plugins natsplug::dev::DEMO_PLUGINS names"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    for name in natsplug::dev::DEMO_PLUGINS {
        for ext in ["toml", "wasm"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(
                natsplug_tests::plugins_dir().join(&file),
                dir.path().join(&file),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    dir
}

#[test]
fn the_demo_runs_its_samples_through_and_exits_with_once() {
    let plugins = demo_plugins_folder();
    let output = std::process::Command::new(natsplug_tests::natsplug_bin())
        // A bound, not a timing: the Python and JavaScript components compile in 10-20 s each
        // on a cold cache and an idle machine, several times that beside the other tests.
        .args(["dev", "--log", "error", "--once", "400s", "--plugins"])
        .arg(plugins.path())
        // The compile cache the other tests share: whichever compiles a component first.
        .env(
            "NATSPLUG_RUNTIME_CACHE_DIR",
            natsplug_tests::compile_cache_dir(),
        )
        .env_remove("NATSPLUG_SERVER")
        .env("NATS_SERVER_BIN", natsplug_tests::nats::server_binary())
        .output()
        .expect("natsplug dev");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "out  demo.out.uppercase     \"HELLO FROM NATSPLUG\"",
        "out  demo.out.fanout.a      \"one message, three outputs\"",
        "out  demo.out.fanout.b      \"one message, three outputs\"",
        "out  demo.out.fanout.c      \"one message, three outputs\"",
        "out  demo.out.flaky         \"ok after 3\"",
        "out  demo.out.slow          \"slept 4\"",
        "out  demo.out.uppercase     \"HELLO FROM PYTHON\"",
        "out  demo.out.uppercase     \"HELLO FROM JAVASCRIPT\"",
        "dead demo.dead.poison       \"a message nobody can handle\" (poison message on demo.in.poison: a message nobody can handle)",
        "natsplug dev: 8 outputs, 1 dead letters; stopped",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

/// `natsplug dev` as a child whose stdout and stderr go to files; killed on drop.
struct DevProcess {
    child: std::process::Child,
    stdout: tempfile::NamedTempFile,
    stderr: tempfile::NamedTempFile,
}

impl DevProcess {
    fn spawn(args: &[&std::ffi::OsStr]) -> Self {
        let stdout = tempfile::NamedTempFile::new().expect("temp file");
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let child = std::process::Command::new(natsplug_tests::natsplug_bin())
            .arg("dev")
            .args(args)
            .env(
                "NATSPLUG_RUNTIME_CACHE_DIR",
                natsplug_tests::compile_cache_dir(),
            )
            .stdout(stdout.reopen().expect("reopen"))
            .stderr(stderr.reopen().expect("reopen"))
            .spawn()
            .expect("natsplug dev");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout.path()).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Waits until stdout has `count` lines containing `text`.
    async fn wait_for(&self, text: &str, count: usize) {
        let what = format!("{count} lines with {text:?} from natsplug dev");
        let started = Instant::now();
        while self.stdout().lines().filter(|l| l.contains(text)).count() < count {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no {what}:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `payload` to `dev.in` and returns the next `count` messages on `outputs`, each
/// within 60 s, sorted: (subject, payload).
async fn send(
    js: &jetstream::Context,
    outputs: &mut async_nats::Subscriber,
    payload: &'static str,
    count: usize,
) -> Vec<(String, String)> {
    use futures::StreamExt as _;
    js.publish("dev.in", payload.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    let mut got = Vec::new();
    for _ in 0..count {
        let message = tokio::time::timeout(Duration::from_secs(60), outputs.next())
            .await
            .expect("an output within 60 s")
            .expect("the subscription is open");
        got.push((
            message.subject.to_string(),
            String::from_utf8_lossy(&message.payload).into_owned(),
        ));
    }
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_a_build_command_rebuilds_on_each_change_and_keeps_the_last_good_build() {
    let (server, client, js) = jetstream_setup().await;
    // A "project" whose source `choice` names the component its "build" installs as up.wasm
    // (through a temporary name, as a real build should).
    let project = tempfile::tempdir().expect("temp dir");
    let dir = project.path();
    let choose = |plugin: &str| {
        let path = if plugin.starts_with('/') {
            plugin.to_owned()
        } else {
            natsplug_tests::plugin_path(plugin).display().to_string()
        };
        std::fs::write(dir.join("choice"), path).expect("write the source");
    };
    choose("uppercase");
    std::fs::write(
        dir.join("up.toml"),
        r#"
        [subscribe]
        stream = "DEVIN"
        subjects = ["dev.in"]
        [publish]
        allow = ["out.dev.>"]
        [config]
        output = "out.dev.up"
        subjects = "out.dev.up.a,out.dev.up.b"
        "#,
    )
    .expect("write the manifest");
    let mut outputs = client.subscribe("out.dev.>").await.expect("subscribe");
    let url = server.url();
    let build = r#"cp "$(cat choice)" .up.wasm.tmp && mv .up.wasm.tmp up.wasm"#;
    let dev = DevProcess::spawn(&[
        "--server".as_ref(),
        url.as_ref(),
        "--plugins".as_ref(),
        dir.as_os_str(),
        "--watch".as_ref(),
        dir.as_os_str(),
        "--build".as_ref(),
        build.as_ref(),
    ]);

    // The first build, the stream the manifest names (its outputs are in the harness's OUT
    // stream already: no UP_OUT), then the first version's answer.
    dev.wait_for("natsplug dev: rebuilding on every change in", 1)
        .await;
    let out = dev.stdout();
    assert_eq!(out.matches("natsplug dev: built in ").count(), 1, "{out}");
    assert!(
        out.contains("natsplug dev: created the stream DEVIN (dev.in) for "),
        "{out}"
    );
    assert!(!out.contains("UP_OUT"), "{out}");
    assert!(
        out.contains("printing what is published to out.dev.>"),
        "{out}"
    );
    assert_eq!(
        send(&js, &mut outputs, "hello", 1).await,
        [("out.dev.up".to_owned(), "HELLO".to_owned())]
    );

    // A source change: one more build (writing up.wasm starts none), and the new version serves.
    choose("fanout");
    dev.wait_for("natsplug dev: built in ", 2).await;
    let started = Instant::now();
    while !dev.stderr().contains("change=Replaced") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            dev.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        send(&js, &mut outputs, "second", 2).await,
        [
            ("out.dev.up.a".to_owned(), "second".to_owned()),
            ("out.dev.up.b".to_owned(), "second".to_owned()),
        ]
    );

    // A failing build says why and changes nothing.
    choose("/nonexistent/component.wasm");
    dev.wait_for("natsplug dev: build failed (exit status: 1)", 1)
        .await;
    let out = dev.stdout();
    assert!(
        out.contains("  | cp: cannot stat '/nonexistent/component.wasm'"),
        "{out}"
    );
    assert_eq!(
        send(&js, &mut outputs, "third", 2).await,
        [
            ("out.dev.up.a".to_owned(), "third".to_owned()),
            ("out.dev.up.b".to_owned(), "third".to_owned()),
        ]
    );
    let out = dev.stdout();
    assert_eq!(out.matches("natsplug dev: built in ").count(), 2, "{out}");
    assert_eq!(
        out.matches("natsplug dev: build failed").count(),
        1,
        "{out}"
    );
    // Outputs are printed as in the demo.
    let printed = format!("  out  {:<22} {:?}", "out.dev.up", "HELLO");
    assert!(out.contains(&printed), "{out}");
}
