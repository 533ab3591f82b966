//! `probe`: tries what the payload asks and reports what the host let it do, for the sandbox
//! and policy tests. A misbehaving guest on purpose: each probe is one thing a hostile handler
//! would try.
//!
//! - `env`, `getenv:NAME`: the environment, one variable.
//! - `read:PATH`, `write:PATH`: a file.
//! - `connect:HOST:PORT`: a TCP connection.
//! - `reply`: answers the request with "pong".
//! - `to:SUBJECT`: an output to that subject.
//! - `header:NAME=VALUE`: an output to `probe.out` with that header.
//! - `publish:COUNT:BYTES`: `publish()`es one buffer of BYTES bytes COUNT times.
//! - `log:COUNT:BYTES`, `stderr:COUNT:BYTES`: COUNT log lines of BYTES bytes, through `log` or
//!   stderr.
//! - `compute:MS`: computes (no sleeping) for MS milliseconds of wall time.
//! - `rounds:N`: computes N rounds of 10,000 steps: the same fuel on every machine.
//! - `request:SUBJECT`, `request-header:NAME=VALUE`, `request-bytes:N`: a request (to
//!   `pricing.quote` with that header, or with N bytes of payload), and how it ended.
//! - `kv-open:BUCKET`, `kv-get:BUCKET:KEY`, `kv-set:BUCKET:KEY`: a KV call, and how it ended.
//! - `kv-get-many:BUCKET:N`: one `get-many` of N keys.
//! - `http:URL`: a GET, and how it ended.
//! - `http-flood:N:URL`: starts N GETs without waiting, then waits for each: how many were
//!   answered and how many refused.
use std::io::Write as _;

