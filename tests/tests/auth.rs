//! The host against servers that require credentials, end to end: TLS with a client
//! certificate (certificates made by the test), user and password, an nkey, and a creds file
//! (operator, account and user JWTs made by the test); and a host user with exactly the
//! permissions the README lists, under which everything works and a grant outside them fails
//! loudly without losing the input.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;
use natsplug::config::HostConfig;
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{
    PluginsDir, TestHost, admin_get, consumer_info, create_stream, free_addr, publish_all, sample,
    stream_messages, wait_until,
};

const UPPERCASE: &str = "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\n[publish]\n\
                         allow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n";

/// Creates `IN` and `OUT` with `admin`, runs the uppercase plugin on a host with `config` over
/// 20 inputs, and checks that each has its one output and is acked.
async fn uppercase_through(admin: async_nats::Client, mut config: HostConfig) {
    let js = jetstream::new(admin);
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out.>"]).await;
    let plugins = PluginsDir::new();
    plugins.add("uppercase", "uppercase", UPPERCASE);
    config.host.plugins = plugins.path().to_owned();
    let inputs: Vec<String> = (0..20).map(|i| format!("secret {i}")).collect();
    publish_all(&js, "in.upper", &inputs).await;
    let host = TestHost::start(config);
    wait_until(Duration::from_secs(30), "20 outputs", || async {
        stream_messages(&js, "OUT").await.len() == 20
    })
    .await;
    host.stop().await;
    let got: BTreeSet<String> = stream_messages(&js, "OUT")
        .await
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(got, inputs.iter().map(|i| i.to_uppercase()).collect());
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.delivered.consumer_sequence
        ),
        (0, 0, 20)
    );
}

fn host_config(url: &str) -> HostConfig {
    let plugins = std::env::temp_dir();
    TestHost::config(url, &plugins)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_end_to_end() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["natsplug-host".into()]);
    let ca_file = write("ca.pem", ca.pem());
    let config = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 5\n}}\n",
        write("server.pem", server_cert),
        write("server-key.pem", server_key),
        ca_file,
    );
    let server = NatsServer::start_with_config(&config);
    let mut host = host_config(&server.url());
    host.nats.tls.required = true;
    host.nats.tls.ca = Some(ca_file.clone());
    host.nats.tls.cert = Some(write("client.pem", client_cert));
    host.nats.tls.key = Some(write("client-key.pem", client_key));
    // The test's own client presents the same certificate.
    let admin = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca_file)
        .add_client_certificate(
            host.nats.tls.cert.clone().unwrap(),
            host.nats.tls.key.clone().unwrap(),
        )
        .connect(server.url())
        .await
        .unwrap();
    // Without a client certificate the server turns the connection away.
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(host.nats.tls.ca.clone().unwrap())
            .connect(server.url()),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "connected without a client certificate"
    );
    uppercase_through(admin, host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_end_to_end() {
    let server = NatsServer::start_with_config(
        "authorization {\n  users = [ { user: \"host\", password: \"s3cret\" } ]\n}\n",
    );
    let admin = async_nats::ConnectOptions::with_user_and_password("host".into(), "s3cret".into())
        .connect(server.url())
        .await
        .unwrap();
    let wrong = async_nats::ConnectOptions::with_user_and_password("host".into(), "guess".into())
        .connect(server.url())
        .await;
    assert!(wrong.is_err(), "a wrong password connects");
    let mut host = host_config(&server.url());
    host.nats.user = Some("host".into());
    host.nats.password = Some("s3cret".into());
    uppercase_through(admin, host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_end_to_end() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{\n  users = [ {{ nkey: {:?} }} ]\n}}\n",
        user.public_key()
    ));
    let seed = user.seed().unwrap();
    let admin = async_nats::ConnectOptions::with_nkey(seed.clone())
        .connect(server.url())
        .await
        .unwrap();
    let mut host = host_config(&server.url());
    host.nats.nkey_seed = Some(seed);
    uppercase_through(admin, host).await;
}

/// A JWT of `claims` (with `iss`, `sub`, `iat`, `jti` and `name` filled in) signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}{iat}").to_uppercase(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_end_to_end() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
        "consumer": -1,
    });
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "test-account",
        serde_json::json!({ "limits": unlimited, "type": "account", "version": 2 }),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "test-user",
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let operator_file = dir.path().join("operator.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let creds = dir.path().join("host.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({ "type": "account", "version": 2 }),
    );
    let server = NatsServer::start_with_config(&format!(
        "operator: {operator_file:?}\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: {account_jwt:?}\n  {}: {system_jwt:?}\n}}\n",
        system.public_key(),
        account.public_key(),
        system.public_key(),
    ));
    let admin = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap()
        .connect(server.url())
        .await
        .unwrap();
    let mut host = host_config(&server.url());
    host.nats.creds_file = Some(creds);
    uppercase_through(admin, host).await;
}

