//! The cost of one handler call: `uppercase` in Rust, Python and JavaScript, with a fresh
//! instance per message (store + WASI context + instantiate + call + drop) and with an instance
//! reused for many messages (`[instance] isolation = "pool"`), against a native Rust function doing the same
//! work (upper-case the payload, build the output with the input's headers), in one run.
//!
//! `cargo bench -p natsplug-tests --bench call`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use natsplug::manifest::Manifest;
use natsplug::message::{Headers, Message, Output};
use natsplug::policy;
use natsplug::runtime::{Hooks, Outcome, Plugin, Runtime, RuntimeConfig};
use natsplug_tests::plugin_path;

fn native_uppercase(msg: &Message) -> Outcome {
    let text = std::str::from_utf8(&msg.payload).expect("utf-8 payload");
    Outcome::Success(vec![Output {
        subject: Some("demo.out.uppercase".into()),
        headers: msg.headers.clone(),
        payload: text.to_uppercase().into_bytes().into(),
    }])
}

fn load(runtime: &Runtime, name: &str, reuse: u32) -> Plugin {
    let manifest = Manifest::parse(
        &format!(
            "[limits]\nmemory = \"256MiB\"\nfuel = 0\n[instance]\nisolation = \"{}\"\nmax_invocations = {reuse}\n\
             [publish]\nallow = [\"demo.out.uppercase\"]\n[config]\noutput = \"demo.out.uppercase\"\n",
            if reuse > 1 { "pool" } else { "message" }
        ),
        Path::new("bench.toml"),
    )
    .unwrap();
    runtime
        .load_file(&plugin_path(name), Some(manifest))
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The tests' compile cache: Python and JavaScript components take seconds to compile.
    let cache = natsplug_tests::compile_cache_dir();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let mut msg = Message::new(
        "demo.in.uppercase",
        "hello natsplug, 64 bytes of payload to upper-case here......",
    );
    msg.headers = Headers(vec![("trace".into(), "abc".into())]);

    let mut group = c.benchmark_group("uppercase");
    group.bench_function("native", |b| {
        b.iter(|| black_box(native_uppercase(black_box(&msg))))
    });
    // What the host's policy adds to each output (subject, headers, size), against the calls
    // below.
    let grants = load(&runtime, "uppercase", 1).grants().clone();
    let Outcome::Success(outputs) = native_uppercase(&msg) else {
        unreachable!("native_uppercase succeeds")
    };
    group.bench_function("policy checks of one output", |b| {
        b.iter(|| {
            let output = black_box(&outputs[0]);
            let subject = output.subject.as_deref().unwrap_or_default();
            black_box(grants.refuse_subject(subject)).unwrap();
            for (name, value) in &output.headers.0 {
                black_box(policy::headers::admit(name, value, &grants.headers)).unwrap();
            }
            black_box(policy::output_size(output))
        })
    });
    for (language, name) in [
        ("rust", "uppercase"),
        ("python", "uppercase-py"),
        ("js", "uppercase-js"),
    ] {
        for (policy, reuse) in [("fresh instance", 1), ("reused instance", 1_000_000)] {
            let plugin = load(&runtime, name, reuse);
            // Same answer as the native function, or the comparison means nothing.
            let answer = rt.block_on(plugin.handle(&msg, Hooks::default())).unwrap();
            assert_eq!(answer, native_uppercase(&msg), "{language}");
            group.bench_function(format!("{language} {policy}"), |b| {
                b.to_async(&rt).iter(|| async {
                    black_box(
                        plugin
                            .handle(black_box(&msg), Hooks::default())
                            .await
                            .unwrap(),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
