//! Throughput of a fleet against one host: `uppercase` (Rust, concurrency 64) on inputs
//! already stored, one `natsplug` host on one nats-server (R1 streams) against three hosts on a
//! 3-node cluster (R3 streams), in one run; and how the three split the work.
//!
//! `cargo build --release --bin natsplug && NATSPLUG_BIN=target/release/natsplug \
//!  cargo bench -p natsplug-tests --bench fleet [-- --inputs N --runs R]`
//! Prints msgs/s from the first output to the last, the median of R runs and the spread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use natsplug_tests::cluster::NatsCluster;
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{
    HostProcess, PluginsDir, bench_arg, publish_all, stream_count, stream_messages,
};

async fn streams(js: &jetstream::Context, replicas: usize, inputs: usize) {
    for (name, subject) in [("IN", "in.>"), ("OUT", "out.>")] {
        js.create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let payloads: Vec<String> = (0..inputs).map(|i| format!("m{i}")).collect();
    publish_all(js, "in.fleet", &payloads).await;
}

fn plugins(host: &str) -> PluginsDir {
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        &format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.fleet\"]\ndurable = \"fleet\"\n\
             concurrency = 64\n[publish]\nallow = [\"out.fleet\"]\n\
             [config]\noutput = \"out.fleet\"\nmarker = \"{host}\"\n"
        ),
    );
    plugins
}

/// Starts one host per URL list and times the outputs: msgs/s and the split by host.
async fn run(
    js: &jetstream::Context,
    urls: &[String],
    inputs: usize,
) -> (f64, BTreeMap<String, usize>) {
    let folders: Vec<PluginsDir> = (0..urls.len()).map(|i| plugins(&format!("h{i}"))).collect();
    let hosts: Vec<HostProcess> = urls
        .iter()
        .zip(&folders)
        .map(|(url, f)| HostProcess::spawn(url, f.path(), &[]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let n = stream_count(js, "OUT").await;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= inputs as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the fleet did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (started, done_then) = first.unwrap();
    let rate = (inputs as u64 - done_then) as f64 / started.elapsed().as_secs_f64();
    drop(hosts);
    let mut split = BTreeMap::new();
    for o in stream_messages(js, "OUT").await {
        *split.entry(o.header("marker").to_owned()).or_default() += 1;
    }
    (rate, split)
}

fn main() {
    let inputs = bench_arg("--inputs", 20_000);
    let runs = bench_arg("--runs", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut one, mut three) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let server = NatsServer::start();
            let js = jetstream::new(server.connect().await);
            streams(&js, 1, inputs).await;
            let (rate, _) = run(&js, &[server.url()], inputs).await;
            one.push(rate);
            drop(server);

            let cluster = NatsCluster::start().await;
            let js = jetstream::new(cluster.connect().await);
            streams(&js, 3, inputs).await;
            let urls: Vec<String> = (0..3).map(|i| cluster.urls_from(i)).collect();
            let (rate, split) = run(&js, &urls, inputs).await;
            println!("three hosts split the work: {split:?}");
            three.push(rate);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (a, alo, ahi) = median(&mut one);
        let (b, blo, bhi) = median(&mut three);
        println!("fleet throughput, {inputs} inputs, median of {runs} runs (min-max), msgs/s:");
        println!("| | msgs/s |");
        println!("|---|---:|");
        println!("| one host, one server, R1 | {a:.0} ({alo:.0}-{ahi:.0}) |");
        println!("| three hosts, 3-node cluster, R3 | {b:.0} ({blo:.0}-{bhi:.0}) |");
        println!("ratio three/one: {:.2}", b / a);
    });
}