/// The README's permission set for a host serving `uppercase` (JetStream, `IN` → `out.upper`)
/// and `probe` (core, `svc.probe`, replies), with its control plane.
const HOST_PERMISSIONS: &str = r#"
      publish: {
        allow: [
          "$JS.API.STREAM.INFO.IN", "$JS.API.STREAM.NAMES", "$JS.API.CONSUMER.CREATE.IN.>",
          "$JS.API.CONSUMER.MSG.NEXT.IN.uppercase", "$JS.API.CONSUMER.MSG.NEXT.IN.leaky",
          "$JS.ACK.IN.uppercase.>", "$JS.ACK.IN.leaky.>",
          "out.upper", "natsplug.dead.>", "_INBOX.>"
        ]
      }
      subscribe: { allow: ["_INBOX.natsplug.>", "svc.probe", "natsplug.control.>", "$SRV.>"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_permissions_are_enough_and_a_grant_beyond_them_fails_loudly() {
    let server = NatsServer::start_with_config(&format!(
        "accounts {{\n  APP {{\n    jetstream: enabled\n    users = [\n      \
         {{ user: \"host\", password: \"h\", permissions: {{ {HOST_PERMISSIONS} }} }}\n      \
         {{ user: \"admin\", password: \"a\" }}\n    ]\n  }}\n}}\n"
    ));
    let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "a".into())
        .connect(server.url())
        .await
        .unwrap();
    let js = jetstream::new(admin.clone());
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out.>"]).await;
    create_stream(&js, "DEAD", &["natsplug.dead.>"]).await;
    let plugins = PluginsDir::new();
    plugins
        .add("uppercase", "uppercase", UPPERCASE)
        .add(
            "probe",
            "probe",
            "[subscribe]\nsubjects = [\"svc.probe\"]\n",
        )
        // Granted `out.secret` by its manifest, but not by the host's NATS user.
        .add(
            "leaky",
            "uppercase",
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.leaky\"]\n[publish]\n\
             allow = [\"out.secret\"]\n[config]\noutput = \"out.secret\"\n",
        );
    let admin_addr = free_addr();
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.nats.user = Some("host".into());
    config.nats.password = Some("h".into());
    config.nats.request_timeout = Duration::from_millis(500);
    config.publisher.max_attempts = 2;
    config.admin.listen = Some(admin_addr);
    let host_id = config.host.id.clone().unwrap();
    let inputs: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    publish_all(&js, "in.upper", &inputs).await;
    publish_all(&js, "in.leaky", &["leak me".into()]).await;
    let host = TestHost::start(config);

    wait_until(Duration::from_secs(30), "50 outputs", || async {
        stream_messages(&js, "OUT").await.len() == 50
    })
    .await;
    wait_until(Duration::from_secs(10), "the probe's reply", || async {
        admin
            .request("svc.probe", "reply".into())
            .await
            .is_ok_and(|r| &r.payload[..] == b"pong")
    })
    .await;
    let listed = admin
        .request(format!("natsplug.control.{host_id}.list"), "".into())
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.payload).into_owned();
    assert!(
        listed.contains("uppercase") && listed.contains("leaky"),
        "the control plane answers: {listed}"
    );
    // The leaky output is refused by the server: the input is retried, never acked, and the
    // refusal is counted as a publish failure.
    let retried = "natsplug_messages_total{plugin=\"leaky\",outcome=\"retried\"}";
    wait_until(
        Duration::from_secs(30),
        "the leaky input retried",
        || async {
            match admin_get(admin_addr, "/metrics").await {
                Some((200, text)) => sample(&text, retried).unwrap_or(0.0) >= 1.0,
                _ => false,
            }
        },
    )
    .await;
    host.stop().await;
    let info = consumer_info(&js, "IN", "leaky").await;
    assert_eq!(
        info.num_ack_pending as u64 + info.num_pending,
        1,
        "the input is kept"
    );
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.delivered.consumer_sequence
        ),
        (0, 0, 50)
    );
    assert!(
        stream_messages(&js, "OUT")
            .await
            .iter()
            .all(|m| m.subject == "out.upper")
    );
}
