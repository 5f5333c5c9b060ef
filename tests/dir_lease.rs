//! Directory leases (filesystem layer, no FUSE), on DynamoDB Local through the
//! simulator with its conflicts on: in a directory it made, a client creates and closes
//! small files without waiting for a request, and commits them in groups; another
//! client that looks for such a file a moment after its close finds it, content and
//! all; another client's create there waits for the lease, recalls it, and exclusivity
//! still holds; a name taken while the holder was cut off is EIO at fsync, never two
//! winners; sync and other clients' reads see deferred creates.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamofs::fs::{Caller, Fs, FsConfig, FsError};
use dynamofs::keys::{self, ROOT_INO};
use dynamofs::records::{from_item, to_item, Entry, FileKind, Inode};
use dynamofs::simulator::{SimConfig, Simulator};
use dynamofs::store::dynamo::DynamoStore;
use dynamofs::store::{Condition, Store, WriteOp};

const ME: Caller = Caller::ROOT;
const CREATE: i32 = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;

/// Requests of a create and close that waits for no lease: the lookup of the
/// directory, the create, the flush, and a retry of one transaction that collides
/// with the other client's (the simulator's conflicts are on).
const WITHOUT_WAITING: u64 = 5;

/// Transactions that commit 20 closed new files: one group holds them all, but the
/// settler's round may come while they are being written, which splits them.
const GROUPS_OF_TWENTY: u64 = 3;

fn simulator() -> Simulator {
    let config = SimConfig {
        latency: Duration::ZERO,
        ..SimConfig::default()
    };
    Simulator::start(common::dynamo_local().addr(), config).unwrap()
}

/// A client of `table` through `sim`, with a session and its deferred creates
/// committed in time, as a mount has them.
async fn client(sim: &Simulator, table: &str) -> (Arc<Fs>, Arc<dyn Store>) {
    let mut config = common::dynamo_config(table);
    config.endpoint = Some(sim.endpoint());
    let store: Arc<dyn Store> = Arc::new(DynamoStore::connect(&config).await.unwrap());
    let fs = Arc::new(Fs::new(store.clone(), FsConfig::default()).await.unwrap());
    fs.register_session("/lease-test", Duration::from_secs(60))
        .await
        .unwrap();
    fs.spawn_create_settler(&tokio::runtime::Handle::current());
    (fs, store)
}

/// Create `name` in `dir` with `content`, and close it.
async fn write_file(fs: &Fs, dir: u64, name: &str, content: &[u8]) -> Result<(), FsError> {
    let (_, opened) = fs.create(ME, dir, name.as_bytes(), 0o644, CREATE).await?;
    fs.write(opened.fh, 0, content).await?;
    fs.release(opened.fh).await
}

