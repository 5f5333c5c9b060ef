//! Benchmarks: throughput, operations per second and DynamoDB requests per operation
//! of a real FUSE mount on DynamoDB Local, side by side with the raw store doing the
//! same work in the same run. Run with `cargo bench --bench throughput` (as root:
//! it mounts). Figures go to stdout; Testing.md records the latest ones.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamofs::cli::MountOptions;
use dynamofs::fs::Fs;
use dynamofs::mount;
use dynamofs::store::dynamo::DynamoStore;
use dynamofs::store::{Condition, Item, Key, Store, Value, WriteOp};
use futures::stream::{self, StreamExt};

const FILE_MIB: usize = 64;
const BLOCK: usize = 256 * 1024;
const FILES: usize = 300;
const TREE: usize = 1000;

struct Row {
    what: &'static str,
    raw: Option<(f64, f64)>,
    fs: (f64, f64),
    unit: &'static str,
}

fn measure<T>(store: &DynamoStore, work: impl FnOnce() -> T) -> (T, Duration, u64) {
    let before = store.request_count();
    let started = Instant::now();
    let out = work();
    (out, started.elapsed(), store.request_count() - before)
}

fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn main() {
    common::require_fuse();
    common::dynamo_local();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let raw = rt.block_on(common::dynamo_store("BenchRaw"));
    let store = rt.block_on(common::dynamo_store("BenchFs"));
    let options = MountOptions::default();
    let fs = rt
        .block_on(Fs::new(store.clone(), mount::fs_config(&options)))
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
    let mnt = dir.path();
    let mut rows = Vec::new();
    let data: Vec<u8> = (0..FILE_MIB * 1024 * 1024)
        .map(|i| (i * 31 % 253) as u8)
        .collect();

    // Warm DynamoDB Local's JVM up first, so that neither side pays for it.
    let mut warm = File::create(mnt.join("warm-up")).unwrap();
    warm.write_all(&data[..8 * 1024 * 1024]).unwrap();
    warm.sync_all().unwrap();
    drop(warm);

    // Sequential write: raw puts of whole blocks, 16 in flight, against write(2) + close.
    let (_, t_raw, n_raw) = measure(&raw, || {
        rt.block_on(
            stream::iter(data.chunks(BLOCK).enumerate().map(|(i, chunk)| {
                let raw = raw.clone();
                let mut item = Item::default();
                item.insert("d".into(), Value::B(chunk.to_vec()));
                async move {
                    raw.write(WriteOp::Put {
                        key: Key::block(format!("9:{}", i % 16), i as u64),
                        item,
                        cond: Condition::None,
                    })
                    .await
                    .unwrap()
                }
            }))
            .buffer_unordered(16)
            .collect::<Vec<()>>(),
        )
    });
    let (_, t_fs, n_fs) = measure(&store, || {
        let mut f = File::create(mnt.join("big")).unwrap();
        for chunk in data.chunks(1024 * 1024) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    });
    let mib = FILE_MIB as f64;
    rows.push(Row {
        what: "sequential write",
        raw: Some((mib / t_raw.as_secs_f64(), n_raw as f64 / mib)),
        fs: (mib / t_fs.as_secs_f64(), n_fs as f64 / mib),
        unit: "MiB/s | req/MiB",
    });

    // Sequential read, cold caches.
    let (_, t_raw, n_raw) = measure(&raw, || {
        let keys: Vec<Key> = (0..data.len() / BLOCK)
            .map(|i| Key::block(format!("9:{}", i % 16), i as u64))
            .collect();
        for batch in keys.chunks(16) {
            rt.block_on(raw.batch_get(batch)).unwrap();
        }
    });
    drop_caches();
    let (read, t_fs, n_fs) = measure(&store, || {
        let mut buf = Vec::new();
        File::open(mnt.join("big"))
            .unwrap()
            .read_to_end(&mut buf)
            .unwrap();
        buf
    });
    assert!(read == data, "read back what was written");
    rows.push(Row {
        what: "sequential read (cold)",
        raw: Some((mib / t_raw.as_secs_f64(), n_raw as f64 / mib)),
        fs: (mib / t_fs.as_secs_f64(), n_fs as f64 / mib),
        unit: "MiB/s | req/MiB",
    });

    // Creates of empty files: a raw conditional put per name, against open(O_CREAT|O_EXCL) + close.
    let (_, t_raw, n_raw) = measure(&raw, || {
        for i in 0..FILES {
            let mut item = Item::default();
            item.insert("ino".into(), Value::N(i.to_string()));
            rt.block_on(raw.write(WriteOp::Put {
                key: Key::meta("d:bench", format!("f{i}")),
                item,
                cond: Condition::Absent,
            }))
            .unwrap();
        }
    });
    fs::create_dir(mnt.join("files")).unwrap();
    let (_, t_fs, n_fs) = measure(&store, || {
        for i in 0..FILES {
            File::options()
                .write(true)
                .create_new(true)
                .open(mnt.join(format!("files/f{i}")))
                .unwrap();
        }
    });
    let n = FILES as f64;
    rows.push(Row {
        what: "create empty file",
        raw: Some((n / t_raw.as_secs_f64(), n_raw as f64 / n)),
        fs: (n / t_fs.as_secs_f64(), n_fs as f64 / n),
        unit: "ops/s | req/op",
    });

    // ls -l: a raw query of the partition plus a batch get of the inodes, against readdir + stat of each entry.
    let (_, t_raw, n_raw) = measure(&raw, || {
        let page = rt
            .block_on(raw.query(dynamofs::store::Table::Meta, "d:bench", None, 1000))
            .unwrap();
        let keys: Vec<Key> = page
            .items
            .iter()
            .map(|(sk, _)| {
                Key::meta(
                    "d:bench",
                    match sk {
                        dynamofs::store::SortKey::S(s) => s.clone(),
                        _ => unreachable!(),
                    },
                )
            })
            .collect();
        rt.block_on(raw.batch_get(&keys)).unwrap();
    });
    std::thread::sleep(Duration::from_millis(1100));
    let (_, t_fs, n_fs) = measure(&store, || {
        for entry in fs::read_dir(mnt.join("files")).unwrap() {
            entry.unwrap().metadata().unwrap();
        }
    });
    rows.push(Row {
        what: "ls -l (per entry)",
        raw: Some((n / t_raw.as_secs_f64(), n_raw as f64 / n)),
        fs: (n / t_fs.as_secs_f64(), n_fs as f64 / n),
        unit: "entries/s | req/entry",
    });

    // stat of a cached-out file: raw get against stat(2) after the attribute TTL.
    let (_, t_raw, n_raw) = measure(&raw, || {
        for i in 0..FILES {
            rt.block_on(raw.get(&Key::meta("d:bench", format!("f{i}"))))
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(1100));
    let (_, t_fs, n_fs) = measure(&store, || {
        for i in 0..FILES {
            fs::metadata(mnt.join(format!("files/f{i}"))).unwrap();
        }
    });
    rows.push(Row {
        what: "stat (cache expired)",
        raw: Some((n / t_raw.as_secs_f64(), n_raw as f64 / n)),
        fs: (n / t_fs.as_secs_f64(), n_fs as f64 / n),
        unit: "ops/s | req/op",
    });

    // Rename of a directory: empty, and holding TREE descendants.
    fs::create_dir(mnt.join("empty")).unwrap();
    fs::create_dir_all(mnt.join("tree/sub")).unwrap();
    for i in 0..TREE - 1 {
        File::create(mnt.join(format!("tree/sub/f{i}"))).unwrap();
    }
    // Both after the caches expired, so that both pay the same lookups.
    std::thread::sleep(Duration::from_millis(1100));
    let (_, t_empty, n_empty) = measure(&store, || {
        fs::rename(mnt.join("empty"), mnt.join("empty2")).unwrap()
    });
    std::thread::sleep(Duration::from_millis(1100));
    let (_, t_tree, n_tree) = measure(&store, || {
        fs::rename(mnt.join("tree"), mnt.join("tree2")).unwrap()
    });
    rows.push(Row {
        what: "rename empty dir",
        raw: None,
        fs: (1.0 / t_empty.as_secs_f64(), n_empty as f64),
        unit: "ops/s | req/op",
    });
    rows.push(Row {
        what: "rename dir, 1000 descendants",
        raw: None,
        fs: (1.0 / t_tree.as_secs_f64(), n_tree as f64),
        unit: "ops/s | req/op",
    });

    mount::unmount(mnt).unwrap();
    serving.join().unwrap().unwrap();

    println!(
        "\ndynamofs benchmark on DynamoDB Local ({} MiB file, {FILES} files, {TREE}-entry tree)",
        FILE_MIB
    );
    println!(
        "{:<30} {:>14} {:>10} {:>14} {:>10}  unit",
        "operation", "raw store", "raw req", "dynamofs", "fs req"
    );
    for r in rows {
        let (raw_rate, raw_req) = r.raw.map_or(("-".to_string(), "-".to_string()), |(a, b)| {
            (format!("{a:.1}"), format!("{b:.2}"))
        });
        println!(
            "{:<30} {:>14} {:>10} {:>14.1} {:>10.2}  {}",
            r.what, raw_rate, raw_req, r.fs.0, r.fs.1, r.unit
        );
    }
}
