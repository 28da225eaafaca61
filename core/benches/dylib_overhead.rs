//! Per-call overhead of a dylib provider against the same provider compiled
//! in, through the full gRPC path, and resident memory across many dylib
//! calls (the budget in issue 3: at most 5 % extra median latency, no RSS
//! growth over 100,000 calls).
//!
//! Two drivers run side by side, each built from configuration text by
//! `providers::build_registry`: one with the fake provider compiled in
//! (`kind = "fake"`), one loading `plugins/fake` (the same provider code)
//! from a root-owned plugin directory. Each serves on its own unix socket
//! and holds one volume; the measured call is `ControllerGetVolume` on it,
//! which does no work in the provider beyond a map lookup, so what differs
//! is the boundary: encoding, the call into the dylib (which answers on the
//! calling thread when nothing waits), decoding. The same call is then
//! timed on the provider trait object alone, without gRPC, to show the
//! boundary's cost in microseconds.
//!
//! ```sh
//! sudo cargo bench -p omnidisk --features fake --bench dylib_overhead
//! ```
//!
//! Environment: `OMNIDISK_BENCH_CALLS` (calls per path, default 20000),
//! `OMNIDISK_BENCH_MEMORY_CALLS` (dylib calls of the memory check, default
//! 100000). The library is built in the same profile as this benchmark.
//! Needs root, like the driver's loader.

#![allow(clippy::unwrap_used)]

#[path = "../tests/conformance/dylibs.rs"]
#[allow(dead_code)]
mod dylibs;
#[path = "../tests/conformance/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use dylibs::Library;
use harness::{Served, Source};
use omnidisk::generated::csi;
use omnidisk::generated::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use omnidisk::plugin::load;
use omnidisk_provider_api::types::{CreateVolumeRequest, InitRequest, VolumeRef};

/// Calls between two RSS samples of the memory check.
const RSS_SAMPLE_EVERY: usize = 10_000;

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a count, got {v:?}")),
        Err(_) => default,
    }
}

/// VmRSS of this process in KiB.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// One path under measurement: a driver holding one volume, and the
/// request that reads it.
struct Measured {
    name: &'static str,
    served: Served,
    request: csi::ControllerGetVolumeRequest,
}

