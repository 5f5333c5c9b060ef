//! The benchmark: one table of every workload for both backends, with DynamoDB at 0 and
//! 5 ms per request, each beside the raw store doing the same work in the same run.
//!
//! Run with `cargo bench --bench throughput` (release build, as root: it mounts). It
//! starts DynamoDB Local and the simulator in front of it (which adds the latency and
//! counts requests and capacity units), mounts each backend in this process, and
//! prints the table that Testing.md records, then a sweep of block sizes (64, 128,
//! 256, 384 KiB: throughput, requests and capacity units per MiB). Sizes: `DYNAMOFS_BENCH_MIB` (sequential
//! file, default 256), `DYNAMOFS_BENCH_FILES` (create/stat/unlink, default 2000),
//! `DYNAMOFS_BENCH_DIR` (entries of the `ls -l` directory, default 10000).
//! `DYNAMOFS_BENCH_SWEEP=0` leaves the block size sweep out. After DynamoDB come many
//! clients in one directory against the same clients in separate ones
//! (`DYNAMOFS_BENCH_HOT_SECS` per phase, default 30). First comes the codec comparison
//! that chose the default compression (ratio, write units and speed on the tree and on
//! incompressible data). `DYNAMOFS_BENCH_BACKENDS` picks parts, comma-separated:
//! `codecs`, `dynamodb`, `hotdir`, `embedded` (default: all).

#[path = "../tests/common/mod.rs"]
mod common;

use common::churn;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamofs::cli::MountOptions;
use dynamofs::compression::Compression;
use dynamofs::fs::{Fs, FsConfig, DEFAULT_BLOCK_SIZE};
use dynamofs::mount;
use dynamofs::simulator::{SimConfig, Simulator};
use dynamofs::store::embedded::EmbeddedStore;
use dynamofs::store::{Condition, Item, Key, Store, Table, Value, WriteOp};
use futures::stream::{self, StreamExt};

const BLOCK: usize = 256 * 1024;
const INLINE: usize = 64 * 1024;
const RANDOM_FILE_MIB: usize = 64;
const RANDOM_OPS: usize = 2000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Requests and capacity units so far, from the simulator or the embedded store.
#[derive(Clone, Copy, Default)]
struct Tally {
    requests: f64,
    read_units: f64,
    write_units: f64,
    /// Seconds DynamoDB Local took to answer (the simulator's added latency excluded).
    upstream_secs: f64,
}

enum Meter {
    Simulated(Arc<Simulator>),
    Embedded(Arc<EmbeddedStore>),
}

impl Meter {
    fn read(&self) -> Tally {
        match self {
            Meter::Simulated(sim) => {
                let c = sim.counts();
                Tally {
                    requests: c.requests() as f64,
                    read_units: c.read_units(),
                    write_units: c.write_units(),
                    upstream_secs: c.upstream_seconds(),
                }
            }
            Meter::Embedded(store) => Tally {
                requests: store.request_count() as f64,
                ..Tally::default()
            },
        }
    }
}

/// One measured run: units of work (entries, MiB, operations), time, and what it cost.
#[derive(Clone, Copy)]
struct Measured {
    units: f64,
    secs: f64,
    cost: Tally,
}

impl Measured {
    fn per_unit(&self) -> (f64, f64, f64, f64) {
        (
            self.units / self.secs,
            self.cost.requests / self.units,
            self.cost.read_units / self.units,
            self.cost.write_units / self.units,
        )
    }

    /// Milliseconds per unit that DynamoDB Local itself took to answer.
    fn upstream_ms_per_unit(&self) -> f64 {
        self.cost.upstream_secs * 1000.0 / self.units
    }
}

fn measure(meter: &Meter, units: usize, work: impl FnOnce()) -> Measured {
    let before = meter.read();
    let started = Instant::now();
    work();
    let secs = started.elapsed().as_secs_f64();
    let after = meter.read();
    Measured {
        units: units as f64,
        secs,
        cost: Tally {
            requests: after.requests - before.requests,
            read_units: after.read_units - before.read_units,
            write_units: after.write_units - before.write_units,
            upstream_secs: after.upstream_secs - before.upstream_secs,
        },
    }
}

struct Row {
    workload: &'static str,
    backend: String,
    unit: &'static str,
    fs: Measured,
    raw: Measured,
}