use natsplug_sdk::{Error, Message, Output, handler, log};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let request = String::from_utf8_lossy(&msg.payload).into_owned();
    let (probe, arg) = request.split_once(':').unwrap_or((&request, ""));
    let answer = match probe {
        "env" => {
            let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            format!("env:[{}]", vars.join(","))
        }
        "getenv" => match std::env::var(arg) {
            Ok(value) => format!("env:{value}"),
            Err(e) => format!("error:{e:?}"),
        },
        "read" => match std::fs::read_to_string(arg) {
            Ok(text) => format!("read:{text}"),
            Err(e) => format!("error:{:?}", e.kind()),
        },
        "write" => match std::fs::write(arg, "written by probe") {
            Ok(()) => "wrote".to_owned(),
            Err(e) => format!("error:{:?}", e.kind()),
        },
        "connect" => match std::net::TcpStream::connect(arg) {
            Ok(_) => "connected".to_owned(),
            Err(e) => format!("error:{:?}", e.kind()),
        },
        "reply" => return Ok(vec![Output::reply().payload("pong")]),
        "to" => return Ok(vec![Output::to(arg).payload("to")]),
        "header" => {
            let (name, value) = arg.split_once('=').unwrap_or((arg, ""));
            return Ok(vec![
                Output::to("probe.out")
                    .header(name, value)
                    .payload("header"),
            ]);
        }
        "publish" => {
            let (count, bytes) = counts(arg)?;
            let buffer = vec![b'p'; bytes];
            for i in 0..count {
                natsplug_sdk::publish(Output::to("probe.out").payload(buffer.clone()))
                    .map_err(|e| Error::reject(format!("publish {i} refused: {e}")))?;
            }
            format!("published {count}")
        }
        "log" | "stderr" => {
            let (count, bytes) = counts(arg)?;
            let line = "l".repeat(bytes);
            let mut stderr = std::io::stderr();
            for _ in 0..count {
                if probe == "log" {
                    log::warn(&line);
                } else {
                    // Nothing to do if the host's stderr refuses a write: the probe reports
                    // what it tried.
                    let _ = writeln!(stderr, "{line}");
                }
            }
            format!("logged {count}")
        }
        "compute" => {
            let ms: u64 = arg
                .parse()
                .map_err(|e| Error::reject(format!("{arg:?}: {e}")))?;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            let mut x = 1u64;
            let mut rounds = 0u64;
            while std::time::Instant::now() < until {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                rounds += 1;
            }
            format!("computed {rounds} rounds")
        }
        "rounds" => {
            let rounds: u64 = arg
                .parse()
                .map_err(|e| Error::reject(format!("{arg:?}: {e}")))?;
            let mut x = 1u64;
            for _ in 0..rounds {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            format!("computed {rounds} rounds")
        }
        "request" | "request-header" | "request-bytes" => {
            let (subject, header) = match probe {
                "request" => (arg, None),
                "request-bytes" => ("pricing.quote", None),
                _ => (
                    "pricing.quote",
                    Some(arg.split_once('=').unwrap_or((arg, ""))),
                ),
            };
            let payload = match probe {
                "request-bytes" => vec![b'r'; arg.parse().unwrap_or(0)],
                _ => b"probe".to_vec(),
            };
            let mut request = natsplug_sdk::request::Request::to(subject).payload(payload);
            if let Some((name, value)) = header {
                request = request.header(name, value);
            }
            match request.send() {
                Ok(reply) => format!("reply:{}", String::from_utf8_lossy(&reply.payload)),
                Err(e) => format!("error:{e:?}"),
            }
        }
        "kv-open" | "kv-get" | "kv-set" => {
            let (bucket, key) = arg.split_once(':').unwrap_or((arg, "k"));
            let answer = natsplug_sdk::kv::Bucket::open(bucket).and_then(|b| match probe {
                "kv-get" => b
                    .get(key)
                    .map(|v| format!("got:{}", String::from_utf8_lossy(&v.unwrap_or_default()))),
                "kv-set" => b.set(key, "probe").map(|()| "set".to_owned()),
                _ => Ok("opened".to_owned()),
            });
            answer.unwrap_or_else(|e| format!("error:{e:?}"))
        }
        "kv-get-many" => {
            let (bucket, count) = arg.split_once(':').unwrap_or((arg, "1"));
            let count: usize = count.parse().unwrap_or(1);
            let keys: Vec<&str> = vec!["k"; count];
            natsplug_sdk::kv::Bucket::open(bucket)
                .and_then(|b| b.get_many(&keys))
                .map(|values| format!("got:{}", values.len()))
                .unwrap_or_else(|e| format!("error:{e:?}"))
        }
        "http-flood" => {
            let (count, url) = arg.split_once(':').unwrap_or(("1", arg));
            flood(count.parse().unwrap_or(1), url)
        }
        "http" => match natsplug_sdk::http::get(arg) {
            Ok(response) => format!("status:{} bytes:{}", response.status, response.body.len()),
            Err(e) => format!("error:{e:?}"),
        },
        _ => format!("unknown probe {request:?}"),
    };
    Ok(vec![Output::to("probe.out").payload(answer)])
}

/// `COUNT:BYTES`.
fn counts(arg: &str) -> Result<(usize, usize), Error> {
    let parse = |s: &str| {
        s.parse::<usize>()
            .map_err(|e| Error::reject(format!("{arg:?}: {e}")))
    };
    let (count, bytes) = arg.split_once(':').unwrap_or((arg, "0"));
    Ok((parse(count)?, parse(bytes)?))
}

/// Starts `count` GETs of `url` (`http://HOST:PORT/PATH`) at once, then waits for each.
fn flood(count: usize, url: &str) -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let pending: Vec<_> = (0..count)
        .filter_map(|_| {
            let request = OutgoingRequest::new(Fields::new());
            request.set_scheme(Some(&Scheme::Http)).ok()?;
            request.set_authority(Some(authority)).ok()?;
            request.set_path_with_query(Some(path)).ok()?;
            outgoing_handler::handle(request, None).ok()
        })
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for response in &pending {
        response.subscribe().block();
        match response.get() {
            Some(Ok(Ok(_))) => answered += 1,
            _ => refused += 1,
        }
    }
    format!("answered:{answered} refused:{refused}")
}
