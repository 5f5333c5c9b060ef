//! One optimistic transaction: the inode and entry changes of a metadata operation,
//! each conditioned on the version it was read at, committed all at once.
//!
//! Parent directories are the exception: many clients add and remove names in one
//! directory at once, so a directory whose entries change is updated with an atomic
//! expression (set the times, add to the link count and the version) conditioned only
//! on its existence. No version read, no version conflict between two creates; the
//! version still moves, so rmdir and other versioned writes of the directory notice.
//!
//! Even an atomic update makes the directory one item in every transaction there, and
//! DynamoDB cancels transactions that overlap on an item. In a directory where this
//! client saw that happen ("contended"), creates and unlinks of files commit without
//! the directory and touch it with a single write instead (see `create.rs`, `remove.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::lease::{DirLeases, LeaseUse};
use super::FsResult;
use crate::keys;
use crate::records::{
    to_item, Cleanup, Doomed, Entry, FileKind, FileRemains, Inode, Timestamp, Usage,
};
use crate::store::{Condition, Item, Store, StoreError, Value, WriteOp, VERSION_ATTR};

/// This client's transactions that update a directory take turns on it. DynamoDB
/// cancels transactions that overlap on an item, so two of one client's at once in
/// one directory (a group of closed new files and a `mkdir` there, say) would only
/// collide and both try again.
#[derive(Default)]
pub(super) struct DirTurns {
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

/// The turns a transaction holds; given back when dropped.
pub(super) struct Turns<'a> {
    owner: &'a DirTurns,
    held: Vec<(u64, tokio::sync::OwnedMutexGuard<()>)>,
}

impl DirTurns {
    /// Wait for the turns `tx` needs: one on each directory it updates, if it is a
    /// transaction (a single write never collides), taken in order of number so that
    /// two waiters never wait for each other.
    pub(super) async fn take_for(&self, tx: &Tx) -> Turns<'_> {
        let mut dirs = match tx.is_transaction() {
            true => tx.leased_dirs(),
            false => Vec::new(),
        };
        dirs.sort_unstable();
        dirs.dedup();
        let mut held = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let turn = self.dirs.lock().unwrap().entry(dir).or_default().clone();
            held.push((dir, turn.lock_owned().await));
        }
        Turns { owner: self, held }
    }
}

impl Drop for Turns<'_> {
    fn drop(&mut self) {
        let mut dirs = self.owner.dirs.lock().unwrap();
        for (dir, guard) in self.held.drain(..) {
            drop(guard);
            // Nobody else waits for it: the map keeps no entry for an idle directory.
            if dirs
                .get(&dir)
                .is_some_and(|turn| Arc::strong_count(turn) == 1)
            {
                dirs.remove(&dir);
            }
        }
    }
}

/// Most items one DynamoDB transaction may write.
const TRANSACTION_LIMIT: usize = 100;

/// The atomic update of a directory whose entries change at `now`: times set, link
/// count and version added to, conditioned on the directory still existing and on its
/// lease as `lease` says (`None`: the lease is not this write's business, see
/// `create.rs`).
pub(super) fn dir_touch(
    dir: u64,
    now: Timestamp,
    nlink_delta: i64,
    lease: Option<&LeaseUse>,
) -> WriteOp {
    let time = attribute(now);
    let mut set = Item::default();
    set.insert("mtime".into(), time.clone());
    set.insert("ctime".into(), time);
    let add = if nlink_delta != 0 {
        vec![("nlink".to_string(), nlink_delta)]
    } else {
        Vec::new()
    };
    let Some(lease) = lease else {
        return in_place_update(dir, set, add);
    };
    lease.set(&mut set);
    let mut touch = in_place_update(dir, set, add);
    if let WriteOp::Update { cond, .. } = &mut touch {
        *cond = lease.condition();
    }
    touch
}

/// The atomic update of inode `ino` in place: `set` replaces attributes, `add` adds to
/// numeric ones, and the version moves by one, conditioned only on the inode existing
/// (no version read, so none to conflict on).
pub(super) fn in_place_update(ino: u64, set: Item, mut add: Vec<(String, i64)>) -> WriteOp {
    add.insert(0, (VERSION_ATTR.to_string(), 1));
    WriteOp::Update {
        key: keys::inode_key(ino),
        set,
        add,
        cond: Condition::Present,
    }
}

/// An inode attribute's value as stored.
pub(super) fn attribute<T: serde::Serialize>(value: T) -> Value {
    serde_dynamo::to_attribute_value(value).expect("inode attributes serialize")
}

/// The condition that an entry still points at inode `ino`.
pub(super) fn points_at(ino: u64) -> Condition {
    Condition::NumberIs("ino", ino)
}

