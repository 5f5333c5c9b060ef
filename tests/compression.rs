//! Compression through real mounts: the tokio crate's source unpacked by `tar` on a
//! filesystem that does not compress and on one that does (the default), through one
//! simulator, which counts the write units each consumed; the bytes each stored are
//! summed from its block and inline items. Then mounts of one table with each codec in
//! turn write copies of the tree and read every copy back: a block names its codec, so
//! mounts with other settings read each other's data.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{mount_table, sh, tarball_of, tokio_source, unique_table};
use dynamofs::keys;
use dynamofs::store::{Key, Store, Value};

/// Bytes stored for the files under `dir` of a mount of `table`: the `d` attribute of
/// each file's inline item or blocks (the default format: 64 KiB inline, 256 KiB blocks,
/// 16 stripes).
fn stored_bytes(table: &str, dir: &Path) -> u64 {
    let mut keys: Vec<Key> = Vec::new();
    let files = sh(&format!("find '{}' -type f", dir.display()));
    for file in files.lines() {
        let meta = std::fs::metadata(file).unwrap();
        if meta.size() <= 64 * 1024 {
            keys.push(keys::inline_key(meta.ino()));
        } else {
            keys.extend(
                (0..meta.size().div_ceil(256 * 1024)).map(|i| keys::block_key(meta.ino(), i, 16)),
            );
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(dynamofs::store::dynamo::DynamoStore::connect(
            &common::dynamo_config(table),
        ))
        .unwrap();
    let items = rt.block_on(store.batch_get(&keys)).unwrap();
    assert!(
        items.iter().all(Option::is_some),
        "every file's data is stored"
    );
    items
        .into_iter()
        .flatten()
        .map(|item| match item.get("d") {
            Some(Value::B(bytes)) => bytes.len() as u64,
            other => panic!("a data item without bytes: {other:?}"),
        })
        .sum()
}

#[test]
fn a_compressed_tree_stores_and_bills_less_and_every_codec_reads_every_other() {
    let sim = common::simulator_without_latency();
    let tree = tokio_source();
    let name = tree.file_name().unwrap().to_string_lossy().into_owned();
    let work = tempfile::tempdir().unwrap();
    let tarball = tarball_of(&tree, work.path());
    let reach = format!("endpoint={},heartbeat=60", sim.endpoint());

    let mut figures = Vec::new();
    let mut compressed_table = String::new();
    for codec in ["none", "default"] {
        let table = unique_table("Compress");
        let option = if codec == "none" {
            ",compression=none"
        } else {
            ""
        };
        let m = mount_table(&table, &format!("{reach}{option}"));
        let before = sim.counts();
        sh(&format!(
            "tar -C '{}' -xf '{}'",
            m.path().display(),
            tarball.display()
        ));
        let write_units = sim.counts().since(&before).write_units();
        sh(&format!(
            "diff -r '{}' '{}/{name}'",
            tree.display(),
            m.path().display()
        ));
        let stored = stored_bytes(&table, &m.path().join(&name));
        println!(
            "compression {codec}: {stored} bytes stored, {write_units:.0} write units for tar x"
        );
        figures.push((stored as f64, write_units));
        m.unmount();
        compressed_table = table;
    }
    let [(raw_bytes, raw_units), (bytes, units)] = figures[..] else {
        unreachable!()
    };
    println!(
        "compressed / uncompressed: {:.3} of the bytes, {:.3} of the write units",
        bytes / raw_bytes,
        units / raw_units
    );
    assert!(
        bytes <= 0.6 * raw_bytes,
        "stored {bytes} bytes, uncompressed {raw_bytes}"
    );
    // The metadata (inodes, entries, directory updates) is not compressed.
    assert!(
        units <= 0.7 * raw_units,
        "{units} write units, uncompressed {raw_units}"
    );

    for codec in ["lz4", "none", "zstd"] {
        let m = mount_table(&compressed_table, &format!("{reach},compression={codec}"));
        sh(&format!(
            "cp -a '{}' '{}/{codec}'",
            tree.display(),
            m.path().display()
        ));
        m.unmount();
    }
    let m = mount_table(&compressed_table, &reach);
    for copy in [name.as_str(), "lz4", "none", "zstd"] {
        sh(&format!(
            "diff -r '{}' '{}/{copy}'",
            tree.display(),
            m.path().display()
        ));
    }
    m.unmount();
}