/// A dynamofs mount served by this process.
struct InProcess {
    dir: tempfile::TempDir,
    serving: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Mount `store`, formatting it with `block_size` if it is new, writing data with
    /// the filesystem's codec or `compression`.
    fn new(
        rt: &tokio::runtime::Runtime,
        store: Arc<dyn Store>,
        block_size: u64,
        compression: Option<Compression>,
    ) -> Self {
        let options = MountOptions {
            compression,
            ..MountOptions::default()
        };
        let config = FsConfig {
            block_size,
            ..mount::fs_config(&options)
        };
        let fs = rt.block_on(Fs::new(store, config)).unwrap();
        // A session, as a mount registers: directory leases (and locks) need one.
        rt.block_on(fs.register_session("bench", options.heartbeat))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let session = mount::start_session(
            Arc::new(fs),
            rt.handle().clone(),
            "bench",
            dir.path(),
            &options,
        )
        .unwrap();
        let serving = std::thread::spawn(move || session.run());
        InProcess {
            dir,
            serving: Some(serving),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        mount::unmount(self.dir.path()).unwrap();
        if let Some(serving) = self.serving.take() {
            serving.join().unwrap().unwrap();
        }
    }
}

/// Cold caches: the kernel's page cache dropped and dynamofs's TTLs run out. Called
/// before each side of a cold workload, so that the embedded raw store reads its file
/// from the disk too, as dynamofs does.
fn go_cold() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    std::thread::sleep(Duration::from_millis(1100));
}

fn sh(script: &str) {
    common::sh(script);
}

/// The tree every tool workload works on: tokio's source, as a tarball and as a list.
struct Tree {
    root: PathBuf,
    tarball: PathBuf,
    /// (directory, name, content or None for a directory), in walk order.
    entries: Vec<(String, String, Option<Vec<u8>>)>,
}

fn tokio_tree(work: &Path) -> Tree {
    let root = common::tokio_source();
    let tarball = common::tarball_of(&root, work);
    let mut entries = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let rel = dir
            .strip_prefix(root.parent().unwrap())
            .unwrap()
            .display()
            .to_string();
        let mut children: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name().to_string_lossy().into_owned();
            if child.file_type().unwrap().is_dir() {
                entries.push((rel.clone(), name, None));
                stack.push(child.path());
            } else {
                entries.push((rel.clone(), name, Some(fs::read(child.path()).unwrap())));
            }
        }
    }
    Tree {
        root,
        tarball,
        entries,
    }
}

fn bytes_item(data: &[u8]) -> Item {
    let mut item = Item::default();
    item.insert("d".into(), Value::B(data.to_vec()));
    item
}

fn put(key: Key, item: Item, cond: Condition) -> WriteOp {
    WriteOp::Put { key, item, cond }
}

/// The raw store's share of every workload: the fewest requests the work needs, one
/// after another where the tool goes one file after another.
struct Raw<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    prefix: String,
}

impl Raw<'_> {
    fn key(&self, dir: &str, name: &str) -> Key {
        Key::meta(format!("{}:{dir}", self.prefix), name)
    }

    fn block_key(&self, file: &str, index: usize) -> Key {
        Key::block(
            format!("{}{file}:{}", self.prefix, index % 16),
            index as u64,
        )
    }

    /// Write one tree entry: a small file (or a directory) is one item; a larger one also
    /// puts its blocks.
    fn put_entry(&self, copy: &str, (dir, name, content): &(String, String, Option<Vec<u8>>)) {
        let data = content.as_deref().unwrap_or_default();
        let inline = &data[..data.len().min(INLINE)];
        let key = self.key(&format!("{copy}{dir}"), name);
        self.rt
            .block_on(
                self.store
                    .write(put(key, bytes_item(inline), Condition::Absent)),
            )
            .unwrap();
        if data.len() > INLINE {
            for (i, chunk) in data.chunks(BLOCK).enumerate() {
                let key = self.block_key(&format!("{copy}{dir}/{name}"), i);
                self.rt
                    .block_on(
                        self.store
                            .write(put(key, bytes_item(chunk), Condition::None)),
                    )
                    .unwrap();
            }
        }
    }

    fn get_entry(&self, copy: &str, (dir, name, content): &(String, String, Option<Vec<u8>>)) {
        let key = self.key(&format!("{copy}{dir}"), name);
        self.rt.block_on(self.store.get(&key)).unwrap();
        let len = content.as_ref().map_or(0, Vec::len);
        if len > INLINE {
            let keys: Vec<Key> = (0..len.div_ceil(BLOCK))
                .map(|i| self.block_key(&format!("{copy}{dir}/{name}"), i))
                .collect();
            self.rt.block_on(self.store.batch_get(&keys)).unwrap();
        }
    }

    fn delete_entry(&self, copy: &str, (dir, name, _): &(String, String, Option<Vec<u8>>)) {
        let key = self.key(&format!("{copy}{dir}"), name);
        self.rt
            .block_on(self.store.write(WriteOp::Delete {
                key,
                cond: Condition::None,
            }))
            .unwrap();
    }

    fn list(&self, partition: &str) -> Vec<Key> {
        let pk = format!("{}:{partition}", self.prefix);
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .rt
                .block_on(self.store.query(Table::Meta, &pk, after.as_ref(), 1000))
                .unwrap();
            after = page.items.last().map(|(sk, _)| sk.clone());
            keys.extend(page.items.into_iter().map(|(sk, _)| Key {
                table: Table::Meta,
                pk: pk.clone(),
                sk,
            }));
            if !page.more {
                return keys;
            }
        }
    }

    fn put_blocks(&self, file: &str, data: &[u8], size: usize) {
        self.rt.block_on(
            stream::iter(data.chunks(size).enumerate().map(|(i, chunk)| {
                let key = self.block_key(file, i);
                let store = self.store.clone();
                async move {
                    store
                        .write(put(key, bytes_item(chunk), Condition::None))
                        .await
                        .unwrap()
                }
            }))
            .buffer_unordered(16)
            .collect::<Vec<()>>(),
        );
    }
}