enum InodeChange {
    Create(Inode),
    /// `before`: what the inode as read added to the usage totals.
    Update {
        read_ver: u64,
        before: Usage,
        inode: Inode,
    },
    Delete {
        read_ver: u64,
        before: Usage,
    },
}

impl InodeChange {
    /// How this change moves the usage totals.
    fn usage(&self) -> Usage {
        match self {
            InodeChange::Create(inode) => Usage::of(inode.kind, inode.size),
            InodeChange::Update { before, inode, .. } => {
                let mut delta = Usage::of(inode.kind, inode.size);
                delta -= *before;
                delta
            }
            InodeChange::Delete { before, .. } => {
                let mut delta = Usage::default();
                delta -= *before;
                delta
            }
        }
    }
}

/// The changes of one metadata operation, built up and then committed together.
pub(super) struct Tx {
    inodes: BTreeMap<u64, InodeChange>,
    entries: Vec<(u64, Vec<u8>, Option<Entry>, Condition)>,
    /// Directories whose entries change, with the change of their link count.
    touched: BTreeMap<u64, i64>,
    cleanups: Vec<Cleanup>,
    /// Writes of other records (blocks, garbage records) that commit with the rest.
    others: Vec<WriteOp>,
    now: Timestamp,
}

/// What a committed transaction changed, for this client's caches.
pub(super) struct Committed {
    /// Entries put (`Some`) or deleted (`None`).
    pub(super) entries: Vec<(u64, Vec<u8>, Option<Entry>)>,
    /// Directories touched, with the change of their link count.
    pub(super) touched: BTreeMap<u64, i64>,
    /// When it happened.
    pub(super) now: Timestamp,
    /// Inodes created or updated, as stored now.
    pub(super) written: BTreeMap<u64, Inode>,
    /// Inodes deleted.
    pub(super) deleted: Vec<u64>,
    /// Cleanups recorded, whose blocks are to be deleted now.
    pub(super) cleanups: Vec<Cleanup>,
    /// Whether the riders given to [`Tx::commit`] were written with it.
    pub(super) riders_written: bool,
    /// Directories whose lease this client renewed, with the lease's new end.
    pub(super) renewed: BTreeMap<u64, u64>,
    /// How it moved the usage totals.
    pub(super) usage: Usage,
}

impl Tx {
    pub(super) fn new() -> Self {
        Tx {
            inodes: BTreeMap::new(),
            entries: Vec::new(),
            touched: BTreeMap::new(),
            cleanups: Vec::new(),
            others: Vec::new(),
            now: Timestamp::now(),
        }
    }

    /// The files this transaction records cleanups of.
    pub(super) fn cleanup_inos(&self) -> Vec<u64> {
        self.cleanups.iter().map(|c| c.ino).collect()
    }

    /// The time this operation happened at.
    pub(super) fn now(&self) -> Timestamp {
        self.now
    }

    /// Change `inode` (as read); repeated calls for one inode change the same copy.
    pub(super) fn update(&mut self, inode: &Inode) -> &mut Inode {
        if let Some(delta) = self.touched.remove(&inode.ino) {
            // Versioned anyway: fold the directory's touch into the update.
            let now = self.now;
            let dir = self.versioned(inode);
            dir.touch(now, delta);
            return dir;
        }
        self.versioned(inode)
    }

    fn versioned(&mut self, inode: &Inode) -> &mut Inode {
        let change = self
            .inodes
            .entry(inode.ino)
            .or_insert_with(|| InodeChange::Update {
                read_ver: inode.ver,
                before: Usage::of(inode.kind, inode.size),
                inode: inode.clone(),
            });
        match change {
            InodeChange::Create(inode) | InodeChange::Update { inode, .. } => inode,
            InodeChange::Delete { .. } => {
                unreachable!("inode {} changed after its deletion", inode.ino)
            }
        }
    }

    /// Directory `dir` gains or loses names (and `nlink_delta` subdirectories): bump its
    /// times and version atomically, without reading it.
    pub(super) fn touch_dir(&mut self, dir: u64, nlink_delta: i64) {
        let now = self.now;
        match self.inodes.get_mut(&dir) {
            Some(InodeChange::Update { inode, .. } | InodeChange::Create(inode)) => {
                inode.touch(now, nlink_delta)
            }
            _ => *self.touched.entry(dir).or_default() += nlink_delta,
        }
    }

    /// Create a new inode (the transaction fails if its number is taken).
    pub(super) fn create(&mut self, inode: Inode) {
        self.inodes.insert(inode.ino, InodeChange::Create(inode));
    }

