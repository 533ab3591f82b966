//! A real 3-node nats-server cluster for one test: JetStream on every node, each on free
//! loopback ports (clients and routes) with its own store dir, under the single-server
//! harness's rules ([`crate::nats`]: found the same way, removed on drop, every wait bounded).
//! A node can be killed and started again on its ports and store, for fault tests.

use std::time::Duration;

use crate::nats::NatsServer;

/// Three nodes routed to each other, one JetStream cluster.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl NatsCluster {
    /// Starts three nodes (`n1`, `n2`, `n3`) and waits until the cluster takes an R3 stream.
    pub async fn start() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = (0..3)
            .map(|i| {
                let peers: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                NatsServer::start_with_config(&format!(
                    "server_name: n{}\ncluster {{\n  name: natsplug-test\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    i + 1,
                    routes[i],
                    peers.join(", ")
                ))
            })
            .collect();
        let cluster = Self { nodes };
        cluster.wait_ready().await;
        cluster
    }

    /// Waits (60 s at most) until JetStream has a meta leader and places an R3 stream.
    async fn wait_ready(&self) {
        let client = self.connect().await;
        let js = async_nats::jetstream::new(client);
        let started = std::time::Instant::now();
        loop {
            let probe = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "NATSPLUG_CLUSTER_PROBE".into(),
                    subjects: vec!["natsplug-cluster-probe".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            if probe.is_ok() {
                let _ = js.delete_stream("NATSPLUG_CLUSTER_PROBE").await;
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the cluster did not form: {probe:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client connection that knows every node.
    pub async fn connect(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("a server URL"))
            .collect();
        async_nats::connect(addrs)
            .await
            .expect("cannot connect to the cluster")
    }

    /// Every node's URL, comma-separated (what `--server` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URLs with node `first` first: a host that starts on that node.
    pub fn urls_from(&self, first: usize) -> String {
        (0..3)
            .map(|i| self.nodes[(first + i) % 3].url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name` (`n1`...).
    pub fn index_of(&self, name: &str) -> usize {
        name.trim_start_matches('n')
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < 3)
            .unwrap_or_else(|| panic!("no node named {name:?}"))
    }

    /// Kills node `i` (its store stays).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
    }
}