/// Every workload on one mount and its raw twin; rows for the table.
fn run_workloads(
    backend: &str,
    rt: &tokio::runtime::Runtime,
    mnt: &Path,
    raw: &Raw,
    meters: (&Meter, &Meter),
    tree: &Tree,
    ls_dir: &str,
) -> Vec<Row> {
    let (meter, raw_meter) = meters;
    let mut rows = Vec::new();
    let mut row = |workload, unit, fs: Measured, raw: Measured| {
        println!("  {backend:<16} {workload:<22} done in {:.1} s", fs.secs);
        rows.push(Row {
            workload,
            backend: backend.to_string(),
            unit,
            fs,
            raw,
        })
    };
    let tag = backend.replace(' ', "");
    let base = mnt.join(&tag);
    fs::create_dir_all(&base).unwrap();
    let name = tree
        .root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let entries = tree.entries.len();
    let dirs: Vec<String> = {
        let mut d: Vec<String> = tree.entries.iter().map(|(dir, ..)| dir.clone()).collect();
        d.dedup();
        d
    };

    let fs_run = measure(meter, entries, || {
        sh(&format!(
            "tar -C '{}' -xf '{}'",
            base.display(),
            tree.tarball.display()
        ))
    });
    let raw_run = measure(raw_meter, entries, || {
        tree.entries.iter().for_each(|e| raw.put_entry(&tag, e))
    });
    row("tar x (per entry)", "entries/s", fs_run, raw_run);

    go_cold();
    let fs_run = measure(meter, entries, || {
        sh(&format!("ls -lR '{}/{name}' > /dev/null", base.display()))
    });
    go_cold();
    let raw_run = measure(raw_meter, entries, || {
        for dir in &dirs {
            raw.list(&format!("{tag}{dir}"));
        }
    });
    row("ls -lR, cold", "entries/s", fs_run, raw_run);

    go_cold();
    let fs_run = measure(meter, entries, || {
        sh(&format!(
            "find '{}/{name}' -type f -print0 | xargs -0 cat > /dev/null",
            base.display()
        ))
    });
    go_cold();
    let raw_run = measure(raw_meter, entries, || {
        tree.entries.iter().for_each(|e| raw.get_entry(&tag, e))
    });
    row("cat every file, cold", "entries/s", fs_run, raw_run);

    let fs_run = measure(meter, entries, || {
        sh(&format!(
            "cp -a '{}/{name}' '{}/copy'",
            base.display(),
            base.display()
        ))
    });
    let raw_run = measure(raw_meter, entries, || {
        for e in &tree.entries {
            raw.get_entry(&tag, e);
            raw.put_entry(&format!("{tag}copy"), e);
        }
    });
    row("cp -a", "entries/s", fs_run, raw_run);
    sh(&format!(
        "diff -r '{}' '{}/copy'",
        tree.root.display(),
        base.display()
    ));

    let fs_run = measure(meter, entries, || {
        sh(&format!("rm -rf '{}/copy'", base.display()))
    });
    let raw_run = measure(raw_meter, entries, || {
        tree.entries
            .iter()
            .for_each(|e| raw.delete_entry(&format!("{tag}copy"), e))
    });
    row("rm -rf", "entries/s", fs_run, raw_run);

    let mib = env_or("DYNAMOFS_BENCH_MIB", 256);
    // Incompressible, so that dynamofs stores as many bytes as the raw side.
    let data = common::noise(mib << 20);
    let big = base.join("big");
    let fs_run = measure(meter, mib, || write_in_mib_chunks(&big, &data));
    let raw_run = measure(raw_meter, mib, || {
        raw.put_blocks(&format!("{tag}big"), &data, BLOCK)
    });
    row("sequential write", "MiB/s", fs_run, raw_run);

    go_cold();
    let mut back = Vec::new();
    let fs_run = measure(meter, mib, || {
        File::open(&big).unwrap().read_to_end(&mut back).unwrap();
    });
    assert!(back == data, "read back what was written");
    drop(back);
    go_cold();
    let raw_run = measure(raw_meter, mib, || {
        let keys: Vec<Key> = (0..data.len().div_ceil(BLOCK))
            .map(|i| raw.block_key(&format!("{tag}big"), i))
            .collect();
        for batch in keys.chunks(16) {
            rt.block_on(raw.store.batch_get(batch)).unwrap();
        }
    });
    row("sequential read, cold", "MiB/s", fs_run, raw_run);
    fs::remove_file(&big).unwrap();

    let random = base.join("random");
    let random_len = RANDOM_FILE_MIB * 1024 * 1024;
    {
        let mut f = File::create(&random).unwrap();
        f.write_all(&data[..random_len.min(data.len())]).unwrap();
        f.set_len(random_len as u64).unwrap();
        f.sync_all().unwrap();
    }
    raw.put_blocks(
        &format!("{tag}random"),
        &data[..random_len.min(data.len())],
        4096,
    );
    let offsets: Vec<u64> = (0..RANDOM_OPS as u64)
        .map(|i| (i * 2_654_435_761 % (random_len as u64 / 4096)) * 4096)
        .collect();
    go_cold();
    let fs_run = measure(meter, RANDOM_OPS, || {
        let f = File::open(&random).unwrap();
        let mut buf = [0u8; 4096];
        for off in &offsets {
            f.read_exact_at(&mut buf, *off).unwrap();
        }
    });
    go_cold();
    let raw_run = measure(raw_meter, RANDOM_OPS, || {
        for off in &offsets {
            let key = raw.block_key(&format!("{tag}random"), (*off / 4096) as usize);
            rt.block_on(raw.store.get(&key)).unwrap();
        }
    });
    row("4 KiB random read", "ops/s", fs_run, raw_run);
    let fs_run = measure(meter, RANDOM_OPS, || {
        let f = File::options().write(true).open(&random).unwrap();
        for off in &offsets {
            f.write_all_at(&[7u8; 4096], *off).unwrap();
        }
        f.sync_all().unwrap();
    });
    let raw_run = measure(raw_meter, RANDOM_OPS, || {
        for off in &offsets {
            let key = raw.block_key(&format!("{tag}random"), (*off / 4096) as usize);
            rt.block_on(
                raw.store
                    .write(put(key, bytes_item(&[7u8; 4096]), Condition::None)),
            )
            .unwrap();
        }
    });
    row("4 KiB random write+fsync", "ops/s", fs_run, raw_run);
    drop(data);

    let files = env_or("DYNAMOFS_BENCH_FILES", 2000);
    let many = base.join("many");
    fs::create_dir(&many).unwrap();
    let fs_run = measure(meter, files, || {
        for i in 0..files {
            File::options()
                .write(true)
                .create_new(true)
                .open(many.join(format!("f{i}")))
                .unwrap();
        }
    });
    let raw_key = |i: usize| raw.key(&format!("{tag}many"), &format!("f{i}"));
    let raw_run = measure(raw_meter, files, || {
        for i in 0..files {
            rt.block_on(
                raw.store
                    .write(put(raw_key(i), Item::default(), Condition::Absent)),
            )
            .unwrap();
        }
    });
    row("create empty file", "ops/s", fs_run, raw_run);
    go_cold();
    let fs_run = measure(meter, files, || {
        for i in 0..files {
            fs::metadata(many.join(format!("f{i}"))).unwrap();
        }
    });
    go_cold();
    let raw_run = measure(raw_meter, files, || {
        for i in 0..files {
            rt.block_on(raw.store.get(&raw_key(i))).unwrap();
        }
    });
    row("stat, cache expired", "ops/s", fs_run, raw_run);
    let fs_run = measure(meter, files, || {
        for i in 0..files {
            fs::remove_file(many.join(format!("f{i}"))).unwrap();
        }
    });
    let raw_run = measure(raw_meter, files, || {
        for i in 0..files {
            rt.block_on(raw.store.write(WriteOp::Delete {
                key: raw_key(i),
                cond: Condition::None,
            }))
            .unwrap();
        }
    });
    row("unlink", "ops/s", fs_run, raw_run);

    let dir_entries = fs::read_dir(mnt.join(ls_dir)).unwrap().count();
    go_cold();
    let fs_run = measure(meter, dir_entries, || {
        for entry in fs::read_dir(mnt.join(ls_dir)).unwrap() {
            entry.unwrap().metadata().unwrap();
        }
    });
    go_cold();
    let raw_run = measure(raw_meter, dir_entries, || {
        let keys = raw.list(ls_dir);
        for chunk in keys.chunks(100) {
            rt.block_on(raw.store.batch_get(chunk)).unwrap();
        }
    });
    row("ls -l, big directory", "entries/s", fs_run, raw_run);
    rows
}