impl Measured {
    async fn start(name: &'static str, instance: &str, source: &Source) -> Self {
        let served = Served::start(instance, source, "")
            .await
            .unwrap_or_else(|e| panic!("{name}: the driver does not start: {e}"));
        let created = served
            .client
            .controller
            .clone()
            .create_volume(csi::CreateVolumeRequest {
                name: "bench-volume".into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 1 << 30,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![csi::VolumeCapability {
                    access_type: Some(AccessType::Mount(MountVolume::default())),
                    access_mode: Some(AccessMode { mode: 1 }),
                }],
                parameters: BTreeMap::from([("type".to_owned(), instance.to_owned())]),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: CreateVolume: {e:?}"))
            .into_inner()
            .volume
            .expect("a volume");
        Self {
            name,
            served,
            request: csi::ControllerGetVolumeRequest {
                volume_id: created.volume_id,
            },
        }
    }

    /// Prints VmRSS before, every [`RSS_SAMPLE_EVERY`] calls during, and
    /// after `calls` calls.
    async fn rss_over(&self, calls: usize) {
        let before = vm_rss_kib();
        let mut samples = Vec::new();
        let mut done = 0;
        let mut sink = Vec::with_capacity(RSS_SAMPLE_EVERY);
        while done < calls {
            let n = RSS_SAMPLE_EVERY.min(calls - done);
            sink.clear();
            self.run(n, &mut sink).await;
            done += n;
            samples.push(format!("{done}:{}", vm_rss_kib()));
        }
        let after = vm_rss_kib();
        println!(
            "{}: VmRSS before {calls} calls {before} KiB, after {after} KiB ({:+} KiB); along the way (calls:KiB): {}",
            self.name,
            after as i64 - before as i64,
            samples.join(" ")
        );
    }

    /// `calls` sequential calls; their latencies are appended to `out`.
    async fn run(&self, calls: usize, out: &mut Vec<Duration>) {
        let mut client = self.served.client.controller.clone();
        for _ in 0..calls {
            let started = Instant::now();
            let resp = client.controller_get_volume(self.request.clone()).await;
            out.push(started.elapsed());
            assert!(resp.is_ok(), "{}: {resp:?}", self.name);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn bench(calls: usize, memory_calls: usize) {
    let calls = calls.max(1);
    let release = !cfg!(debug_assertions);
    let profile = if release { "release" } else { "dev" };

    let plugins = dylibs::plugin_dir(&[Library::Fake], release);
    let compiled_in = Measured::start(
        "compiled in",
        "fake",
        &Source::Builtin {
            kind: "fake".into(),
        },
    )
    .await;
    let dylib = Measured::start(
        "dylib",
        "fake",
        &Source::Library {
            plugin_dir: plugins.path().to_owned(),
            file: Library::Fake.file_name(),
            kind: "fake".into(),
        },
    )
    .await;

    // A second compiled-in driver: the control. Two identical servers in
    // one process differ by a few percent (socket, connection, which
    // worker picks them up); that spread is the benchmark's noise floor.
    let control = Measured::start(
        "control",
        "fake",
        &Source::Builtin {
            kind: "fake".into(),
        },
    )
    .await;
    let paths = [&compiled_in, &dylib, &control];

    // Warm every path (connections, allocator pools).
    let mut discard = Vec::new();
    for path in paths {
        path.run(1000, &mut discard).await;
    }

    // Call by call in turn, the order rotating, so drift on a shared
    // machine and any advantage of going first hit every path alike.
    let mut latencies: [Vec<Duration>; 3] = std::array::from_fn(|_| Vec::with_capacity(calls));
    for i in 0..calls {
        for k in 0..paths.len() {
            let which = (i + k) % paths.len();
            paths[which].run(1, &mut latencies[which]).await;
        }
    }
    println!(
        "dylib overhead benchmark ({profile} profile), ControllerGetVolume through gRPC on a unix socket"
    );
    println!(
        "{:<12} {:>8} {:>12} {:>12}",
        "path", "calls", "median µs", "p99 µs"
    );
    let mut figures = Vec::new();
    for (path, lat) in paths.iter().zip(latencies.iter_mut()) {
        lat.sort();
        let (median, p99) = (percentile(lat, 0.5), percentile(lat, 0.99));
        println!(
            "{:<12} {:>8} {:>12.1} {:>12.1}",
            path.name,
            lat.len(),
            micros(median),
            micros(p99)
        );
        figures.push((median, p99));
    }
    let extra = |a: Duration, b: Duration| (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0;
    let ((med_s, p99_s), (med_d, p99_d), (med_c, _)) = (figures[0], figures[1], figures[2]);
    println!(
        "dylib overhead: median {:+.1} %, p99 {:+.1} % (budget: median at most +5 %); \
         control against compiled in (noise floor): median {:+.1} %",
        extra(med_d, med_s),
        extra(p99_d, p99_s),
        extra(med_c, med_s)
    );

    boundary_alone(plugins.path(), calls).await;

    // Memory: RSS before and after `memory_calls` more calls, sampled along
    // the way so steady growth (a leak) shows as a trend. The compiled-in
    // path runs first as the control: growth both paths show (allocator
    // pools, metrics) is not the boundary's.
    for path in [&compiled_in, &dylib] {
        path.rss_over(memory_calls).await;
    }

    compiled_in.served.stop().await;
    dylib.served.stop().await;
    control.served.stop().await;
}

/// The same comparison without gRPC: `get_volume` on the provider trait
/// object, compiled in against loaded, so the boundary's own cost shows in
/// microseconds rather than as a share of a socket round trip.
async fn boundary_alone(plugin_dir: &Path, calls: usize) {
    let init = InitRequest {
        instance: "direct".into(),
        node_name: "bench-node".into(),
        mode: "all".into(),
        ..Default::default()
    };
    let compiled_in = (omnidisk_provider_api::testing::FACTORY.create)(init.clone())
        .await
        .expect("the compiled-in fake starts");
    let file = Library::Fake.file_name();
    let dylib = load(
        Path::new(&file),
        plugin_dir,
        Some("fake"),
        init,
        Duration::from_secs(30),
    )
    .await
    .expect("the fake dylib loads");
    let mut medians = Vec::new();
    for provider in [&compiled_in, &dylib] {
        let volume = provider
            .create_volume(CreateVolumeRequest {
                name: "direct-volume".into(),
                required_bytes: 1 << 30,
                ..Default::default()
            })
            .await
            .expect("create_volume");
        let request = VolumeRef {
            volume_id: volume.id,
        };
        let mut lat = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let status = provider.get_volume(request.clone()).await;
            lat.push(started.elapsed());
            assert!(status.is_ok(), "{status:?}");
        }
        lat.sort();
        medians.push(percentile(&lat, 0.5));
    }
    println!(
        "provider trait only (no gRPC), get_volume median: compiled in {:.2} µs, dylib {:.2} µs, boundary {:+.2} µs per call",
        micros(medians[0]),
        micros(medians[1]),
        micros(medians[1]) - micros(medians[0])
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too
    // and only wants to know that it works, so it gets a few calls.
    let smoke = !std::env::args().any(|a| a == "--bench");
    if !rustix::process::geteuid().is_root() {
        let why =
            "dylib_overhead needs root: the provider loader accepts only root-owned libraries";
        if smoke && std::env::var("OMNIDISK_REQUIRE_ALL").as_deref() != Ok("1") {
            eprintln!("SKIPPED {why}");
            return;
        }
        eprintln!("{why}");
        std::process::exit(1);
    }
    let (calls, memory_calls) = if smoke {
        (100, 100)
    } else {
        (
            env_count("OMNIDISK_BENCH_CALLS", 20_000),
            env_count("OMNIDISK_BENCH_MEMORY_CALLS", 100_000),
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(bench(calls, memory_calls));
}
