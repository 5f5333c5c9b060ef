//! Round trips per entry, counted by the simulator between a real mount and DynamoDB
//! Local, for the everyday tools on a real source tree (the tokio crate from the cargo
//! registry, 649 entries): `tar x`, `ls -lR` and `cat` of every file with cold caches,
//! `cp -a` and `rm -rf`; `cat` again once the attributes a listing brought have
//! expired; and a sequential read of a 64 MiB file, per MiB. Counts, not times: the limits hold on a noisy machine, and a
//! change that adds a request to a common path fails here.
//!
//! The simulator's latency is off (a count does not depend on it, and the test runs
//! faster); its conflicts and throttling are on. The mounts cache for 60 s, longer
//! than the test runs: with the default 1 s, how many lookups find their entry
//! expired depends on how fast the machine is, and a count that moves with the
//! machine cannot guard against regressions. The benchmark (Testing.md) reports the
//! same workloads with the default TTLs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{dynamo_local, mount_table, sh, tarball_of, tokio_source, unique_table, Mounted};
use dynamofs::simulator::{SimConfig, Simulator};

/// Size of the file read sequentially.
const SEQUENTIAL_MIB: usize = 64;

fn entries_under(path: &Path) -> usize {
    sh(&format!("find '{}' | wc -l", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Requests per entry of `script`, printed with the capacity units it consumed.
fn per_entry(sim: &Simulator, what: &str, entries: usize, script: &str) -> f64 {
    let before = sim.counts();
    sh(script);
    let spent = sim.counts().since(&before);
    let per = spent.requests() as f64 / entries as f64;
    println!(
        "{what:<22} {:>6} requests {per:>5.2}/entry  read CU {:>7.1}  write CU {:>7.1}  conflicts {}",
        spent.requests(),
        spent.read_units(),
        spent.write_units(),
        spent.conflicts()
    );
    print!("{spent}");
    per
}

/// A fresh mount of `table` through `sim`, caching for `ttl_secs`. A long heartbeat
/// keeps the lease renewals out of the counts.
fn mount_with_ttl(table: &str, sim: &Simulator, ttl_secs: u32) -> Mounted {
    let options = format!(
        "endpoint={},heartbeat=60,attr_ttl={ttl_secs},entry_ttl={ttl_secs}",
        sim.endpoint()
    );
    mount_table(table, &options)
}

/// A fresh mount with long TTLs, which keep the machine's speed out of the counts (see
/// the header).
fn mount_cold(table: &str, sim: &Simulator) -> Mounted {
    mount_with_ttl(table, sim, 60)
}

/// [`per_entry`] of the script `script` makes of the mountpoint, on a fresh mount.
fn per_entry_on_fresh_mount(
    table: &str,
    sim: &Simulator,
    what: &str,
    units: usize,
    script: impl FnOnce(&str) -> String,
) -> f64 {
    let m = mount_cold(table, sim);
    let per = per_entry(sim, what, units, &script(&m.path().display().to_string()));
    m.unmount();
    per
}

#[test]
fn requests_per_entry_stay_within_their_limits() {
    let config = SimConfig {
        latency: Duration::ZERO,
        ..SimConfig::default()
    };
    let sim = Simulator::start(dynamo_local().addr(), config).unwrap();
    let tree = tokio_source();
    let entries = entries_under(&tree);
    let work = tempfile::tempdir().unwrap();
    let tarball = tarball_of(&tree, work.path());
    let name = tree.file_name().unwrap().to_string_lossy().into_owned();
    let table = unique_table("Trips");

    let tar = per_entry_on_fresh_mount(&table, &sim, "tar x", entries, |mnt| {
        format!("tar -C '{mnt}' -xf '{}'", tarball.display())
    });
    let ls = per_entry_on_fresh_mount(&table, &sim, "ls -lR (cold)", entries, |mnt| {
        format!("ls -lR '{mnt}/{name}' > /dev/null")
    });

    let m = mount_cold(&table, &sim);
    let mnt = m.path().display().to_string();
    let cat = per_entry(
        &sim,
        "cat every file (cold)",
        entries,
        &format!("find '{mnt}/{name}' -type f -print0 | xargs -0 cat > /dev/null"),
    );
    let cp = per_entry(
        &sim,
        "cp -a",
        entries,
        &format!("cp -a '{mnt}/{name}' '{mnt}/copy'"),
    );
    let rm = per_entry(&sim, "rm -rf", entries, &format!("rm -rf '{mnt}/copy'"));
    sh(&format!("diff -r '{}' '{mnt}/{name}'", tree.display()));
    m.unmount();

    // Attributes that expired after a listing are read again a batch at a time, not a
    // get per file: list the tree, let every cached attribute and entry expire, then
    // read every file by the paths listed. (3 s TTLs: the files of one directory are
    // read within them.)
    let m = mount_with_ttl(&table, &sim, 3);
    let mnt = m.path().display().to_string();
    let files = work.path().join("files");
    sh(&format!(
        "find '{mnt}/{name}' -type f -print0 > '{}'",
        files.display()
    ));
    std::thread::sleep(Duration::from_millis(3500));
    let cat_expired = per_entry(
        &sim,
        "cat, attributes expired",
        entries,
        &format!("xargs -0 cat < '{}' > /dev/null", files.display()),
    );
    m.unmount();

    // A sequential reader's blocks come a window at a time, as the raw store reads them
    // (16 blocks, 4 MiB, per batch get), however the kernel splits and reorders its
    // requests: the file read cold, with a fresh mount.
    let m = mount_cold(&table, &sim);
    let mnt = m.path().display().to_string();
    sh(&format!(
        "head -c {}M /dev/urandom > '{mnt}/big' && sync '{mnt}/big'",
        SEQUENTIAL_MIB
    ));
    m.unmount();
    let read = per_entry_on_fresh_mount(
        &table,
        &sim,
        "sequential read, MiB",
        SEQUENTIAL_MIB,
        |mnt| format!("cat '{mnt}/big' > /dev/null"),
    );

    // The targets of the performance issue, or below them where a change took the
    // count lower. tar x: under the lease of a directory this client made, a small new
    // file's close is answered at once and the file committed whole, with the others
    // closed meanwhile, in one transaction (about 30 a time; see `fs/lease.rs`); one
    // mkdir per directory, whose merged attribute write rides along the next
    // transaction. Measured 0.28 (1.05 with a transaction per file, 1.90 with a create
    // and a flush each); cp -a 1.20 (1.92, 2.85); rm -rf: one transaction per entry
    // (1.11 when those writes moved the directories' versions past their listings', so
    // each rmdir listed its directory again).
    let limits = [
        ("tar x", tar, 0.4),
        ("ls -lR", ls, 0.25),
        ("cat", cat, 1.2),
        // Below the target: each directory's expired listing is renewed by reading
        // its inode, in the batch that re-reads its files' inodes (1.12 when each was
        // queried again), and that batch is filled up with the expired inodes of the
        // listings read after it, a lookup's expired entry read with the inode it
        // named: measured 0.92 (1.02 with a batch per directory and a get for each).
        ("cat, attributes expired", cat_expired, 0.97),
        ("cp -a", cp, 1.4),
        ("rm -rf", rm, 1.05),
        // The raw store's 0.25 (a batch get per 4 MiB) and the four requests of
        // looking the file up and opening it.
        ("sequential read, per MiB", read, 0.32),
    ];
    let over: Vec<String> = limits
        .iter()
        .filter(|(_, per, limit)| per > limit)
        .map(|(what, per, limit)| format!("{what}: {per:.2} requests per entry, limit {limit}"))
        .collect();
    assert!(over.is_empty(), "over the round-trip limits: {over:?}");
}