/// A directory of `n` empty files, made at full speed, for the `ls -l` workload.
fn big_directory(rt: &tokio::runtime::Runtime, mnt: &Path, raw: &Raw, n: usize) -> String {
    let dir = "wide";
    fs::create_dir(mnt.join(dir)).unwrap();
    for i in 0..n {
        File::create(mnt.join(format!("{dir}/f{i:05}"))).unwrap();
    }
    rt.block_on(
        stream::iter((0..n).map(|i| {
            let key = raw.key(dir, &format!("f{i:05}"));
            let store = raw.store.clone();
            async move {
                store
                    .write(put(key, Item::default(), Condition::None))
                    .await
                    .unwrap()
            }
        }))
        .buffer_unordered(16)
        .collect::<Vec<()>>(),
    );
    dir.to_string()
}

/// Write `data` to a new file at `path` a MiB per call, and fsync it.
fn write_in_mib_chunks(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    for chunk in data.chunks(1024 * 1024) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
}

/// The sequential write of the table on an embedded filesystem that does not compress,
/// beside the raw store again: what trying to compress incompressible data costs.
fn uncompressed_write(
    rt: &tokio::runtime::Runtime,
    work: &Path,
    raw: &Raw,
    raw_meter: &Meter,
) -> Row {
    let store = Arc::new(EmbeddedStore::open(&work.join("uncompressed.db")).unwrap());
    let mount = InProcess::new(
        rt,
        store.clone(),
        DEFAULT_BLOCK_SIZE,
        Some(Compression::None),
    );
    let mib = env_or("DYNAMOFS_BENCH_MIB", 256);
    let data = common::noise(mib << 20);
    let path = mount.path().join("big");
    let fs = measure(&Meter::Embedded(store), mib, || {
        write_in_mib_chunks(&path, &data)
    });
    let raw = measure(raw_meter, mib, || {
        raw.put_blocks("uncompressed", &data, BLOCK)
    });
    Row {
        workload: "sequential write, compression=none",
        backend: "embedded".into(),
        unit: "MiB/s",
        fs,
        raw,
    }
}

