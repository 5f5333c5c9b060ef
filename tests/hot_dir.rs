//! Many clients, one directory: 4 mount processes × 4 workers create and unlink small
//! files in one shared directory, through the simulator with DynamoDB's latency (5 ms),
//! transaction conflicts and throttling on. No operation may fail, and the aggregate
//! rate must reach 70 % of the same workers each in a directory of its own, measured
//! in the same run.
//!
//! Each phase lasts `DYNAMOFS_HOT_SECS` seconds (default 60).

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{dynamo_local, mount_table, unique_table, Mounted};
use dynamofs::simulator::{SimConfig, Simulator};

const MOUNTS: usize = 4;
const WORKERS_PER_MOUNT: usize = 4;

/// Create (O_EXCL, 64 bytes) and unlink files in `dir` until `until`; every error is kept.
fn churn(dir: PathBuf, worker: usize, until: Instant, errors: Arc<Mutex<Vec<String>>>) -> usize {
    let mut ops = 0;
    let mut n = 0u64;
    let path = |n: u64| dir.join(format!("w{worker}-{n}"));
    while Instant::now() < until {
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path(n))
            .and_then(|mut f| f.write_all(&[b'x'; 64]));
        match created {
            Ok(()) => ops += 1,
            Err(e) => errors
                .lock()
                .unwrap()
                .push(format!("create {}: {e}", path(n).display())),
        }
        if n >= 2 {
            match fs::remove_file(path(n - 2)) {
                Ok(()) => ops += 1,
                Err(e) => errors
                    .lock()
                    .unwrap()
                    .push(format!("unlink {}: {e}", path(n - 2).display())),
            }
        }
        n += 1;
    }
    ops
}

/// Run every worker for `secs` in the directory `dir_of(worker)`; operations per second.
fn phase(
    mounts: &[Mounted],
    secs: u64,
    dir_of: impl Fn(usize) -> String,
    errors: &Arc<Mutex<Vec<String>>>,
) -> f64 {
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..MOUNTS * WORKERS_PER_MOUNT)
        .map(|w| {
            let dir = mounts[w % MOUNTS].join(&dir_of(w));
            let errors = errors.clone();
            std::thread::spawn(move || churn(dir, w, until, errors))
        })
        .collect();
    let ops: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    ops as f64 / started.elapsed().as_secs_f64()
}

fn fsck_is_clean(table: &str) {
    let out = common::dynamofs_on_table("fsck", table, &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains(" 0 problems"),
        "fsck: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn many_clients_in_one_directory_do_not_fight() {
    let secs: u64 = std::env::var("DYNAMOFS_HOT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let sim = Simulator::start(dynamo_local().addr(), SimConfig::default()).unwrap();
    let table = unique_table("Hot");
    let options = format!("endpoint={}", sim.endpoint());
    let mounts: Vec<Mounted> = (0..MOUNTS).map(|_| mount_table(&table, &options)).collect();
    let root: &Path = mounts[0].path();
    fs::create_dir(root.join("hot")).unwrap();
    for dir in ["apart", "warm"] {
        fs::create_dir(root.join(dir)).unwrap();
        for w in 0..MOUNTS * WORKERS_PER_MOUNT {
            fs::create_dir(root.join(format!("{dir}/w{w}"))).unwrap();
        }
    }
    let errors = Arc::new(Mutex::new(Vec::new()));
    // Warm DynamoDB Local's JVM up first (in directories of its own, whose leftover
    // files the measured phases never meet), so that neither phase pays for it.
    phase(&mounts, secs.div_ceil(6), |w| format!("warm/w{w}"), &errors);

    let before = sim.counts();
    let apart = phase(&mounts, secs, |w| format!("apart/w{w}"), &errors);
    let apart_counts = sim.counts().since(&before);
    let before = sim.counts();
    let together = phase(&mounts, secs, |_| "hot".to_string(), &errors);
    let together_counts = sim.counts().since(&before);

    println!(
        "separate directories: {apart:.0} ops/s, {} requests, {} conflicts, {} throttles",
        apart_counts.requests(),
        apart_counts.conflicts(),
        apart_counts.throttles()
    );
    print!("{apart_counts}");
    println!(
        "one directory:        {together:.0} ops/s ({:.0} % of separate), {} requests, {} conflicts, {} throttles",
        100.0 * together / apart,
        together_counts.requests(),
        together_counts.conflicts(),
        together_counts.throttles()
    );
    print!("{together_counts}");
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} operations failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        together >= 0.7 * apart,
        "one directory ran at {together:.0} ops/s, under 70 % of {apart:.0} in separate ones"
    );
    for m in &mounts {
        m.unmount();
    }
    fsck_is_clean(&table);
}