async fn read_file(fs: &Fs, dir: u64, name: &str) -> Vec<u8> {
    let inode = fs.lookup(dir, name.as_bytes()).await.unwrap();
    let opened = fs.open(ME, inode.ino, libc::O_RDONLY).await.unwrap();
    let data = fs.read(opened.fh, 0, 1 << 20).await.unwrap();
    fs.release(opened.fh).await.unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_files_in_a_leased_directory_are_committed_in_groups() {
    let sim = simulator();
    let table = common::unique_table("Lease");
    let (a, _) = client(&sim, &table).await;
    let (b, _) = client(&sim, &table).await;
    let dir = a.mkdir(ME, ROOT_INO, b"d", 0o755).await.unwrap().ino;

    let files = 20;
    let before = sim.counts();
    for i in 0..files {
        write_file(&a, dir, &format!("f{i}"), format!("content {i}").as_bytes())
            .await
            .unwrap();
    }
    let closing = sim.counts().since(&before);
    a.sync().await.unwrap();
    let spent = sim.counts().since(&before);
    print!("{spent}");
    assert!(
        closing.requests() < GROUPS_OF_TWENTY,
        "creates and closes waited for requests: {closing}"
    );
    assert!(
        spent.requests() <= GROUPS_OF_TWENTY,
        "the files are committed in groups: {spent}"
    );
    // Visible to another client, content and all.
    for i in 0..files {
        assert_eq!(
            read_file(&b, dir, &format!("f{i}")).await,
            format!("content {i}").as_bytes()
        );
    }
    // The holder's own view: a second create of a taken name fails.
    assert!(matches!(
        a.create(ME, dir, b"f0", 0o644, CREATE).await,
        Err(FsError::Exists)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_client_finds_a_file_closed_a_moment_ago() {
    let sim = simulator();
    let table = common::unique_table("Lease");
    let (a, store) = client(&sim, &table).await;
    let (b, _) = client(&sim, &table).await;
    let dir = a.mkdir(ME, ROOT_INO, b"d", 0o755).await.unwrap().ino;
    // B knows the directory, and so that A may hold its lease.
    assert_eq!(b.lookup(ROOT_INO, b"d").await.unwrap().ino, dir);

    let files = 5;
    for i in 0..files {
        write_file(&a, dir, &format!("f{i}"), format!("closed {i}").as_bytes())
            .await
            .unwrap();
    }
    // Closed, and (unless the holder's settler came by in these microseconds) not in
    // the store yet: B's lookup recalls the lease and waits for the commit.
    let committed = store.get(&keys::entry_key(dir, b"f0")).await.unwrap();
    println!("committed before B looked: {}", committed.is_some());
    for i in 0..files {
        assert_eq!(
            read_file(&b, dir, &format!("f{i}")).await,
            format!("closed {i}").as_bytes()
        );
    }
    // A name that is not there is absent for B too, once the lease ends: released by
    // the holder once it has committed the files it closed, or run out.
    assert!(matches!(
        b.lookup(dir, b"absent").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_client_waits_for_the_lease_and_one_create_wins() {
    let sim = simulator();
    let table = common::unique_table("Lease");
    let (a, _) = client(&sim, &table).await;
    let (b, _) = client(&sim, &table).await;
    let dir = a.mkdir(ME, ROOT_INO, b"d", 0o755).await.unwrap().ino;

    // A answers the create at once and holds the file open; B asks for the same name.
    let (_, held) = a.create(ME, dir, b"x", 0o644, CREATE).await.unwrap();
    a.write(held.fh, 0, b"from a").await.unwrap();
    let started = Instant::now();
    let lost = b.mknod(ME, dir, b"x", libc::S_IFREG | 0o644, 0).await;
    let waited = started.elapsed();
    assert!(
        matches!(lost, Err(FsError::Exists)),
        "B must see A's name: {lost:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "B waited {waited:?} for the lease"
    );
    // The lease is given up: B's other names go in at once, and A's next create is
    // an ordinary one. Counted, not timed: waiting for a lease polls the directory
    // every 50 ms, which would show as a run of gets.
    let before = sim.counts();
    write_file(&b, dir, "y", b"from b").await.unwrap();
    let spent = sim.counts().since(&before);
    assert!(
        spent.requests() <= WITHOUT_WAITING,
        "B's next create waited for a lease: {spent}"
    );
    write_file(&a, dir, "z", b"from a again").await.unwrap();
    a.release(held.fh).await.unwrap();
    assert_eq!(read_file(&b, dir, "x").await, b"from a");
    // A's listing, last confirmed under its lease, is trusted for the entry TTL.
    tokio::time::sleep(FsConfig::default().entry_ttl).await;
    assert_eq!(read_file(&a, dir, "y").await, b"from b");
    assert_eq!(read_file(&b, dir, "z").await, b"from a again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_taken_while_the_holder_was_cut_off_fails_its_fsync() {
    name_taken_behind_the_holders_back(false).await;
}

/// The create settler (once the create is `DEFER_LIMIT` old), or another operation of
/// the holder, may be first to find the name taken: the writer still hears it at its
/// fsync, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_lost_before_the_fsync_is_reported_by_it_once() {
    name_taken_behind_the_holders_back(true).await;
}

async fn name_taken_behind_the_holders_back(found_first_by_sync: bool) {
    let sim = simulator();
    let table = common::unique_table("Lease");
    let (a, store) = client(&sim, &table).await;
    let dir = a.mkdir(ME, ROOT_INO, b"d", 0o755).await.unwrap().ino;
    let (mine, opened) = a.create(ME, dir, b"x", 0o644, CREATE).await.unwrap();
    a.write(opened.fh, 0, b"lost").await.unwrap();
    // What another client could do had A's lease run out while A could not reach
    // DynamoDB: the name is taken behind A's back.
    let other = Entry {
        ino: 999_999,
        kind: FileKind::File,
    };
    let theirs = Inode {
        ino: other.ino,
        ..mine.clone()
    };
    let taken = vec![
        WriteOp::Put {
            key: keys::entry_key(dir, b"x"),
            item: to_item(&other),
            cond: Condition::Absent,
        },
        WriteOp::Put {
            key: keys::inode_key(other.ino),
            item: to_item(&theirs),
            cond: Condition::Absent,
        },
    ];
    store.transact(taken).await.unwrap();
    if found_first_by_sync {
        let synced = a.sync().await;
        assert!(matches!(synced, Err(FsError::NameLost)), "{synced:?}");
    }
    let synced = a.fsync(opened.fh).await;
    assert!(matches!(synced, Err(FsError::NameLost)), "{synced:?}");
    assert_eq!(FsError::NameLost.errno(), libc::EIO);
    if found_first_by_sync {
        a.fsync(opened.fh).await.unwrap();
    }
    a.release(opened.fh).await.unwrap();
    // The name is the other client's; A's own cache does not claim it any more.
    let stored = store.get(&keys::entry_key(dir, b"x")).await.unwrap();
    assert_eq!(from_item::<Entry>(stored.unwrap()).unwrap(), other);
    let fh = a.opendir(dir).await.unwrap();
    let entries = a.readdir(dir, fh, 0).await.unwrap();
    assert!(
        entries.iter().any(|e| e.name == b"x" && e.ino == 999_999),
        "{entries:?}"
    );
    assert_eq!(a.lookup(dir, b"x").await.unwrap().ino, other.ino);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_and_other_readers_see_a_deferred_create() {
    let sim = simulator();
    let table = common::unique_table("Lease");
    let (a, _) = client(&sim, &table).await;
    let (b, _) = client(&sim, &table).await;
    let dir = a.mkdir(ME, ROOT_INO, b"d", 0o755).await.unwrap().ino;
    let (_, opened) = a.create(ME, dir, b"open", 0o644, CREATE).await.unwrap();
    a.sync().await.unwrap();
    assert!(b.lookup(dir, b"open").await.is_ok(), "sync commits it");

    // Left open and idle, a create is committed within the deferral limit anyway.
    let (_, idle) = a.create(ME, dir, b"idle", 0o644, CREATE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        b.lookup(dir, b"idle").await.is_ok(),
        "committed by the settler"
    );
    a.release(opened.fh).await.unwrap();
    a.release(idle.fh).await.unwrap();
}
