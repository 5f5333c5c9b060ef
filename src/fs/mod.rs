//! The filesystem: POSIX rules over a [`Store`], free of any FUSE types.
//!
//! Each operation lives in the file named after it (`create.rs`, `rename.rs`, ...).
//! Every read-modify-write is an optimistic attempt — read what it depends on,
//! build one transaction conditioned on the versions read, commit — retried on
//! conflict through [`crate::retry`]. The first attempt may use cached records; a
//! retry always reads fresh ones.
//!
//! The rooms that are not operations:
//! - `cache.rs`, the metadata cache: inodes, entries and complete directory listings,
//!   each trusted for `attr_ttl`/`entry_ttl` (`open` always reads the inode fresh:
//!   close-to-open consistency);
//! - `held.rs`, attribute changes held back for a moment and merged;
//! - `file.rs`, open files and their write buffers, written back on flush, fsync and
//!   close;
//! - `deferred.rs`, creates and closes answered before they are committed, under a
//!   directory's lease (`lease.rs`);
//! - `blocks.rs`, block I/O: blocks, inline data of small files, cleanups;
//! - `tx.rs`, one optimistic transaction.

mod blocks;
mod cache;
mod create;
mod deferred;
mod dir;
pub mod error;
mod file;
mod fsck;
mod gc;
mod held;
mod lease;
mod locks;
mod lookup;
mod prefetch;
mod remove;
mod rename;
mod session;
mod setattr;
mod tx;
mod usage;
mod xattr;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use error::{FsError, FsResult};
pub use file::Opened;
pub use fsck::{CheckReport, Problem, RepairReport};
pub use gc::Collected;
pub use locks::LockRange;
pub use rename::RenameMode;
pub use session::SessionStatus;
pub use setattr::{SetAttr, SetTime};
pub use xattr::XattrMode;

use crate::compression::Compression;
use crate::keys::{self, ROOT_INO};
use crate::metrics::metrics;
use crate::records::{
    from_item, to_item, Entry, FileKind, Format, Inode, Timestamp, FORMAT_VERSION,
};
use crate::retry::{retry, Policy};
use crate::store::{Condition, Item, SortKey, Store, StoreError, Table, WriteOp};

/// Longest file name, in bytes.
pub const NAME_MAX: usize = 255;
/// Default data block size for new filesystems (chosen by the sweep in Testing.md).
pub const DEFAULT_BLOCK_SIZE: u64 = 256 * 1024;
/// Largest block size: a block and its item's key and attribute names stay under
/// DynamoDB's 400 KB item limit.
pub const MAX_BLOCK_SIZE: u64 = 384 * 1024;
/// Default number of partitions the blocks of one file are spread over.
pub const DEFAULT_STRIPES: u64 = 16;
const INODE_BATCH: u64 = 1024;
/// Items asked for per query request.
const QUERY_PAGE: usize = 1000;
/// Directories with at most this many entries are listed again rather than asked one name.
const RELIST_LIMIT: usize = 256;

/// How a mount behaves.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long inode attributes may be served from cache.
    pub attr_ttl: Duration,
    /// How long directory entries may be served from cache.
    pub entry_ttl: Duration,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Report every file as owned by this user.
    pub uid: Option<u32>,
    /// Report every file as owned by this group.
    pub gid: Option<u32>,
    /// Clear these permission bits in every reported mode.
    pub umask: Option<u32>,
    /// Unflushed bytes per open file before its full blocks are written behind.
    pub dirty_limit: usize,
    /// Owner of the root directory when the filesystem is first formatted.
    pub root_owner: (u32, u32),
    /// Bytes per data block when this mount formats a new filesystem (an existing one
    /// keeps the size its format record names). At most [`MAX_BLOCK_SIZE`].
    pub block_size: u64,
    /// The codec this mount writes data with; `None` takes the one the format record
    /// names, which a new (or upgraded) filesystem gets from here or the default.
    pub compression: Option<Compression>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            read_only: false,
            uid: None,
            gid: None,
            umask: None,
            dirty_limit: 16 * 1024 * 1024,
            root_owner: (0, 0),
            block_size: DEFAULT_BLOCK_SIZE,
            compression: None,
        }
    }
}