/// Sequential write and read of `SWEEP_MIB` and random 4 KiB writes, per block size,
/// at 0 and 5 ms: the figures the default block size was chosen by.
fn block_size_sweep(
    rt: &tokio::runtime::Runtime,
    sim: &Arc<Simulator>,
    connect: &dyn Fn(&str) -> Arc<dyn Store>,
) {
    const SWEEP_MIB: usize = 64;
    const SWEEP_RANDOM: usize = 500;
    let meter = Meter::Simulated(sim.clone());
    let data = common::noise(SWEEP_MIB << 20);
    let mut lines = vec![
        "| block size | latency | write MiB/s | write req/MiB | write WCU/MiB | read MiB/s | read req/MiB | read RCU/MiB | random 4 KiB write WCU/op |".to_string(),
        "|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for kib in [64u64, 128, 256, 384] {
        let mount = InProcess::new(rt, connect("Sweep"), kib * 1024, None);
        for latency in [0, 5] {
            sim.configure(|c| c.latency = Duration::from_millis(latency));
            let path = mount.path().join(format!("f{latency}"));
            let write = measure(&meter, SWEEP_MIB, || {
                let mut f = File::create(&path).unwrap();
                f.write_all(&data).unwrap();
                f.sync_all().unwrap();
            });
            go_cold();
            let read = measure(&meter, SWEEP_MIB, || {
                let mut back = Vec::new();
                File::open(&path).unwrap().read_to_end(&mut back).unwrap();
                assert!(back == data, "read back what was written");
            });
            let random = measure(&meter, SWEEP_RANDOM, || {
                let f = File::options().write(true).open(&path).unwrap();
                for i in 0..SWEEP_RANDOM as u64 {
                    let off = (i * 2_654_435_761 % (data.len() as u64 / 4096)) * 4096;
                    f.write_all_at(&[1u8; 4096], off).unwrap();
                }
                f.sync_all().unwrap();
            });
            let (w_rate, w_req, _, w_wcu) = write.per_unit();
            let (r_rate, r_req, r_rcu, _) = read.per_unit();
            let (_, _, _, rand_wcu) = random.per_unit();
            println!("  block size {kib} KiB at {latency} ms done");
            lines.push(format!(
                "| {kib} KiB | {latency} ms | {w_rate:.1} | {w_req:.2} | {w_wcu:.0} | {r_rate:.1} | {r_req:.2} | {r_rcu:.0} | {rand_wcu:.0} |"
            ));
        }
    }
    sim.configure(|c| c.latency = Duration::ZERO);
    println!(
        "\nblock size sweep ({SWEEP_MIB} MiB sequential, {SWEEP_RANDOM} random 4 KiB writes):"
    );
    for line in lines {
        println!("{line}");
    }
}

