//! The deployment files: the Kubernetes manifest parses, its probes hit the admin endpoints,
//! its grace period outlasts the graceful timeout of the config it ships, and every metric the
//! Grafana dashboard queries is one the host exports.

use std::collections::BTreeSet;
use std::path::Path;

use natsplug::config::HostConfig;
use natsplug::metrics::Metrics;
use serde::Deserialize as _;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(file),
    )
    .unwrap()
}

fn documents(file: &str) -> Vec<serde_yaml::Value> {
    let text = deploy(file);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kubernetes_manifests_match_the_host() {
    for file in ["kubernetes.yaml", "kubernetes-bucket.yaml"] {
        the_manifest_matches_the_host(file);
    }
}

/// The image both manifests run is the one the Containerfile builds: its name, the admin port
/// they probe, a non-root user, volumes for the plugins and the cache, which the pods mount where
/// their config says.
#[test]
fn the_manifests_run_the_image_the_containerfile_builds() {
    let containerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Containerfile"))
            .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        containerfile.contains(&format!("-t natsplug:{version}")),
        "{containerfile}"
    );
    for line in [
        r#"VOLUME ["/plugins", "/var/cache/natsplug"]"#,
        "EXPOSE 9090",
        "USER 10001",
        r#"ENTRYPOINT ["natsplug"]"#,
    ] {
        assert!(containerfile.lines().any(|l| l == line), "no {line:?}");
    }
    for file in ["kubernetes.yaml", "kubernetes-bucket.yaml"] {
        let docs = documents(file);
        let container = &kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["image"],
            format!("natsplug:{version}").as_str(),
            "{file}"
        );
        assert_eq!(container["ports"][0]["containerPort"], 9090, "{file}");
        let mounts: BTreeSet<&str> = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        // The folder and the cache the shipped config names are volumes in the pod.
        let config_text = kind(&docs, "ConfigMap")["data"]["natsplug.toml"]
            .as_str()
            .unwrap();
        let config = HostConfig::parse(config_text, file, Vec::new()).unwrap();
        let cache = config.runtime.cache_dir.unwrap();
        for path in [
            config.host.plugins.to_str().unwrap(),
            cache.to_str().unwrap(),
        ] {
            assert!(mounts.contains(path), "{file}: {path} not in {mounts:?}");
        }
    }
}

/// The plugins come from the bucket into a volume the host may write (no claim).
#[test]
fn the_bucket_variant_mirrors_into_a_volume_of_its_own() {
    let docs = documents("kubernetes-bucket.yaml");
    let config_text = kind(&docs, "ConfigMap")["data"]["natsplug.toml"]
        .as_str()
        .unwrap();
    let config = HostConfig::parse(config_text, "ConfigMap natsplug.toml", Vec::new()).unwrap();
    assert_eq!(config.host.bucket.as_deref(), Some("natsplug-plugins"));
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let plugins = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "plugins")
        .unwrap();
    assert!(plugins.get("emptyDir").is_some(), "{plugins:?}");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "plugins")
        .unwrap();
    assert!(mount.get("readOnly").is_none(), "the mirror writes there");
}

fn the_manifest_matches_the_host(file: &str) {
    let docs = documents(file);
    let config_text = kind(&docs, "ConfigMap")["data"]["natsplug.toml"]
        .as_str()
        .unwrap();
    let config = HostConfig::parse(config_text, "ConfigMap natsplug.toml", Vec::new()).unwrap();
    let admin = config.admin.listen.expect("the admin listener is on");

    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.host.graceful_timeout.as_secs() + 5,
        "grace {grace}s"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["ports"][0]["containerPort"].as_u64(),
        Some(u64::from(admin.port()))
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    let mounts: BTreeSet<&str> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(
        mounts.contains(config.host.plugins.to_str().unwrap()),
        "plugins volume"
    );
    assert!(
        mounts.contains(config.runtime.cache_dir.as_ref().unwrap().to_str().unwrap()),
        "cache volume"
    );
    assert!(
        mounts.contains(
            config
                .nats
                .creds_file
                .as_ref()
                .unwrap()
                .parent()
                .unwrap()
                .to_str()
                .unwrap()
        )
    );
}

/// Every series name the host exports: counters as `_total`, histograms as `_bucket`, `_sum`
/// and `_count`, gauges as they are.
fn exported() -> BTreeSet<String> {
    use natsplug::metrics::{ResultLabels, RoleLabel, VersionLabels};
    // A family is encoded once it has a sample: give each one.
    let metrics = std::sync::Arc::new(Metrics::new());
    let plugin = metrics.plugin("p");
    plugin.limit_hit("fuel");
    plugin.dead_letter("reject");
    plugin.denied("reply-subject", 1);
    metrics.capability("p", "kv", "ok", std::time::Duration::from_millis(1));
    metrics
        .reloads
        .get_or_create(&ResultLabels {
            plugin: "p".into(),
            result: "loaded".into(),
        })
        .inc();
    metrics
        .plugin_info
        .get_or_create(&VersionLabels {
            plugin: "p".into(),
            version: "v".into(),
        })
        .set(1);
    metrics
        .connected
        .get_or_create(&RoleLabel {
            role: "consumer".into(),
        })
        .set(1);
    metrics
        .reconnects
        .get_or_create(&RoleLabel {
            role: "consumer".into(),
        })
        .inc();
    let text = metrics.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn every_dashboard_query_uses_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana-dashboard.json")).unwrap();
    let exported = exported();
    assert!(
        exported.contains("natsplug_messages_total")
            && exported.contains("natsplug_handler_duration_seconds_bucket"),
        "{exported:?}"
    );
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("natsplug_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
    }
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the host does not export: {unknown:?}"
    );
    // And every metric family the host exports is on the dashboard.
    let families: BTreeSet<String> = exported
        .iter()
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned()
        })
        .collect();
    let shown: BTreeSet<String> = used
        .iter()
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned()
        })
        .collect();
    let missing: Vec<&String> = families.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "exported but not on the dashboard: {missing:?}"
    );
}