impl FsConfig {
    /// The configuration of the tools that open a filesystem without mounting it
    /// (`status`, `stat`, `fsck`, `mkfs`): nothing cached, so every figure is read
    /// fresh, and read-only unless `writable` (a repair).
    pub fn for_tools(writable: bool) -> Self {
        FsConfig {
            read_only: !writable,
            attr_ttl: Duration::ZERO,
            entry_ttl: Duration::ZERO,
            ..FsConfig::default()
        }
    }
}

/// Who is asking: the credentials of the calling process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl Caller {
    /// The superuser.
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

/// One directory entry as listed by readdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Kind of node.
    pub kind: FileKind,
    /// Name bytes.
    pub name: Vec<u8>,
}

/// Figures reported by statfs.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    /// Block size for statfs.
    pub block_size: u64,
    /// Total blocks (DynamoDB has no fixed capacity: a large constant).
    pub blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub free_files: u64,
}

/// A dynamofs filesystem over one store.
pub struct Fs {
    store: Arc<dyn Store>,
    format: Format,
    config: FsConfig,
    next_inodes: tokio::sync::Mutex<(u64, u64)>,
    cache: cache::MetaCache,
    held: held::HeldChanges,
    files: file::OpenFiles,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    session: std::sync::OnceLock<session::OwnSession>,
    liveness: session::Liveness,
    locks: locks::HeldLocks,
    cleaning: gc::CleaningNow,
    leases: lease::DirLeases,
    turns: tx::DirTurns,
    new_files: deferred::NewFiles,
    usage: usage::PendingUsage,
}

/// What [`Fs::renew_listing`] found.
enum Renewed {
    /// The listing holds again.
    Yes,
    /// It does not (or there was none); the directory's version if it was just read.
    No { dir_ver: Option<u64> },
}

enum Handle {
    File(file::FileHandle),
    Dir(dir::DirHandle),
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(FsError::Invalid);
    }
    Ok(())
}

impl Fs {
    /// Open the filesystem on `store`, formatting it if it is empty. Fails if the
    /// store holds another format version.
    pub async fn new(store: Arc<dyn Store>, config: FsConfig) -> FsResult<Fs> {
        let format = match store.get(&keys::format_key()).await? {
            Some(item) => from_item::<Format>(item)?,
            None if config.read_only => {
                return Err(StoreError::NotFound(
                    "no dynamofs format record: the store was never mounted read-write".into(),
                )
                .into())
            }
            None => Self::format(store.as_ref(), &config).await?,
        };
        let format = match format.version {
            FORMAT_VERSION => format,
            1..=4 if config.read_only => format,
            1..=4 => Self::upgrade_format(store.as_ref(), format, &config).await?,
            other => {
                return Err(StoreError::fatal(format!(
                    "the tables hold dynamofs format version {other}, but this build reads versions 1 to {FORMAT_VERSION}: \
                     mount them with the dynamofs release that made them"
                ))
                .into())
            }
        };
        let cache = cache::MetaCache::new(config.attr_ttl, config.entry_ttl);
        Ok(Fs {
            store,
            format,
            config,
            cache,
            held: held::HeldChanges::default(),
            next_inodes: tokio::sync::Mutex::new((0, 0)),
            files: file::OpenFiles::default(),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            session: std::sync::OnceLock::new(),
            liveness: session::Liveness::default(),
            locks: locks::HeldLocks::default(),
            cleaning: gc::CleaningNow::default(),
            leases: lease::DirLeases::default(),
            turns: tx::DirTurns::default(),
            new_files: deferred::NewFiles::default(),
            usage: usage::PendingUsage::default(),
        })
    }