/// Many clients, one directory (issue 6): 4 mounts of one table × 4 workers create and
/// unlink small files each in a directory of its own, then all in one, at 5 ms per
/// request with the simulator's conflicts and throttling on. Prints both rates, their
/// ratio, requests and conflicts per operation. The mounts run no heartbeat, so no
/// garbage collection (as in every workload of the table).
fn hot_directory(rt: &tokio::runtime::Runtime) {
    const MOUNTS: usize = 4;
    const WORKERS: usize = 4 * MOUNTS;
    let secs = env_or("DYNAMOFS_BENCH_HOT_SECS", 30) as u64;
    let sim = Simulator::start(common::dynamo_local().addr(), SimConfig::default()).unwrap();
    let mut config = common::dynamo_config(&common::unique_table("BenchHot"));
    config.endpoint = Some(sim.endpoint());
    let mounts: Vec<InProcess> = (0..MOUNTS)
        .map(|_| {
            let store = rt
                .block_on(dynamofs::store::dynamo::DynamoStore::connect(&config))
                .unwrap();
            InProcess::new(rt, Arc::new(store), DEFAULT_BLOCK_SIZE, None)
        })
        .collect();
    let roots: Vec<PathBuf> = mounts.iter().map(|m| m.path().to_path_buf()).collect();
    fs::create_dir(roots[0].join("hot")).unwrap();
    for dir in ["apart", "warm"] {
        churn::make_worker_dirs(&roots[0], dir, WORKERS);
    }
    let errors = churn::Errors::default();
    churn::phase(
        &roots,
        WORKERS,
        secs.div_ceil(6),
        |w| format!("warm/w{w}"),
        &errors,
    );
    let mut measured = Vec::new();
    for (label, dir_of) in [
        (
            "separate directories",
            &(|w| format!("apart/w{w}")) as &dyn Fn(usize) -> String,
        ),
        ("one directory", &|_| "hot".to_string()),
    ] {
        let before = sim.counts();
        let phase = churn::phase(&roots, WORKERS, secs, dir_of, &errors);
        let counts = sim.counts().since(&before);
        println!(
            "  {label}: {:.0} ops/s, {:.2} requests/op, {:.2} write units/op, {:.4} conflicts/op, {} throttles",
            phase.rate(),
            counts.requests() as f64 / phase.ops as f64,
            counts.write_units() / phase.ops as f64,
            counts.conflicts() as f64 / phase.ops as f64,
            counts.throttles(),
        );
        measured.push(phase.rate());
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "operations failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    println!(
        "\nhot directory ({MOUNTS} mounts x {} workers, {secs} s each, 5 ms): one directory at {:.0} % of the rate of separate ones",
        WORKERS / MOUNTS,
        100.0 * measured[1] / measured[0]
    );
}

