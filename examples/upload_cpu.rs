//! Native CPU cost of the upload path for the benchmark's 1,000-PUT batch (bench/run.py's
//! `put1000` body): parse, plan, request body. For iterating on speed; the figures that count
//! are `make bench`'s (wasm under workerd).
//!
//! `cargo run --release --example upload_cpu` (`UPLOAD_CPU_ATOMIC=1`: atomic mode; `UPLOAD_CPU_CLIENT=<id>`:
//! with a client id, as the connectors send, so the atomic call carries the entries' digest for
//! the ledger); instruction counts by
//! function:
//! `UPLOAD_CPU_ROUNDS=3 valgrind --tool=callgrind target/release/examples/upload_cpu`

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use powersync_supabase_worker::http::{HttpRequest, HttpResponse, Transport, TransportError};
use powersync_supabase_worker::upload::{self, crud, Caller, Limits, UploadSettings};

struct Sink;

impl Transport for Sink {
    fn send(&self, request: &HttpRequest) -> impl Future<Output = Result<HttpResponse, TransportError>> {
        if request.url.contains("/rpc/") {
            // The atomic function's result
            let body = r#"{"applied":1000}"#.to_string();
            return std::future::ready(Ok(HttpResponse { status: 200, headers: Vec::new(), body }));
        }
        // PostgREST's answer to a counted write (`Prefer: count=exact`): without the row count a
        // 2xx is not counted as applied
        let headers = vec![("Content-Range".to_string(), "*/1".to_string())];
        std::future::ready(Ok(HttpResponse { status: 201, headers, body: String::new() }))
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

fn id(i: usize) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        i * 2654435761 % 0xffffffff,
        i % 0xffff,
        i % 0xfff,
        (i * 7) % 0xfff,
        i * 40503
    )
}

fn main() {
    let sub = "5b1f3c2e-8d4a-4f6b-9c1d-2e3f4a5b6c7d";
    let list = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    let entries: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"op": "PUT", "table": "todos", "id": "{}", "op_data": {{"description": "todo {i}", "list_id": "{list}", "created_by": "{sub}", "priority": {}}}}}"#,
                id(i),
                i % 6
            )
        })
        .collect();
    let body = format!(r#"{{"transactions": [{{"transaction_id": 1, "crud": [{}]}}]}}"#, entries.join(", "));
    let mut settings = UploadSettings::new("https://p.supabase.co", "anon");
    // UPLOAD_CPU_ATOMIC=1: the same batch as one call of the atomic function
    if std::env::var_os("UPLOAD_CPU_ATOMIC").is_some() {
        settings.atomic = upload::AtomicMode::Always;
    }
    let caller = Caller {
        user_id: sub.into(),
        access_token: "t".into(),
        client_id: std::env::var("UPLOAD_CPU_CLIENT").ok(),
        role: None,
    };
    let limits = Limits::default();
    // UPLOAD_CPU_ROUNDS=3 for a callgrind run (instruction counts per function)
    let rounds: u32 = std::env::var("UPLOAD_CPU_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let mut parse_ns = 0u128;
    let mut apply_ns = 0u128;
    for _ in 0..rounds {
        let started = Instant::now();
        let transactions = crud::parse(body.as_bytes(), &limits).expect("valid");
        let parsed = Instant::now();
        let report = block_on(upload::apply(&transactions, &settings, &caller, &Sink));
        assert_eq!(report.subrequests, 1);
        std::hint::black_box(report.body().to_string());
        parse_ns += (parsed - started).as_nanos();
        apply_ns += parsed.elapsed().as_nanos();
    }
    let us = |ns: u128| ns as f64 / rounds as f64 / 1000.0;
    println!(
        "1,000-PUT body of {} bytes: parse {:.0} µs + plan/apply {:.0} µs = {:.0} µs per upload (native, {rounds} rounds)",
        body.len(),
        us(parse_ns),
        us(apply_ns),
        us(parse_ns + apply_ns)
    );
}