    /// Write the format record and the root directory of a new filesystem on `store`,
    /// with `config`'s block size and codec (the first mount does this, and
    /// `dynamofs mkfs`). If another client did it at the same moment, its format is
    /// the one returned.
    pub async fn format(store: &dyn Store, config: &FsConfig) -> FsResult<Format> {
        let format = Format {
            version: FORMAT_VERSION,
            block_size: config.block_size.clamp(4096, MAX_BLOCK_SIZE),
            stripes: DEFAULT_STRIPES,
            compression: config.compression.unwrap_or_default(),
        };
        let now = Timestamp::now();
        let root = Inode::empty_dir(ROOT_INO, ROOT_INO, config.root_owner, now);
        let ops = vec![
            WriteOp::Put {
                key: keys::format_key(),
                item: to_item(&format),
                cond: Condition::Absent,
            },
            WriteOp::Put {
                key: keys::inode_key(ROOT_INO),
                item: to_item(&root),
                cond: Condition::Absent,
            },
            usage::initial_record(&root),
        ];
        match store.transact(ops).await {
            Ok(()) => {
                tracing::info!("formatted a new filesystem");
                Ok(format)
            }
            // Another client formatted it at the same moment: use theirs.
            Err(StoreError::Conflict | StoreError::Contended) => {
                let item = store
                    .get(&keys::format_key())
                    .await?
                    .ok_or(FsError::NotFound)?;
                Ok(from_item(item)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Each format adds to the one before: format 1 lacks inline data, format 2 doomed
    /// files and the open files in session records, format 3 compressed data, format 4
    /// directory leases, so every older table is a valid format 5 table. Mark it as
    /// format 5 (with, from before format 4, the codec new data is written with), so
    /// that older clients, which would neither see inline data nor keep a file open
    /// elsewhere alive nor read compressed blocks nor respect a directory's lease,
    /// refuse to mount it from now on. (Clients of the older format still mounted are
    /// not stopped: unmount them before mounting with a newer release.)
    async fn upgrade_format(store: &dyn Store, old: Format, config: &FsConfig) -> FsResult<Format> {
        let compression = match old.version {
            4.. => old.compression,
            _ => config.compression.unwrap_or_default(),
        };
        let new = Format {
            version: FORMAT_VERSION,
            compression,
            ..old
        };
        let put = WriteOp::Put {
            key: keys::format_key(),
            item: to_item(&new),
            cond: Condition::NumberIs("version", old.version.into()),
        };
        match store.write(put).await {
            // Another client upgraded it first.
            Ok(()) | Err(StoreError::Conflict) => {
                tracing::info!(
                    "upgraded the filesystem from format {} to format {FORMAT_VERSION}",
                    old.version
                );
                Ok(new)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The format record of this filesystem.
    pub fn format_record(&self) -> &Format {
        &self.format
    }

    /// Inode numbers handed out so far, by every client (batches included).
    pub async fn inodes_allocated(&self) -> FsResult<u64> {
        let counter = self.store.get(&keys::inode_counter_key()).await?;
        Ok(match counter.as_ref().and_then(|item| item.get("next")) {
            Some(crate::store::Value::N(n)) => n.parse().unwrap_or(0),
            _ => 0,
        })
    }

    /// The mount configuration.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// An inode as the caller should see it: mount overrides applied and the size
    /// and mtime of unflushed writes of this client included.
    fn present(&self, inode: Inode) -> Inode {
        let mut inode = self.present_raw(inode);
        if let Some(uid) = self.config.uid {
            inode.uid = uid;
        }
        if let Some(gid) = self.config.gid {
            inode.gid = gid;
        }
        if let Some(umask) = self.config.umask {
            inode.mode &= !umask;
        }
        inode
    }

    /// An inode as this client changed it: with held attribute changes and unflushed
    /// size and mtime, but none of the mount's owner and mode overrides.
    fn present_raw(&self, mut inode: Inode) -> Inode {
        self.held.overlay(&mut inode);
        self.files.overlay(&mut inode);
        inode
    }

    /// Take a fresh inode number from this client's batch, refilling it from the
    /// global counter `INODE_BATCH` at a time.
    async fn alloc_ino(&self) -> FsResult<u64> {
        let mut range = self.next_inodes.lock().await;
        loop {
            if range.0 < range.1 {
                let ino = range.0;
                range.0 += 1;
                if ino > ROOT_INO {
                    return Ok(ino);
                }
                continue;
            }
            let end = self
                .store
                .add(&keys::inode_counter_key(), "next", INODE_BATCH)
                .await?;
            *range = (end - INODE_BATCH, end);
        }
    }

    fn cache_inode(&self, inode: &Inode) {
        match self.without_ended_lease(inode) {
            Some(settled) => self.cache.put_inode(&settled),
            None => self.cache.put_inode(inode),
        }
    }

    fn forget_inode(&self, ino: u64) {
        self.cache.forget_inode(ino);
    }

    fn cache_entry(&self, dir: u64, name: &[u8], entry: Option<Entry>) {
        self.cache.put_entry(dir, name, entry);
    }

    /// Commit `tx`, bring this client's caches up to date with what it changed, and
    /// delete the blocks it made garbage. Returns the inodes as now stored.
    async fn commit(&self, tx: tx::Tx) -> FsResult<std::collections::BTreeMap<u64, Inode>> {
        let dirs = tx.leased_dirs();
        let _turns = self.turns.take_for(&tx).await;
        // From before the commit, so this client's collector never takes them up too.
        let _cleaning = self.cleaning.hold(tx.cleanup_inos());
        // Attribute changes held for other inodes ride along: `tar` and `cp -a` set a
        // directory's times when they leave it, and go on to create the next file.
        let riders = if tx.is_transaction() {
            self.held.take_riders(|ino| tx.writes_inode(ino))
        } else {
            Vec::new()
        };
        let rider_ops = riders
            .iter()
            .filter_map(|taken| Some(taken.delta()?.update_op(taken.ino())))
            .collect();
        let done = match tx
            .commit(
                self.store.as_ref(),
                self.session_id(),
                &self.leases,
                rider_ops,
            )
            .await
        {
            Ok(done) => done,
            Err(e) => {
                riders.into_iter().for_each(held::Taken::give_back);
                // Only a failed condition can be a lease; a transaction that merely
                // overlapped another one keeps this client's leases.
                if matches!(e, FsError::Store(StoreError::Conflict)) {
                    self.after_lease_conflict(&dirs).await?;
                }
                return Err(e);
            }
        };
        self.usage.add(done.usage);
        for (dir, until) in &done.renewed {
            self.leases.hold(*dir, *until);
            self.cache.extend_listing(*dir);
        }
        for taken in riders {
            match taken.delta() {
                Some(delta) if done.riders_written => self
                    .cache
                    .updated_in_place(taken.ino(), |inode| delta.apply(inode)),
                _ => taken.give_back(),
            }
        }
        for (dir, name, entry) in &done.entries {
            self.cache_entry(*dir, name, *entry);
        }
        for (dir, nlink_delta) in &done.touched {
            let until = done.renewed.get(dir).copied().unwrap_or(0);
            self.cache.updated_in_place(*dir, |inode| {
                inode.touch(done.now, *nlink_delta);
                inode.lease_until = until;
            });
            self.held.superseded_times(*dir);
        }
        for inode in done.written.values() {
            self.cache_inode(inode);
        }
        for ino in &done.deleted {
            self.forget_inode(*ino);
        }
        for cleanup in done.cleanups {
            self.finish_cleanup(cleanup).await;
        }
        Ok(done.written)
    }

    /// Read an inode; `fresh` bypasses the cache. An expired copy read in a batch is
    /// read again with its expired companions (see `cache.rs`).
    async fn load_inode(&self, ino: u64, fresh: bool) -> FsResult<Inode> {
        if !fresh {
            let cached = self.cache.inode(ino);
            metrics().cache_lookup("inode", cached.is_some());
            if let Some(inode) = cached {
                return Ok(inode);
            }
            let companions = self.cache.expired_companions(ino);
            if !companions.is_empty() {
                let inos: Vec<u64> = std::iter::once(ino).chain(companions).collect();
                let read = self.read_inodes(&inos).await?;
                return read
                    .into_iter()
                    .find(|i| i.ino == ino)
                    .ok_or(FsError::Stale);
            }
        }
        self.settle_create(ino).await?;
        match self.store.get(&keys::inode_key(ino)).await? {
            Some(item) => {
                let inode: Inode = from_item(item)?;
                self.cache_inode(&inode);
                Ok(inode)
            }
            None => {
                // Addressed by number but gone: another client deleted it. ESTALE makes
                // the kernel look the path up again instead of failing the call.
                self.forget_inode(ino);
                Err(FsError::Stale)
            }
        }
    }

    /// Read `inos` (at most [`cache::INODE_BATCH_LIMIT`]) with one batch get and cache
    /// them as read together; returns those that still exist, and forgets the others.
    async fn read_inodes(&self, inos: &[u64]) -> FsResult<Vec<Inode>> {
        for ino in inos {
            self.settle_create(*ino).await?;
        }
        let keys: Vec<_> = inos.iter().map(|ino| keys::inode_key(*ino)).collect();
        let mut read = Vec::new();
        for (ino, item) in inos.iter().zip(self.store.batch_get(&keys).await?) {
            match item {
                Some(item) => {
                    let inode = from_item::<Inode>(item)?;
                    read.push(self.without_ended_lease(&inode).unwrap_or(inode));
                }
                None => self.forget_inode(*ino),
            }
        }
        self.cache.put_inodes_read_together(&read);
        Ok(read)
    }

    /// Read the inode an entry points at (from the cache unless `fresh`). If it is gone,
    /// another client removed or replaced the entry meanwhile: a conflict, so the attempt
    /// starts over.
    async fn load_entry_target(&self, entry: &Entry, fresh: bool) -> FsResult<Inode> {
        match self.load_inode(entry.ino, fresh).await {
            // The entry was stale: no entry names a nameless file.
            Ok(inode) if inode.is_nameless() => Err(StoreError::Conflict.into()),
            Err(FsError::Stale) => Err(StoreError::Conflict.into()),
            other => other,
        }
    }

    /// Read a directory's inode, failing with ENOTDIR if it is something else.
    async fn load_dir(&self, ino: u64, fresh: bool) -> FsResult<Inode> {
        let inode = self.load_inode(ino, fresh).await?;
        if inode.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(inode)
    }

    /// Read the entry `name` of directory `dir`; `fresh` bypasses the cache. A name
    /// missing from a fresh complete listing is absent without a request. An expired
    /// listing is renewed if the directory's version did not move since (see
    /// [`Fs::renew_listing`]); failing that, a small directory is listed again (one
    /// query, like one get) so that the lookups that follow are answered from memory.
    async fn load_entry(&self, dir: u64, name: &[u8], fresh: bool) -> FsResult<Option<Entry>> {
        if fresh || self.cache.entry(dir, name).answer().is_none() {
            // The store must know this client's deferred creates before it is asked.
            self.settle_creates_in(dir).await?;
        }
        if !fresh {
            let known = self.cache.entry(dir, name).answer();
            metrics().cache_lookup("entry", known.is_some());
            if let Some(answer) = known {
                return Ok(answer);
            }
            let dir_ver = match self.renew_listing(dir, name).await? {
                Renewed::Yes => match self.cache.entry(dir, name).answer() {
                    Some(answer) => return Ok(answer),
                    // Expired again already: ask for the name.
                    None => None,
                },
                Renewed::No { dir_ver } => dir_ver,
            };
            let listed = self.cache.listing_len(dir);
            if listed.is_some_and(|n| n > RELIST_LIMIT) && dir_ver.is_some() {
                // The directory changed since it was listed: rather than read its
                // inode again at every lookup to learn that, ask for names one by one
                // until the next listing.
                self.cache.forget_listing(dir);
            }
            if listed.is_some_and(|n| n <= RELIST_LIMIT) {
                let listing = self.list_entries(dir, dir_ver).await?;
                return Ok(listing.into_iter().find(|e| e.name == name).map(|e| Entry {
                    ino: e.ino,
                    kind: e.kind,
                }));
            }
        }
        self.read_entry(dir, name).await
    }

    /// Read `dir/name` from the store. When this client saw the name before, the inode
    /// it named then comes in the same request: a lookup whose cached entry and inode
    /// both expired (the top of every path, walked again each second) costs one.
    async fn read_entry(&self, dir: u64, name: &[u8]) -> FsResult<Option<Entry>> {
        let key = keys::entry_key(dir, name);
        let named_before = self
            .cache
            .entry_any_age(dir, name)
            .map(|entry| entry.ino)
            .filter(|ino| self.cache.inode(*ino).is_none());
        let entry = match named_before {
            None => self.store.get(&key).await?.map(from_item::<Entry>),
            Some(ino) => {
                self.settle_create(ino).await?;
                let mut items = self
                    .store
                    .batch_get(&[key, keys::inode_key(ino)])
                    .await?
                    .into_iter();
                let entry = items.next().flatten().map(from_item::<Entry>);
                if let (Some(Ok(entry)), Some(Some(inode))) = (&entry, items.next()) {
                    if entry.ino == ino {
                        self.cache_inode(&from_item(inode)?);
                    }
                }
                entry
            }
        }
        .transpose()?;
        self.cache_entry(dir, name, entry);
        Ok(entry)
    }

    /// Renew an expired listing of `dir` tied to a version by reading the directory's
    /// inode: one batch get, which also brings the inode the listing had for `name`
    /// and its expired companions, as the lookup goes on to read them. A walk that
    /// comes back to a directory after its listing expired (`find | xargs cat`, `tar x`
    /// into a directory it fills for longer than `entry_ttl`) pays that one request,
    /// where a query of the directory and a batch get of the inodes would be two, and
    /// a big directory's query many.
    async fn renew_listing(&self, dir: u64, name: &[u8]) -> FsResult<Renewed> {
        let Some((ver, listed)) = self.cache.expired_listing(dir, name) else {
            return Ok(Renewed::No { dir_ver: None });
        };
        if self.cache.renew_listing_from_inode(dir) {
            return Ok(Renewed::Yes);
        }
        let mut inos = vec![dir];
        if let Some(entry) = listed.filter(|e| self.cache.inode(e.ino).is_none()) {
            inos.push(entry.ino);
            inos.extend(self.cache.expired_companions(entry.ino));
        }
        let mut seen = std::collections::HashSet::new();
        inos.retain(|ino| seen.insert(*ino));
        inos.truncate(cache::INODE_BATCH_LIMIT);
        let dir_ver = self
            .read_inodes(&inos)
            .await?
            .into_iter()
            .find(|i| i.ino == dir)
            .map(|i| i.ver);
        if dir_ver == Some(ver) && self.cache.renew_listing(dir, ver) {
            return Ok(Renewed::Yes);
        }
        Ok(Renewed::No { dir_ver })
    }

    /// Every item of partition `pk` after `after`, in sort-key order, page by page.
    async fn query_all(
        &self,
        table: Table,
        pk: &str,
        mut after: Option<SortKey>,
    ) -> FsResult<Vec<(SortKey, Item)>> {
        let mut items = Vec::new();
        loop {
            let page = self
                .store
                .query(table, pk, after.as_ref(), QUERY_PAGE)
                .await?;
            after = page.items.last().map(|(sk, _)| sk.clone());
            items.extend(page.items);
            if !page.more {
                return Ok(items);
            }
        }
    }

    /// Touch directory `dir` (times, version) with one single write, outside any
    /// transaction. [`StoreError::Conflict`] if the directory no longer exists.
    async fn touch_dir_now(&self, dir: u64) -> FsResult<()> {
        let now = Timestamp::now();
        self.store.write(tx::dir_touch(dir, now, 0, None)).await?;
        self.cache.touch_dir(dir, now, 0);
        self.held.superseded_times(dir);
        Ok(())
    }

    /// Run one optimistic attempt until it commits without conflict. The attempt is
    /// told whether it must read fresh records (every attempt after the first).
    async fn optimistic<T, F, Fut>(&self, mut attempt: F) -> FsResult<T>
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = FsResult<T>>,
    {
        let mut tries = 0u32;
        retry(
            Policy::CONFLICT,
            || {
                tries += 1;
                attempt(tries > 1)
            },
            FsError::is_conflict,
        )
        .await
    }

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, handle);
        fh
    }
}

/// Whether `caller` may act as the owner of `inode` (chmod, utimens to explicit times).
fn is_owner(caller: Caller, inode: &Inode) -> bool {
    caller.uid == 0 || caller.uid == inode.uid
}

/// Whether the mode bits of `inode` grant `caller` all of `mask` (`R_OK|W_OK|X_OK` bits).
fn mode_allows(caller: Caller, inode: &Inode, mask: u32) -> bool {
    if caller.uid == 0 {
        // Root may do anything but execute a file no one may execute.
        return mask & libc::X_OK as u32 == 0
            || inode.kind == FileKind::Dir
            || inode.mode & 0o111 != 0;
    }
    let bits = if caller.uid == inode.uid {
        inode.mode >> 6
    } else if caller.gid == inode.gid {
        inode.mode >> 3
    } else {
        inode.mode
    } & 0o7;
    bits & mask == mask
}