/// The codecs compared on the items a filesystem would store: each file of the tree
/// (block 0 inline up to 64 KiB, the rest in 256 KiB blocks), and 64 MiB of noise in
/// blocks. Prints stored bytes and write units against raw, and compression and
/// decompression speed on one core.
fn codec_comparison(tree: &Tree) {
    let items: Vec<&[u8]> = tree
        .entries
        .iter()
        .filter_map(|(_, _, content)| content.as_deref())
        .flat_map(|data| {
            let chunk = if data.len() <= INLINE { INLINE } else { BLOCK };
            data.chunks(chunk)
        })
        .collect();
    let noise = common::noise(64 << 20);
    let noise_blocks: Vec<&[u8]> = noise.chunks(BLOCK).collect();
    let raw_bytes: usize = items.iter().map(|i| i.len()).sum();
    // A write unit per started KiB of the item, about 60 bytes of key and names included.
    let units = |len: usize| (len + 60).div_ceil(1024);
    let raw_units: usize = items.iter().map(|i| units(i.len())).sum();
    let zstd_at =
        |level: i32| move |data: &[u8]| -> Vec<u8> { zstd::bulk::compress(data, level).unwrap() };
    type Packer = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    type Unpacker = Box<dyn Fn(&[u8], usize) -> Vec<u8>>;
    let codecs: Vec<(&str, Packer, Unpacker)> = vec![
        (
            "lz4",
            Box::new(lz4_flex::compress_prepend_size),
            Box::new(|d, _| lz4_flex::decompress_size_prepended(d).unwrap()),
        ),
        (
            "zstd -1",
            Box::new(zstd_at(1)),
            Box::new(|d, n| zstd::bulk::decompress(d, n).unwrap()),
        ),
        (
            "zstd -3",
            Box::new(zstd_at(3)),
            Box::new(|d, n| zstd::bulk::decompress(d, n).unwrap()),
        ),
    ];
    println!(
        "\ncodecs on tokio's tree ({} items, {:.1} MiB raw, {raw_units} write units raw) and 64 MiB of noise:",
        items.len(),
        raw_bytes as f64 / 1048576.0
    );
    println!("| codec | stored / raw | write units / raw | compress MiB/s | decompress MiB/s | noise: compress MiB/s |");
    println!("|---|---|---|---|---|---|");
    let mib_per_s = |bytes: usize, t: Duration| bytes as f64 / 1048576.0 / t.as_secs_f64();
    for (name, pack, unpack) in &codecs {
        let start = Instant::now();
        // Stored raw where compression does not shrink the item, as dynamofs does.
        let packed: Vec<Option<Vec<u8>>> = items
            .iter()
            .map(|i| Some(pack(i)).filter(|p| p.len() < i.len()))
            .collect();
        let pack_time = start.elapsed();
        let stored: usize = packed
            .iter()
            .zip(&items)
            .map(|(p, i)| p.as_ref().map_or(i.len(), Vec::len))
            .sum();
        let stored_units: usize = packed
            .iter()
            .zip(&items)
            .map(|(p, i)| units(p.as_ref().map_or(i.len(), Vec::len)))
            .sum();
        let start = Instant::now();
        for (p, i) in packed.iter().zip(&items) {
            if let Some(p) = p {
                assert_eq!(unpack(p, i.len()).len(), i.len());
            }
        }
        let unpack_time = start.elapsed();
        let start = Instant::now();
        let shrunk = noise_blocks
            .iter()
            .filter(|b| pack(b).len() < b.len())
            .count();
        let noise_time = start.elapsed();
        assert_eq!(shrunk, 0, "noise does not compress");
        println!(
            "| {name} | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} |",
            stored as f64 / raw_bytes as f64,
            stored_units as f64 / raw_units as f64,
            mib_per_s(raw_bytes, pack_time),
            mib_per_s(raw_bytes, unpack_time),
            mib_per_s(noise.len(), noise_time),
        );
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| workload | backend | dynamofs | req/unit | RCU/unit | WCU/unit | local ms/unit | raw store | raw req/unit | raw RCU/unit | raw WCU/unit | raw local ms/unit | unit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (rate, req, rcu, wcu) = r.fs.per_unit();
        let local = r.fs.upstream_ms_per_unit();
        let (raw_rate, raw_req, raw_rcu, raw_wcu) = r.raw.per_unit();
        let raw_local = r.raw.upstream_ms_per_unit();
        println!(
            "| {} | {} | {rate:.1} | {req:.2} | {rcu:.2} | {wcu:.2} | {local:.2} | {raw_rate:.1} | {raw_req:.2} | {raw_rcu:.2} | {raw_wcu:.2} | {raw_local:.2} | {} |",
            r.workload, r.backend, r.unit
        );
    }
}

