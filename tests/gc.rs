//! Garbage collection, mounted: a file unlinked or replaced on one host stays readable
//! and writable through descriptors open on another until they close, and its blocks
//! are freed after that last close.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{mount_table, unique_table};
use dynamofs::keys;
use dynamofs::records::{from_item, Format};
use dynamofs::store::Table;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// How many blocks of inode `ino` the blocks table holds.
fn stored_blocks(table: &str, ino: u64) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = common::open_store(table).await;
        let format: Format =
            from_item(store.get(&keys::format_key()).await.unwrap().unwrap()).unwrap();
        let mut blocks = 0;
        for stripe in 0..format.stripes {
            let partition = keys::block_partition(ino, stripe);
            let page = store
                .query(Table::Blocks, &partition, None, 10_000)
                .await
                .unwrap();
            blocks += page.items.len();
        }
        blocks
    })
}

fn wait_until_freed(table: &str, ino: u64) -> Duration {
    let started = Instant::now();
    while stored_blocks(table, ino) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the blocks of inode {ino} are still stored after the last close"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    started.elapsed()
}

#[test]
fn a_file_removed_on_one_host_lives_on_where_it_is_open() {
    let table = unique_table("OpenElsewhere");
    let a = mount_table(&table, "heartbeat=1");
    let b = mount_table(&table, "heartbeat=1");
    let size = 3 << 20;

    for replace in [false, true] {
        let original = content(size, 7);
        fs::write(a.join("doomed"), &original).unwrap();
        let mut held = OpenOptions::new()
            .read(true)
            .write(true)
            .open(b.join("doomed"))
            .unwrap();
        let ino = held.metadata().unwrap().ino();
        if replace {
            fs::write(a.join("other"), b"the replacement").unwrap();
            fs::rename(a.join("other"), a.join("doomed")).unwrap();
            assert_eq!(fs::read(a.join("doomed")).unwrap(), b"the replacement");
        } else {
            fs::remove_file(a.join("doomed")).unwrap();
            assert!(!a.join("doomed").exists());
        }
        // Several heartbeats: every collector has had its chance to get it wrong.
        std::thread::sleep(Duration::from_secs(4));
        let mut read_back = Vec::new();
        held.read_to_end(&mut read_back).unwrap();
        assert!(read_back == original, "B lost the data of its open file");
        held.seek(SeekFrom::Start(1 << 20)).unwrap();
        held.write_all(b"still mine").unwrap();
        held.sync_all().unwrap();
        held.seek(SeekFrom::Start(1 << 20)).unwrap();
        let mut again = [0u8; 10];
        held.read_exact(&mut again).unwrap();
        assert_eq!(&again, b"still mine");
        assert!(stored_blocks(&table, ino) > 0);
        drop(held);
        let took = wait_until_freed(&table, ino);
        println!("replace={replace}: blocks freed {took:?} after the last close");
        if replace {
            fs::remove_file(a.join("doomed")).unwrap();
        }
    }
    // A repair refuses to run under live clients unless forced.
    let out = common::dynamofs_on_table("fsck", &table, &["--repair"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still mounted"),
        "{out:?}"
    );
    let out = common::dynamofs_on_table("fsck", &table, &["--repair", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    a.unmount();
    b.unmount();
    let out = common::dynamofs_on_table("fsck", &table, &[]);
    assert!(out.status.success(), "fsck: {out:?}");
    let out = common::dynamofs_on_table("fsck", &table, &["--repair"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
