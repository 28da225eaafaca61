//! Issue 4's budget: 100 volumes created and published concurrently through
//! the `Provider` trait (10 per instance) against moto, with every EC2 call
//! counted by action, compared with the floor: the same 100 CreateVolume and
//! 100 AttachVolume calls made directly and sequentially against a freshly
//! reset moto. Targets: at most 1.5 Describe calls per volume, and wall time
//! at most 2x the floor.
//!
//! Run: `cargo bench -p omnidisk-provider-aws-ebs --bench budget`
//! (`--profile dev` works too and skips the release build of the SDK).
//! A benchmark reports; it does not fail on a missed target.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FAST_WAITS, Moto, ZONE, settings_toml};
use omnidisk_provider_api::Provider;
use omnidisk_provider_api::observe::{self, Observer};
use omnidisk_provider_api::types::*;
use omnidisk_provider_aws_ebs::provider::ZONE_KEY;

const INSTANCES: usize = 10;
const VOLUMES: usize = 100;

/// (instance, action, outcome) -> calls.
type Tally = BTreeMap<(String, String, String), u64>;

/// Counts every EC2 call the provider reports.
#[derive(Debug, Default)]
struct Counter(Arc<Mutex<Tally>>);

impl Observer for Counter {
    fn api_call(&self, instance: &str, action: &str, outcome: &str, _elapsed: Duration) {
        let mut tally = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *tally
            .entry((instance.to_owned(), action.to_owned(), outcome.to_owned()))
            .or_default() += 1;
    }
}

/// Sequential direct calls: what moto alone needs for the mutating work.
async fn floor(moto: &Moto) -> Duration {
    moto.reset().expect("reset moto");
    let ec2 = moto.client().await;
    let instances = moto.run_instances(INSTANCES).await.expect("RunInstances");
    let started = Instant::now();
    for i in 0..VOLUMES {
        let vol = ec2
            .create_volume()
            .availability_zone(ZONE)
            .size(1)
            .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
            .send()
            .await
            .expect("CreateVolume");
        let id = vol.volume_id().expect("volume id");
        // Ten per instance: /dev/xvdba .. /dev/xvdbj.
        let device = format!("/dev/xvdb{}", char::from(b'a' + (i / INSTANCES) as u8));
        ec2.attach_volume()
            .volume_id(id)
            .instance_id(&instances[i % INSTANCES])
            .device(device)
            .send()
            .await
            .expect("AttachVolume");
    }
    started.elapsed()
}

/// Creates and publishes the volumes concurrently through the provider.
async fn through_provider(moto: &Moto, instance: &str, waits: &str) -> Duration {
    moto.reset().expect("reset moto");
    let nodes = moto.run_instances(INSTANCES).await.expect("RunInstances");
    let provider: Arc<dyn Provider> = (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: instance.into(),
        settings_toml: settings_toml(moto, waits),
        node_name: "bench".into(),
        mode: "controller".into(),
    })
    .await
    .expect("provider");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..VOLUMES {
        let provider = Arc::clone(&provider);
        let node = nodes[i % INSTANCES].clone();
        tasks.spawn(async move {
            let vol = provider
                .create_volume(CreateVolumeRequest {
                    name: format!("pvc-{i:03}"),
                    required_bytes: GIB,
                    requisite: vec![Topology::from_pairs([(ZONE_KEY, ZONE)])],
                    ..CreateVolumeRequest::default()
                })
                .await
                .map_err(|e| format!("create pvc-{i:03}: {}", e.full_message()))?;
            provider
                .attach_volume(AttachRequest {
                    volume_id: vol.id.clone(),
                    node_id: node,
                    ..AttachRequest::default()
                })
                .await
                .map_err(|e| format!("attach pvc-{i:03}: {}", e.full_message()))?;
            Ok::<_, String>(())
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("task: {e}")),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    elapsed
}

fn report(label: &str, instance: &str, tally: &Tally, wall: Duration, floor: Duration) {
    let mine: Vec<_> = tally
        .iter()
        .filter(|((i, _, _), _)| i == instance)
        .collect();
    println!("\n== {label} ==");
    println!("{:<28} {:<10} {:>6}", "action", "outcome", "calls");
    for ((_, action, outcome), n) in &mine {
        println!("{action:<28} {outcome:<10} {n:>6}");
    }
    let total: u64 = mine.iter().map(|(_, n)| **n).sum();
    let describes: u64 = mine
        .iter()
        .filter(|((_, a, _), _)| a.starts_with("Describe"))
        .map(|(_, n)| **n)
        .sum();
    let per_volume = describes as f64 / VOLUMES as f64;
    let ratio = wall.as_secs_f64() / floor.as_secs_f64();
    println!("total calls: {total}");
    println!(
        "Describe calls per volume: {per_volume:.2} (target <= 1.5: {})",
        if per_volume <= 1.5 { "met" } else { "MISSED" }
    );
    println!(
        "wall time: {:.3} s, floor: {:.3} s, ratio {ratio:.2} (target <= 2.0: {})",
        wall.as_secs_f64(),
        floor.as_secs_f64(),
        if ratio <= 2.0 { "met" } else { "MISSED" }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (a filter) is ignored.
    let tally = Arc::new(Mutex::new(Tally::new()));
    observe::install(Box::new(Counter(Arc::clone(&tally))));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let moto = match Moto::start() {
        Ok(moto) => moto,
        Err(why) => {
            eprintln!("SKIPPED budget: {why}");
            if common::require_all() {
                std::process::exit(1);
            }
            return;
        }
    };
    runtime.block_on(async {
        let floor = floor(&moto).await;
        println!(
            "floor: {VOLUMES} CreateVolume + {VOLUMES} AttachVolume, sequential, direct: {:.3} s",
            floor.as_secs_f64()
        );
        let default_wall = through_provider(&moto, "ebs-default", "").await;
        let fast_wall = through_provider(&moto, "ebs-fast", FAST_WAITS).await;
        let tally = tally.lock().unwrap_or_else(|p| p.into_inner()).clone();
        report(
            "provider, default waits (poll 500 ms .. 10 s, batch window 200 ms)",
            "ebs-default",
            &tally,
            default_wall,
            floor,
        );
        report(
            "provider, test waits (poll 50 ms .. 500 ms, batch window 20 ms)",
            "ebs-fast",
            &tally,
            fast_wall,
            floor,
        );
    });
}