fn main() {
    common::require_fuse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let tree = tokio_tree(work.path());
    let dir_entries = env_or("DYNAMOFS_BENCH_DIR", 10_000);
    let backends = std::env::var("DYNAMOFS_BENCH_BACKENDS").unwrap_or_default();
    let wants = |backend: &str| backends.is_empty() || backends.split(',').any(|b| b == backend);
    let mut rows = Vec::new();
    if wants("codecs") {
        codec_comparison(&tree);
    }

    if wants("dynamodb") {
        // DynamoDB Local behind the simulator: at 0 ms, then at 5 ms per request.
        let sim = Arc::new(
            Simulator::start(
                common::dynamo_local().addr(),
                SimConfig {
                    latency: Duration::ZERO,
                    ..SimConfig::default()
                },
            )
            .unwrap(),
        );
        let connect = |prefix: &str| -> Arc<dyn Store> {
            let mut config = common::dynamo_config(&common::unique_table(prefix));
            config.endpoint = Some(sim.endpoint());
            Arc::new(
                rt.block_on(dynamofs::store::dynamo::DynamoStore::connect(&config))
                    .unwrap(),
            )
        };
        let raw = Raw {
            rt: &rt,
            store: connect("BenchRaw"),
            prefix: "r".into(),
        };
        let mount = InProcess::new(&rt, connect("BenchFs"), DEFAULT_BLOCK_SIZE, None);
        let meter = Meter::Simulated(sim.clone());
        let meters = (&meter, &meter);
        // Warm DynamoDB Local's JVM up first, so that neither side pays for it.
        sh(&format!(
            "tar -C '{}' -xf '{}'",
            mount.path().display(),
            tree.tarball.display()
        ));
        let wide = big_directory(&rt, mount.path(), &raw, dir_entries);
        for (label, latency) in [("DynamoDB 0 ms", 0), ("DynamoDB 5 ms", 5)] {
            sim.configure(|c| c.latency = Duration::from_millis(latency));
            println!("{label}:");
            rows.extend(run_workloads(
                label,
                &rt,
                mount.path(),
                &raw,
                meters,
                &tree,
                &wide,
            ));
        }
        drop(mount);
        if env_or("DYNAMOFS_BENCH_SWEEP", 1) != 0 {
            block_size_sweep(&rt, &sim, &connect);
        }
    }

    if wants("hotdir") {
        println!("hot directory:");
        hot_directory(&rt);
    }

    if wants("embedded") {
        // The embedded store: one local file each for dynamofs and the raw side.
        let fs_store = Arc::new(EmbeddedStore::open(&work.path().join("fs.db")).unwrap());
        let raw_store = Arc::new(EmbeddedStore::open(&work.path().join("raw.db")).unwrap());
        let raw = Raw {
            rt: &rt,
            store: raw_store.clone(),
            prefix: "r".into(),
        };
        let mount = InProcess::new(&rt, fs_store.clone(), DEFAULT_BLOCK_SIZE, None);
        let wide = big_directory(&rt, mount.path(), &raw, dir_entries);
        println!("embedded:");
        let meters = (&Meter::Embedded(fs_store), &Meter::Embedded(raw_store));
        rows.extend(run_workloads(
            "embedded",
            &rt,
            mount.path(),
            &raw,
            meters,
            &tree,
            &wide,
        ));
        drop(mount);
        rows.push(uncompressed_write(&rt, work.path(), &raw, meters.1));
    }
    if rows.is_empty() {
        return;
    }

    println!(
        "\ndynamofs benchmark: tokio {} ({} entries), {} MiB sequential, {RANDOM_OPS} random 4 KiB ops on {RANDOM_FILE_MIB} MiB, {} files, {dir_entries}-entry directory",
        tree.root.file_name().unwrap().to_string_lossy(),
        tree.entries.len(),
        env_or("DYNAMOFS_BENCH_MIB", 256),
        env_or("DYNAMOFS_BENCH_FILES", 2000),
    );
    print_table(&rows);
}