    /// Create `inode` as `dir/name`, on the condition that the name is free, and
    /// touch `dir` (with the link a subdirectory brings) unless the create is
    /// `detached` from its directory's record (see `create.rs`).
    pub(super) fn create_named(&mut self, dir: u64, name: &[u8], inode: Inode, detached: bool) {
        let entry = Entry {
            ino: inode.ino,
            kind: inode.kind,
        };
        let nlink_delta = i64::from(inode.kind == FileKind::Dir);
        self.put_entry(dir, name, entry, Condition::Absent);
        self.create(inode);
        if !detached {
            self.touch_dir(dir, nlink_delta);
        }
    }

    /// Point `dir/name` at `entry`, under `cond` (Absent for an exclusive create).
    pub(super) fn put_entry(&mut self, dir: u64, name: &[u8], entry: Entry, cond: Condition) {
        self.entries.push((dir, name.to_vec(), Some(entry), cond));
    }

    /// Remove `dir/name`, which must still point at inode `ino`.
    pub(super) fn delete_entry(&mut self, dir: u64, name: &[u8], ino: u64) {
        self.entries
            .push((dir, name.to_vec(), None, points_at(ino)));
    }

    /// One name of `inode` goes away: drop its link count. A regular file left with no
    /// name may still be open on any client: it is doomed, and garbage collection
    /// deletes it once no client holds it open (see `gc.rs`). Other kinds hold no
    /// data and go at once.
    pub(super) fn drop_link(&mut self, inode: &Inode) {
        let now = self.now;
        let last = inode.kind == FileKind::Dir || inode.nlink <= 1;
        if !last {
            let inode = self.update(inode);
            inode.nlink -= 1;
            inode.ctime = now;
        } else if inode.kind == FileKind::File {
            let unlinked = self.update(inode);
            unlinked.nlink = 0;
            unlinked.ctime = now;
            let remains = FileRemains::of(unlinked);
            let doomed = Doomed {
                ino: inode.ino,
                at_ms: super::session::now_ms(),
                left: self
                    .version_after(inode.ino)
                    .map(|ver| FileRemains { ver, ..remains }),
            };
            self.write(WriteOp::Put {
                key: keys::doomed_key(inode.ino),
                item: to_item(&doomed),
                cond: Condition::None,
            });
        } else {
            self.delete(inode);
        }
    }

    /// The version inode `ino` has once this transaction is committed, if it updates it.
    fn version_after(&self, ino: u64) -> Option<u64> {
        match self.inodes.get(&ino) {
            Some(InodeChange::Update { read_ver, .. }) => Some(read_ver + 1),
            _ => None,
        }
    }

    /// Delete `inode`'s record (as read); its data is the caller's business.
    pub(super) fn delete(&mut self, inode: &Inode) {
        self.delete_at(inode.ino, inode.ver, Usage::of(inode.kind, inode.size));
    }

    /// Delete the record of inode `ino` if it is still at version `read_ver`; `before`
    /// is what it added to the usage totals.
    pub(super) fn delete_at(&mut self, ino: u64, read_ver: u64, before: Usage) {
        self.inodes
            .insert(ino, InodeChange::Delete { read_ver, before });
    }

    /// Commit `op` (a block write or delete) together with the rest.
    pub(super) fn write(&mut self, op: WriteOp) {
        self.others.push(op);
    }

    /// Record, in this transaction, that the bytes of `ino` from `keep` to `stored`
    /// are garbage; they are deleted after the commit.
    pub(super) fn add_cleanup(&mut self, ino: u64, keep: u64, stored: u64) {
        if stored > keep {
            self.cleanups.push(Cleanup {
                ino,
                keep,
                stored,
                session: None,
            });
        }
    }

    /// The directories whose names this transaction changes, and so whose lease it
    /// renews or respects (see `lease.rs`).
    pub(super) fn leased_dirs(&self) -> Vec<u64> {
        let mut dirs: Vec<u64> = self.touched.keys().copied().collect();
        for (ino, change) in &self.inodes {
            match change {
                InodeChange::Update { inode, .. } if inode.kind == FileKind::Dir => dirs.push(*ino),
                InodeChange::Delete { before, .. } if before.directories > 0 => dirs.push(*ino),
                _ => {}
            }
        }
        dirs
    }

