//! The cost of one handler call with a fresh instance (store + WASI context + instantiate +
//! call + drop) for the `uppercase` plugin, against a native Rust function doing the same work
//! (upper-case the payload, build the output with the input's headers), in one run.
//!
//! `cargo bench -p natsplug-tests --bench call`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use natsplug::message::{Headers, Message, Output};
use natsplug::runtime::{Hooks, Outcome, Runtime, RuntimeConfig};
use natsplug_tests::plugin_path;

fn native_uppercase(msg: &Message) -> Outcome {
    let text = std::str::from_utf8(&msg.payload).expect("utf-8 payload");
    Outcome::Success(vec![Output {
        subject: Some("demo.out.uppercase".into()),
        headers: msg.headers.clone(),
        payload: text.to_uppercase().into_bytes().into(),
    }])
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let plugin = runtime.load_file(&plugin_path("uppercase"), None).unwrap();
    let mut msg = Message::new(
        "demo.in.uppercase",
        "hello natsplug, 64 bytes of payload to upper-case here......",
    );
    msg.headers = Headers(vec![("trace".into(), "abc".into())]);

    // Same answer from both, or the comparison means nothing.
    let wasm = rt.block_on(plugin.handle(&msg, Hooks::default())).unwrap();
    assert_eq!(wasm, native_uppercase(&msg));

    let mut group = c.benchmark_group("uppercase");
    group.bench_function("native", |b| {
        b.iter(|| black_box(native_uppercase(black_box(&msg))))
    });
    group.bench_function("wasm fresh instance", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                plugin
                    .handle(black_box(&msg), Hooks::default())
                    .await
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
