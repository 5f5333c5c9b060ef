//! Many clients, one directory: 4 mount processes × 4 workers create and unlink small
//! files in one shared directory, through the simulator with DynamoDB's latency (5 ms),
//! transaction conflicts and throttling on, and then the same workers each in a
//! directory of its own. No operation may fail, and what the shared directory costs
//! more is bounded by counts, which are stable on a noisy machine: requests per
//! operation and conflicts. How fast each phase runs is printed here for information
//! and measured by the benchmark (`DYNAMOFS_BENCH_BACKENDS=hotdir`): on two cores,
//! DynamoDB Local's own time decides it and varies severalfold between runs.
//!
//! Each phase lasts `DYNAMOFS_HOT_SECS` seconds (default 60).

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::churn::{make_worker_dirs, phase, wait_for_collectors};
use common::{dynamo_local, mount_table, unique_table, Mounted};
use dynamofs::simulator::{SimConfig, SimCounts, Simulator};
use dynamofs::store::dynamo::DynamoStore;

const MOUNTS: usize = 4;
const WORKERS: usize = 4 * MOUNTS;
/// What a create or an unlink in a directory other clients work in may cost beyond the
/// same operation in a directory of its own: the directory's touch, sent beside the
/// transaction instead of inside it (where it would conflict), and the lookups a
/// listing that other clients keep changing cannot answer.
const SHARED_EXTRA_REQUESTS_PER_OP: f64 = 1.25;
/// Cancelled transactions per operation allowed in the shared directory.
const CONFLICTS_PER_OP: f64 = 0.02;

fn fsck_is_clean(table: &str) {
    let out = common::dynamofs_on_table("fsck", table, &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains(" 0 problems"),
        "fsck: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn report(label: &str, ops: usize, rate: f64, counts: &SimCounts) -> f64 {
    let per_op = counts.requests() as f64 / ops as f64;
    println!(
        "{label}: {ops} ops, {rate:.0} ops/s, {per_op:.2} requests/op, {} conflicts, {} throttles",
        counts.conflicts(),
        counts.throttles()
    );
    print!("{counts}");
    per_op
}

#[test]
fn many_clients_in_one_directory_do_not_fight() {
    let secs: u64 = std::env::var("DYNAMOFS_HOT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let sim = Simulator::start(dynamo_local().addr(), SimConfig::default()).unwrap();
    let table = unique_table("Hot");
    // A short heartbeat, so that each phase's garbage is collected within it.
    let options = format!("endpoint={},heartbeat=2", sim.endpoint());
    let mounts: Vec<Mounted> = (0..MOUNTS).map(|_| mount_table(&table, &options)).collect();
    let roots: Vec<PathBuf> = mounts.iter().map(|m| m.path().to_path_buf()).collect();
    std::fs::create_dir(roots[0].join("hot")).unwrap();
    for dir in ["apart", "warm"] {
        make_worker_dirs(&roots[0], dir, WORKERS);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(DynamoStore::connect(&common::dynamo_config(&table)))
        .unwrap();
    let drained = || rt.block_on(wait_for_collectors(&store, Duration::from_secs(60)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    // Warm DynamoDB Local's JVM up first (in directories of its own, whose leftover
    // files the measured phases never meet), so that neither phase pays for it.
    phase(
        &roots,
        WORKERS,
        secs.div_ceil(6),
        |w| format!("warm/w{w}"),
        &errors,
    );
    drained();

    let before = sim.counts();
    let apart = phase(&roots, WORKERS, secs, |w| format!("apart/w{w}"), &errors);
    drained();
    let apart_counts = sim.counts().since(&before);
    let before = sim.counts();
    let together = phase(&roots, WORKERS, secs, |_| "hot".to_string(), &errors);
    drained();
    let together_counts = sim.counts().since(&before);

    let apart_per_op = report(
        "separate directories",
        apart.ops,
        apart.rate(),
        &apart_counts,
    );
    let together_per_op = report(
        "one directory",
        together.ops,
        together.rate(),
        &together_counts,
    );
    println!(
        "one directory ran at {:.0} % of the rate of separate ones (not checked: a time)",
        100.0 * together.rate() / apart.rate()
    );
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} operations failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(together.ops > 0 && apart.ops > 0, "a phase did nothing");
    assert!(
        together_per_op <= apart_per_op + SHARED_EXTRA_REQUESTS_PER_OP,
        "one directory took {together_per_op:.2} requests per operation, separate ones {apart_per_op:.2}"
    );
    let conflicts_per_op = together_counts.conflicts() as f64 / together.ops as f64;
    assert!(
        conflicts_per_op <= CONFLICTS_PER_OP,
        "{conflicts_per_op:.3} conflicts per operation in one directory"
    );
    for m in &mounts {
        m.unmount();
    }
    fsck_is_clean(&table);
}