    fn ops(&self, session: Option<&str>, leases: &DirLeases) -> (Vec<WriteOp>, BTreeMap<u64, u64>) {
        let now_ms = super::session::now_ms();
        let mut renewed = BTreeMap::new();
        let mut lease_of = |dir: u64| {
            let lease = LeaseUse::of(leases, dir, session, now_ms);
            if matches!(lease, LeaseUse::Renew { .. }) {
                renewed.insert(dir, lease.until());
            }
            lease
        };
        let mut ops = Vec::new();
        for (dir, name, entry, cond) in &self.entries {
            let key = keys::entry_key(*dir, name);
            ops.push(match entry {
                Some(entry) => WriteOp::Put {
                    key,
                    item: to_item(entry),
                    cond: cond.clone(),
                },
                None => WriteOp::Delete {
                    key,
                    cond: cond.clone(),
                },
            });
        }
        for (ino, change) in &self.inodes {
            let key = keys::inode_key(*ino);
            ops.push(match change {
                InodeChange::Create(inode) => WriteOp::Put {
                    key,
                    item: to_item(inode),
                    cond: Condition::Absent,
                },
                InodeChange::Update {
                    read_ver, inode, ..
                } => {
                    let mut inode = inode.clone();
                    inode.ver = read_ver + 1;
                    let versioned = Condition::VersionIs(*read_ver);
                    let cond = if inode.kind == FileKind::Dir {
                        let lease = lease_of(*ino);
                        inode.lease_until = lease.until();
                        Condition::All(vec![versioned, lease.condition()])
                    } else {
                        versioned
                    };
                    WriteOp::Put {
                        key,
                        item: to_item(&inode),
                        cond,
                    }
                }
                InodeChange::Delete { read_ver, before } => WriteOp::Delete {
                    key,
                    cond: match before.directories > 0 {
                        true => Condition::All(vec![
                            Condition::VersionIs(*read_ver),
                            lease_of(*ino).condition(),
                        ]),
                        false => Condition::VersionIs(*read_ver),
                    },
                },
            });
        }
        for (dir, nlink_delta) in &self.touched {
            let lease = lease_of(*dir);
            ops.push(dir_touch(*dir, self.now, *nlink_delta, Some(&lease)));
        }
        ops.extend(self.others.iter().cloned());
        for cleanup in &self.cleanups {
            let owned = Cleanup {
                session: session.map(str::to_owned),
                ..cleanup.clone()
            };
            ops.push(WriteOp::Put {
                key: keys::cleanup_key(cleanup.ino),
                item: to_item(&owned),
                cond: Condition::None,
            });
        }
        (ops, renewed)
    }

    /// Whether committing takes a transaction (more than one write), which other
    /// writes can then ride along.
    pub(super) fn is_transaction(&self) -> bool {
        self.len() > 1
    }

    /// How many writes committing takes.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
            + self.inodes.len()
            + self.touched.len()
            + self.others.len()
            + self.cleanups.len()
    }

    /// Whether this transaction writes the record of inode `ino`.
    pub(super) fn writes_inode(&self, ino: u64) -> bool {
        let key = keys::inode_key(ino);
        self.inodes.contains_key(&ino)
            || self.touched.contains_key(&ino)
            || self.others.iter().any(|op| op.key() == &key)
    }

    /// Commit everything in one transaction (cleanups recorded as `session`'s), and
    /// say what changed. A lone write needs no transaction, which costs twice the capacity.
    ///
    /// `riders` (writes of records this transaction does not write) go along if it is
    /// a transaction anyway: one request instead of one more each. If they cannot (a
    /// condition failed or the transaction collided), it is committed again without
    /// them, so that they never fail it; [`Committed::riders_written`] tells.
    pub(super) async fn commit(
        self,
        store: &dyn Store,
        session: Option<&str>,
        leases: &DirLeases,
        riders: Vec<WriteOp>,
    ) -> FsResult<Committed> {
        let (mut ops, renewed) = self.ops(session, leases);
        let mut riders_written = false;
        if ops.len() > 1 && !riders.is_empty() && ops.len() + riders.len() <= TRANSACTION_LIMIT {
            let mut with = ops.clone();
            with.extend(riders);
            match store.transact(with).await {
                Ok(()) => riders_written = true,
                Err(StoreError::Conflict | StoreError::Contended) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !riders_written {
            match ops.len() {
                1 => store.write(ops.pop().expect("one op")).await?,
                _ => store.transact(ops).await?,
            }
        }
        let mut written = BTreeMap::new();
        let mut deleted = Vec::new();
        let mut usage = Usage::default();
        for (ino, change) in self.inodes {
            usage += change.usage();
            match change {
                InodeChange::Create(inode) => {
                    written.insert(ino, inode);
                }
                InodeChange::Update {
                    read_ver,
                    mut inode,
                    ..
                } => {
                    inode.ver = read_ver + 1;
                    if inode.kind == FileKind::Dir {
                        inode.lease_until = renewed.get(&ino).copied().unwrap_or(0);
                    }
                    written.insert(ino, inode);
                }
                InodeChange::Delete { .. } => deleted.push(ino),
            }
        }
        Ok(Committed {
            entries: self
                .entries
                .into_iter()
                .map(|(dir, name, entry, _)| (dir, name, entry))
                .collect(),
            touched: self.touched,
            now: self.now,
            written,
            deleted,
            cleanups: self.cleanups,
            riders_written,
            renewed,
            usage,
        })
    }
}
