//! Filesystem layer (no FUSE) on DynamoDB Local: request counts, exclusivity across
//! clients, forced conflicts, format checks, and blocks freed by delete and truncate.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dynamofs::compression::Compression;
use dynamofs::fs::{Caller, Fs, FsConfig, FsError, RenameMode, SetAttr};
use dynamofs::keys::{self, ROOT_INO};
use dynamofs::records::{to_item, Format, FORMAT_VERSION};
use dynamofs::simulator::{SimCounts, Simulator};
use dynamofs::store::dynamo::DynamoStore;
use dynamofs::store::{
    Condition, Item, Key, Page, SortKey, Store, StoreError, Table, Value, WriteOp,
};
use futures::stream::{self, StreamExt, TryStreamExt};

const ME: Caller = Caller::ROOT;

/// No caching, so that every operation's request count is deterministic.
fn uncached() -> FsConfig {
    FsConfig {
        attr_ttl: Duration::ZERO,
        entry_ttl: Duration::ZERO,
        ..FsConfig::default()
    }
}

async fn new_fs(store: Arc<dyn Store>, config: FsConfig) -> Arc<Fs> {
    Arc::new(Fs::new(store, config).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_rename_costs_the_same_for_1000_descendants_as_for_none() {
    let store = common::dynamo_store("Rename").await;
    let fs = new_fs(store.clone(), uncached()).await;
    fs.mkdir(ME, ROOT_INO, b"empty", 0o755).await.unwrap();
    let tree = fs.mkdir(ME, ROOT_INO, b"tree", 0o755).await.unwrap();
    let mut dirs = Vec::new();
    for d in 0..10 {
        dirs.push(
            fs.mkdir(ME, tree.ino, format!("d{d}").as_bytes(), 0o755)
                .await
                .unwrap()
                .ino,
        );
    }
    let names: Vec<(u64, String)> = (0..990).map(|i| (dirs[i % 10], format!("f{i}"))).collect();
    stream::iter(
        names
            .iter()
            .map(|(dir, name)| fs.mknod(ME, *dir, name.as_bytes(), libc::S_IFREG | 0o644, 0)),
    )
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await
    .unwrap();

    let before = store.request_count();
    fs.rename(ROOT_INO, b"empty", ROOT_INO, b"empty2", RenameMode::Replace)
        .await
        .unwrap();
    let empty_cost = store.request_count() - before;
    let before = store.request_count();
    fs.rename(ROOT_INO, b"tree", ROOT_INO, b"tree2", RenameMode::Replace)
        .await
        .unwrap();
    let tree_cost = store.request_count() - before;
    println!(
        "rename: empty directory {empty_cost} requests, 1000 descendants {tree_cost} requests"
    );
    assert_eq!(
        empty_cost, tree_cost,
        "rename cost must not depend on the subtree"
    );
    assert!(tree_cost <= 8, "rename took {tree_cost} requests");

    let moved = fs.lookup(ROOT_INO, b"tree2").await.unwrap();
    let d3 = fs.lookup(moved.ino, b"d3").await.unwrap();
    fs.lookup(d3.ino, b"f3").await.unwrap();
    assert!(matches!(
        fs.lookup(ROOT_INO, b"tree").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exclusive_creates_have_one_winner_across_clients() {
    let table = common::unique_table("Excl");
    let a: Arc<dyn Store> = Arc::new(
        DynamoStore::connect(&common::dynamo_config(&table))
            .await
            .unwrap(),
    );
    let b: Arc<dyn Store> = Arc::new(
        DynamoStore::connect(&common::dynamo_config(&table))
            .await
            .unwrap(),
    );
    let (fa, fb) = (
        new_fs(a, FsConfig::default()).await,
        new_fs(b, FsConfig::default()).await,
    );
    for round in 0..30 {
        let name = format!("n{round}");
        let (ra, rb) = if round % 2 == 0 {
            tokio::join!(
                fa.mknod(ME, ROOT_INO, name.as_bytes(), libc::S_IFREG | 0o644, 0),
                fb.mknod(ME, ROOT_INO, name.as_bytes(), libc::S_IFREG | 0o644, 0)
            )
        } else {
            tokio::join!(
                fa.mkdir(ME, ROOT_INO, name.as_bytes(), 0o755),
                fb.mkdir(ME, ROOT_INO, name.as_bytes(), 0o755)
            )
        };
        let winners = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {ra:?} / {rb:?}");
        for r in [ra, rb] {
            if let Err(e) = r {
                assert!(
                    matches!(e, FsError::Exists),
                    "loser must see EEXIST, got {e:?}"
                );
            }
        }
    }
    // Both clients see the same inode for every name.
    for round in 0..30 {
        let name = format!("n{round}");
        assert_eq!(
            fa.lookup(ROOT_INO, name.as_bytes()).await.unwrap().ino,
            fb.lookup(ROOT_INO, name.as_bytes()).await.unwrap().ino
        );
    }
    // Read fresh: each client's cached copy of the root may lag by the attribute TTL.
    let fresh = Arc::new(
        DynamoStore::connect(&common::dynamo_config(&table))
            .await
            .unwrap(),
    );
    let root = new_fs(fresh, FsConfig::for_tools(false))
        .await
        .getattr(ROOT_INO)
        .await
        .unwrap();
    assert_eq!(root.nlink, 2 + 15, "15 subdirectories counted once each");
}

/// A store that makes every write fail with a conflict, `fail_every` times out of
/// `fail_every + 1`, without applying it: a stand-in for writers racing us.
struct Conflicting {
    inner: Arc<dyn Store>,
    calls: AtomicUsize,
    fail_every: usize,
    injected: AtomicUsize,
}

impl Conflicting {
    fn should_fail(&self) -> bool {
        let fail =
            self.calls.fetch_add(1, Ordering::SeqCst) % (self.fail_every + 1) != self.fail_every;
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        fail
    }
}

#[async_trait]
impl Store for Conflicting {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.inner.get(key).await
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        self.inner.batch_get(keys).await
    }
    async fn query(
        &self,
        table: Table,
        pk: &str,
        after: Option<&SortKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.inner.query(table, pk, after, limit).await
    }
    async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        let conditional = !matches!(
            &op,
            WriteOp::Put {
                cond: Condition::None,
                ..
            } | WriteOp::Delete {
                cond: Condition::None,
                ..
            }
        );
        if conditional && self.should_fail() {
            return Err(StoreError::Conflict);
        }
        self.inner.write(op).await
    }
    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        if self.should_fail() {
            return Err(StoreError::Conflict);
        }
        self.inner.transact(ops).await
    }
    async fn scan_keys(
        &self,
        table: Table,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<Key>, bool), StoreError> {
        self.inner.scan_keys(table, after, limit).await
    }
    async fn add(&self, key: &Key, attr: &str, delta: u64) -> Result<u64, StoreError> {
        self.inner.add(key, attr, delta).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_conflicts_are_retried_to_the_right_result() {
    let inner: Arc<dyn Store> = common::dynamo_store("Conflict").await;
    // Format first, without interference.
    new_fs(inner.clone(), FsConfig::default()).await;
    let store = Arc::new(Conflicting {
        inner,
        calls: AtomicUsize::new(0),
        fail_every: 3,
        injected: AtomicUsize::new(0),
    });
    let fs = new_fs(store.clone(), FsConfig::default()).await;
    let dir = fs.mkdir(ME, ROOT_INO, b"d", 0o755).await.unwrap();
    for i in 0..10 {
        fs.mknod(
            ME,
            dir.ino,
            format!("f{i}").as_bytes(),
            libc::S_IFREG | 0o600,
            0,
        )
        .await
        .unwrap();
    }
    fs.rename(dir.ino, b"f0", ROOT_INO, b"moved", RenameMode::Replace)
        .await
        .unwrap();
    fs.unlink(dir.ino, b"f1").await.unwrap();
    let f2 = fs.lookup(dir.ino, b"f2").await.unwrap();
    fs.link(f2.ino, ROOT_INO, b"f2-link").await.unwrap();
    fs.setattr(
        ME,
        f2.ino,
        SetAttr {
            mode: Some(0o640),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        fs.mknod(ME, dir.ino, b"f3", libc::S_IFREG | 0o600, 0).await,
        Err(FsError::Exists)
    ));
    assert!(
        store.injected.load(Ordering::SeqCst) >= 30,
        "conflicts were injected"
    );

    // Check the result with a client that saw no faults.
    let clean = new_fs(store.inner.clone(), uncached()).await;
    let names: Vec<Vec<u8>> = {
        let fh = clean.opendir(dir.ino).await.unwrap();
        clean
            .readdir(dir.ino, fh, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    let expected: Vec<Vec<u8>> = [".", ".."]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain((2..10).map(|i| format!("f{i}").into_bytes()))
        .collect();
    assert_eq!(names, expected);
    let f2 = clean.getattr(f2.ino).await.unwrap();
    assert_eq!((f2.nlink, f2.mode), (2, 0o640));
    assert_eq!(clean.getattr(dir.ino).await.unwrap().nlink, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_format_version_stops_the_mount() {
    let store = common::dynamo_store("Version").await;
    let future = Format {
        version: 99,
        block_size: 65536,
        stripes: 4,
        compression: Compression::None,
    };
    store
        .write(WriteOp::Put {
            key: keys::format_key(),
            item: to_item(&future),
            cond: Condition::Absent,
        })
        .await
        .unwrap();
    let err = Fs::new(store, FsConfig::default())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("format version 99"), "{err}");
}

async fn stored_blocks(store: &DynamoStore, ino: u64, stripes: u64) -> Vec<u64> {
    let mut found = Vec::new();
    for stripe in 0..stripes {
        let page = store
            .query(
                Table::Blocks,
                &keys::block_partition(ino, stripe),
                None,
                10_000,
            )
            .await
            .unwrap();
        found.extend(page.items.into_iter().map(|(sk, _)| match sk {
            SortKey::N(n) => n,
            SortKey::S(_) => unreachable!(),
        }));
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_and_truncate_free_their_blocks() {
    let store = common::dynamo_store("Blocks").await;
    let fs = new_fs(store.clone(), FsConfig::default()).await;
    let format = fs.format_record().clone();
    let bs = format.block_size;
    let (inode, opened) = fs
        .create(ME, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    let data = vec![5u8; (bs * 5 + 100) as usize];
    fs.write(opened.fh, 0, &data).await.unwrap();
    // A block far out: a sparse file whose cleanup must query the stripes.
    fs.write(opened.fh, bs * 5000, b"far").await.unwrap();
    fs.release(opened.fh).await.unwrap();
    assert_eq!(
        stored_blocks(&store, inode.ino, format.stripes).await,
        vec![0, 1, 2, 3, 4, 5, 5000]
    );

    fs.setattr(
        ME,
        inode.ino,
        SetAttr {
            size: Some(bs * 2 + 10),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        stored_blocks(&store, inode.ino, format.stripes).await,
        vec![0, 1, 2]
    );
    let opened = fs.open(ME, inode.ino, libc::O_RDWR).await.unwrap();
    fs.setattr(
        ME,
        inode.ino,
        SetAttr {
            size: Some(bs * 3),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    let tail = fs.read(opened.fh, bs * 2, bs as u32).await.unwrap();
    assert_eq!(&tail[..10], &[5u8; 10]);
    assert!(
        tail[10..].iter().all(|b| *b == 0),
        "truncated bytes came back"
    );
    fs.release(opened.fh).await.unwrap();

    fs.unlink(ROOT_INO, b"f").await.unwrap();
    assert_eq!(fs.clean_up().await.unwrap().files, 1);
    assert!(stored_blocks(&store, inode.ino, format.stripes)
        .await
        .is_empty());
    let pending = store
        .query(Table::Meta, keys::GARBAGE_PARTITION, None, 100)
        .await
        .unwrap();
    assert!(pending.items.is_empty(), "cleanup records left behind");

    // Open, unlink, keep reading, close: the blocks go only after the last close.
    let (inode, opened) = fs
        .create(ME, ROOT_INO, b"g", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    fs.write(opened.fh, 0, &data).await.unwrap();
    fs.flush(opened.fh).await.unwrap();
    fs.unlink(ROOT_INO, b"g").await.unwrap();
    assert_eq!(fs.read(opened.fh, 0, 4).await.unwrap(), vec![5u8; 4]);
    let collected = fs.clean_up().await.unwrap();
    assert_eq!((collected.files, collected.waiting), (0, 1));
    assert!(!stored_blocks(&store, inode.ino, format.stripes)
        .await
        .is_empty());
    fs.release(opened.fh).await.unwrap();
    assert_eq!(fs.clean_up().await.unwrap().files, 1);
    assert!(stored_blocks(&store, inode.ino, format.stripes)
        .await
        .is_empty());
    assert!(
        store
            .get(&keys::inode_key(inode.ino))
            .await
            .unwrap()
            .is_none(),
        "orphan inode left"
    );
}

/// `/f` holding "data" and an empty `/d`, for the checker to start from.
/// A cleanup whose client is alive but did not finish it (its request failed, or its
/// collection was cut short by the end of its time slot after the commit): that
/// client's own collector takes it up again, instead of waiting for it to die. And a
/// collector that takes up a cleanup late never deletes what was written since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_left_unfinished_by_a_live_client_is_finished_by_it() {
    let store = common::dynamo_store("Unfinished").await;
    let fs = new_fs(store.clone(), FsConfig::default()).await;
    let session = fs
        .register_session("/unfinished", Duration::from_secs(5))
        .await
        .unwrap();
    let stripes = fs.format_record().stripes;
    let bs = fs.format_record().block_size;
    let (inode, opened) = fs
        .create(ME, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    fs.write(opened.fh, 0, &vec![7u8; (bs * 3) as usize])
        .await
        .unwrap();
    fs.release(opened.fh).await.unwrap();
    fs.setattr(
        ME,
        inode.ino,
        SetAttr {
            size: Some(bs),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(stored_blocks(&store, inode.ino, stripes).await, vec![0]);

    // What the truncation would have left had its block deletes not happened.
    let mut block = Item::default();
    block.insert("d".into(), dynamofs::store::Value::B(vec![7; 16]));
    let mut planted = vec![WriteOp::Put {
        key: keys::cleanup_key(inode.ino),
        item: to_item(&dynamofs::records::Cleanup {
            ino: inode.ino,
            keep: bs,
            stored: bs * 3,
            session: Some(session),
        }),
        cond: Condition::None,
    }];
    planted.extend((1..3).map(|idx| WriteOp::Put {
        key: keys::block_key(inode.ino, idx, stripes),
        item: block.clone(),
        cond: Condition::None,
    }));
    for op in planted {
        store.write(op).await.unwrap();
    }

    assert_eq!(fs.clean_up().await.unwrap().cleanups, 1);
    assert_eq!(stored_blocks(&store, inode.ino, stripes).await, vec![0]);
    let report = fs.check(&|_| {}).await.unwrap();
    assert_eq!(report.pending_cleanups, 0);
    assert!(report.problems.is_empty(), "{}", problems_text(&report));

    // A dead client's cleanup, taken up only after the file grew again: what was
    // written since stays.
    let grown = vec![8u8; (bs * 3) as usize];
    let opened = fs.open(ME, inode.ino, libc::O_RDWR).await.unwrap();
    fs.write(opened.fh, 0, &grown).await.unwrap();
    fs.release(opened.fh).await.unwrap();
    store
        .write(WriteOp::Put {
            key: keys::cleanup_key(inode.ino),
            item: to_item(&dynamofs::records::Cleanup {
                ino: inode.ino,
                keep: bs / 2,
                stored: bs * 3,
                session: Some("0000000000dead00".into()),
            }),
            cond: Condition::None,
        })
        .await
        .unwrap();
    assert_eq!(fs.clean_up().await.unwrap().cleanups, 1);
    let opened = fs.open(ME, inode.ino, libc::O_RDONLY).await.unwrap();
    let mut back = Vec::new();
    while back.len() < grown.len() {
        let part = fs
            .read(opened.fh, back.len() as u64, bs as u32)
            .await
            .unwrap();
        assert!(!part.is_empty(), "ended early at {}", back.len());
        back.extend(part);
    }
    assert!(
        back == grown,
        "data written after the cleanup was recorded got lost"
    );
    fs.release(opened.fh).await.unwrap();
    assert_eq!(fs.check(&|_| {}).await.unwrap().pending_cleanups, 0);
    fs.unregister_session().await.unwrap();
}

async fn a_file_and_a_directory(fs: &Fs) -> (dynamofs::records::Inode, dynamofs::records::Inode) {
    let (file, opened) = fs
        .create(ME, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    fs.write(opened.fh, 0, b"data").await.unwrap();
    fs.release(opened.fh).await.unwrap();
    let dir = fs.mkdir(ME, ROOT_INO, b"d", 0o755).await.unwrap();
    (file, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_finds_planted_inconsistencies() {
    let store = common::dynamo_store("Fsck").await;
    let fs = new_fs(store.clone(), FsConfig::default()).await;
    let (file, _) = a_file_and_a_directory(&fs).await;
    assert!(
        fs.check(&|_| {}).await.unwrap().problems.is_empty(),
        "a clean filesystem checks clean"
    );

    // A dangling entry, a block nobody owns, and a block past a file's end.
    let dangling = dynamofs::records::Entry {
        ino: 999_999,
        kind: dynamofs::records::FileKind::File,
    };
    store
        .write(WriteOp::Put {
            key: keys::entry_key(ROOT_INO, b"ghost"),
            item: to_item(&dangling),
            cond: Condition::None,
        })
        .await
        .unwrap();
    let mut block = Item::default();
    block.insert("d".into(), dynamofs::store::Value::B(vec![1]));
    store
        .write(WriteOp::Put {
            key: keys::block_key(888_888, 0, 16),
            item: block.clone(),
            cond: Condition::None,
        })
        .await
        .unwrap();
    store
        .write(WriteOp::Put {
            key: keys::block_key(file.ino, 7, 16),
            item: block,
            cond: Condition::None,
        })
        .await
        .unwrap();
    let report = fs.check(&|_| {}).await.unwrap();
    let text = problems_text(&report);
    assert_eq!(report.problems.len(), 3, "{text}");
    assert!(
        text.contains("missing inode 999999")
            && text.contains("belongs to no inode")
            && text.contains("past the size"),
        "{text}"
    );
}

fn problems_text(report: &dynamofs::fs::CheckReport) -> String {
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// `repair` fixes every kind of problem the checker reports (one of each planted), and
/// collects the garbage no client needs; a second check is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_fixes_every_kind_of_problem() {
    let store = common::dynamo_store("Repair").await;
    let fs = new_fs(store.clone(), FsConfig::default()).await;
    let (file, dir) = a_file_and_a_directory(&fs).await;
    let (_, opened) = fs
        .create(ME, ROOT_INO, b"gone", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    fs.release(opened.fh).await.unwrap();
    fs.unlink(ROOT_INO, b"gone").await.unwrap();

    let put = |key: Key, item: Item| {
        let store = store.clone();
        async move {
            store
                .write(WriteOp::Put {
                    key,
                    item,
                    cond: Condition::None,
                })
                .await
                .unwrap()
        }
    };
    let entry = |ino, kind| to_item(&dynamofs::records::Entry { ino, kind });
    use dynamofs::records::FileKind;
    let mut block = Item::default();
    block.insert("d".into(), dynamofs::store::Value::B(vec![1]));
    // Dangling entry, wrong entry kind (which also adds a name), stray blocks and
    // inline data, wrong link count, wrong parent, an inode with no name.
    put(
        keys::entry_key(ROOT_INO, b"ghost"),
        entry(999_999, FileKind::File),
    )
    .await;
    put(
        keys::entry_key(dir.ino, b"kindly"),
        entry(file.ino, FileKind::Dir),
    )
    .await;
    put(keys::block_key(888_888, 0, 16), block.clone()).await;
    put(keys::block_key(file.ino, 7, 16), block.clone()).await;
    put(keys::inline_key(777_777), block).await;
    let mut wrong = fs.getattr(dir.ino).await.unwrap();
    wrong.parent = 12_345;
    wrong.ver += 1;
    put(keys::inode_key(dir.ino), to_item(&wrong)).await;
    let mut unnamed = fs.getattr(file.ino).await.unwrap();
    unnamed.ino = 666_666;
    unnamed.inline = false;
    unnamed.size = 0;
    put(keys::inode_key(666_666), to_item(&unnamed)).await;

    let fresh = new_fs(store.clone(), FsConfig::default()).await;
    let before = fresh.check(&|_| {}).await.unwrap();
    assert!(before.problems.len() >= 7, "{}", problems_text(&before));
    assert_eq!(before.pending_deletions, 1);
    let repaired = fresh.repair(&|_| {}).await.unwrap();
    println!("fixed:\n{}", repaired.fixed.join("\n"));
    assert!(
        repaired.after.problems.is_empty(),
        "{}",
        problems_text(&repaired.after)
    );
    assert!(repaired
        .fixed
        .iter()
        .any(|f| f.contains("files with no name deleted")));
    let again = new_fs(store.clone(), FsConfig::default())
        .await
        .check(&|_| {})
        .await
        .unwrap();
    assert!(again.problems.is_empty(), "{}", problems_text(&again));
    assert_eq!((again.pending_deletions, again.pending_cleanups), (0, 0));
    let found = fresh.lookup(ROOT_INO, b"lost+found").await.unwrap();
    assert_eq!(
        fresh.lookup(found.ino, b"#666666").await.unwrap().ino,
        666_666
    );
    assert_eq!(fresh.getattr(file.ino).await.unwrap().nlink, 2);
}

/// A small file's data lives in the inline item beside its inode: open and read cost
/// one request; it moves to the blocks table when the file grows past the inline limit
/// and back when a shrunk file is rewritten; truncation never lets cut bytes come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_live_inline_and_move_when_they_grow_or_shrink() {
    let store = common::dynamo_store("Inline").await;
    let fs = new_fs(store.clone(), FsConfig::default()).await;
    let stripes = fs.format_record().stripes;
    let inline_item = |ino: u64| {
        let store = store.clone();
        async move { store.get(&keys::inline_key(ino)).await.unwrap().is_some() }
    };
    let (inode, opened) = fs
        .create(ME, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    let ino = inode.ino;
    fs.write(opened.fh, 0, &[b'a'; 1000]).await.unwrap();
    let before = store.request_count();
    fs.release(opened.fh).await.unwrap();
    assert_eq!(
        store.request_count() - before,
        1,
        "a small flush is one request"
    );
    assert!(inline_item(ino).await);
    assert!(stored_blocks(&store, ino, stripes).await.is_empty());

    let before = store.request_count();
    let opened = fs.open(ME, ino, libc::O_RDWR).await.unwrap();
    assert_eq!(fs.read(opened.fh, 0, 4096).await.unwrap(), vec![b'a'; 1000]);
    assert_eq!(
        store.request_count() - before,
        1,
        "open and read: one query"
    );

    let shrink = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    fs.setattr(ME, ino, shrink(10)).await.unwrap();
    fs.setattr(ME, ino, shrink(1000)).await.unwrap();
    let back = fs.read(opened.fh, 0, 4096).await.unwrap();
    assert_eq!(&back[..10], &[b'a'; 10]);
    assert!(back[10..].iter().all(|b| *b == 0), "cut bytes came back");

    let big = vec![b'b'; 100 * 1024];
    fs.write(opened.fh, 0, &big).await.unwrap();
    fs.release(opened.fh).await.unwrap();
    assert!(
        !inline_item(ino).await,
        "grown past the limit: no inline item"
    );
    assert_eq!(stored_blocks(&store, ino, stripes).await, vec![0]);

    fs.setattr(ME, ino, shrink(50)).await.unwrap();
    let opened = fs.open(ME, ino, libc::O_RDWR).await.unwrap();
    fs.write(opened.fh, 0, b"c").await.unwrap();
    fs.release(opened.fh).await.unwrap();
    assert!(inline_item(ino).await, "rewritten small: inline again");
    assert!(stored_blocks(&store, ino, stripes).await.is_empty());
    let opened = fs.open(ME, ino, libc::O_RDONLY).await.unwrap();
    let mut want = vec![b'b'; 50];
    want[0] = b'c';
    assert_eq!(fs.read(opened.fh, 0, 4096).await.unwrap(), want);
    fs.release(opened.fh).await.unwrap();
    let report = fs.check(&|_| {}).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    fs.unlink(ROOT_INO, b"f").await.unwrap();
    // Doomed, not deleted: another client may hold it open. Nobody does.
    assert!(inline_item(ino).await);
    let collected = fs.clean_up().await.unwrap();
    assert_eq!(collected.files, 1);
    assert!(!inline_item(ino).await);
    let report = fs.check(&|_| {}).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.pending_cleanups, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_formats_are_upgraded_on_mount() {
    for version in [1, 2, 3, 4] {
        let store = common::dynamo_store("Upgrade").await;
        let old = Format {
            version,
            block_size: 256 * 1024,
            stripes: 16,
            compression: Compression::Lz4,
        };
        let mut item = to_item(&old);
        // Records before format 4 have no codec: their data is raw, and the upgrade
        // gives them the default. A format 4 record keeps its own.
        if version < 4 {
            item.remove("compression");
        }
        let expected = if version < 4 {
            Compression::Zstd
        } else {
            Compression::Lz4
        };
        store
            .write(WriteOp::Put {
                key: keys::format_key(),
                item,
                cond: Condition::Absent,
            })
            .await
            .unwrap();
        let fs = Fs::new(store.clone(), FsConfig::default()).await.unwrap();
        assert_eq!(fs.format_record().version, FORMAT_VERSION);
        let stored = store.get(&keys::format_key()).await.unwrap().unwrap();
        let stored = dynamofs::records::from_item::<Format>(stored).unwrap();
        assert_eq!(
            (stored.version, stored.compression),
            (FORMAT_VERSION, expected)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_stored_compressed_where_it_shrinks_and_a_damaged_block_is_an_error() {
    let store = common::dynamo_store("Codec").await;
    let fs = new_fs(store.clone(), uncached()).await;
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let noise = common::noise(300 * 1024);
    let mut inos = Vec::new();
    for (name, data) in [(&b"text"[..], &text), (b"noise", &noise)] {
        let (inode, opened) = fs.create(ME, ROOT_INO, name, 0o644, 0).await.unwrap();
        fs.write(opened.fh, 0, data).await.unwrap();
        fs.release(opened.fh).await.unwrap();
        inos.push(inode.ino);
    }
    let stripes = fs.format_record().stripes;
    let block = |ino: u64| {
        let store = store.clone();
        async move {
            store
                .get(&keys::block_key(ino, 0, stripes))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let text_block = block(inos[0]).await;
    assert_eq!(text_block.get("c"), Some(&Value::S("zstd".into())));
    match text_block.get("d") {
        Some(Value::B(d)) => assert!(d.len() < text.len() / 3, "{} bytes stored", d.len()),
        other => panic!("{other:?}"),
    }
    // Noise does not shrink: stored as it is, with no codec named.
    assert_eq!(block(inos[1]).await.get("c"), None);
    let fresh = new_fs(store.clone(), uncached()).await;
    for (ino, data) in inos.iter().zip([&text, &noise]) {
        let opened = fresh.open(ME, *ino, libc::O_RDONLY).await.unwrap();
        let read = fresh.read(opened.fh, 0, data.len() as u32).await.unwrap();
        assert!(read == *data, "read back what was written");
        fresh.release(opened.fh).await.unwrap();
    }

    let mut damaged = text_block.clone();
    damaged.insert("d".into(), Value::B(b"not a zstd frame".to_vec()));
    store
        .write(WriteOp::Put {
            key: keys::block_key(inos[0], 0, stripes),
            item: damaged,
            cond: Condition::None,
        })
        .await
        .unwrap();
    let fresh = new_fs(store.clone(), uncached()).await;
    let opened = fresh.open(ME, inos[0], libc::O_RDONLY).await.unwrap();
    let err = fresh.read(opened.fh, 0, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(err.to_string().contains("does not decode"), "{err}");
}

/// One collection that deletes one file: the requests it took.
async fn collect_one(fs: &Fs, sim: &Simulator) -> SimCounts {
    let before = sim.counts();
    assert_eq!(fs.clean_up().await.unwrap().files, 1);
    sim.counts().since(&before)
}

/// A file whose last name went away is deleted by one transaction, without a read,
/// when nothing changed it after the unlink; written after it (while still open), the
/// collector reads it first and deletes it as it is then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doomed_file_is_deleted_without_a_read_unless_it_changed() {
    let sim = common::simulator_without_latency();
    let mut config = common::dynamo_config(&common::unique_table("Doomed"));
    config.endpoint = Some(sim.endpoint());
    let store = Arc::new(DynamoStore::connect(&config).await.unwrap());
    let fs = new_fs(store.clone(), FsConfig::default()).await;
    let mut inos = Vec::new();
    for name in [&b"untouched"[..], b"written"] {
        let (inode, opened) = fs
            .create(ME, ROOT_INO, name, 0o644, libc::O_RDWR)
            .await
            .unwrap();
        fs.write(opened.fh, 0, b"hello").await.unwrap();
        fs.flush(opened.fh).await.unwrap();
        fs.unlink(ROOT_INO, name).await.unwrap();
        if name == b"written" {
            fs.write(opened.fh, 5, b", still open").await.unwrap();
        }
        fs.release(opened.fh).await.unwrap();
        let spent = collect_one(&fs, &sim).await;
        // Written after the unlink: the first attempt fails on the version, then a
        // read and the deletion.
        let expected = if name == b"written" { (1, 2) } else { (0, 1) };
        let counted = (
            spent.requests_of("GetItem"),
            spent.requests_of("TransactWriteItems"),
        );
        assert_eq!(
            counted,
            expected,
            "{}: {spent}",
            String::from_utf8_lossy(name)
        );
        inos.push(inode.ino);
    }
    for ino in inos {
        assert!(store.get(&keys::inode_key(ino)).await.unwrap().is_none());
        assert!(store.get(&keys::inline_key(ino)).await.unwrap().is_none());
    }
    let report = fs.check(&|_| {}).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.pending_cleanups, 0);
}
