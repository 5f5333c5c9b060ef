//! Creates and closes answered before they are committed: in a directory whose lease
//! this client holds (see `lease.rs`), a new file's create is answered without a
//! request and committed with the file's first flush, and the close of a small new
//! file is answered at once, the file going to the store whole, with the others
//! closed in the same moment, at the settler's next round ([`Fs::commit_closed`]).
//! Whatever reads a name or an inode from the store first settles the deferred
//! creates it could miss (`settle_*`), so this client never sees its own files absent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::file::FileData;
use super::lease;
use super::tx::Tx;
use super::{Fs, FsError, FsResult};
use crate::keys;
use crate::records::Inode;

/// Most closed new files whose commit is pending: past it, a close commits its file.
const CLOSED_LIMIT: usize = 256;
/// Most items of one group of closed new files, leaving room for riders within
/// DynamoDB's 100 per transaction.
const GROUP_ITEMS: usize = 90;
/// Most bytes of data in one group, well within DynamoDB's 4 MB per request.
const GROUP_BYTES: usize = 2 << 20;

/// A create answered without a request: the name it adds, committed with the file.
#[derive(Clone)]
pub(super) struct DeferredCreate {
    parent: u64,
    name: Vec<u8>,
}

impl DeferredCreate {
    /// Add the create of `inode` to `tx`: the entry, on the condition that the name is
    /// free, the inode, and the directory's touch (which renews the lease).
    pub(super) fn add_to(&self, tx: &mut Tx, inode: &Inode) {
        tx.create_named(self.parent, &self.name, inode.clone(), false);
    }
}

/// A file whose create is deferred (see `lease.rs`).
struct Unborn {
    /// Its directory.
    dir: u64,
    /// When it was created.
    since: Instant,
    /// Its close was answered without a flush: the file goes to the store whole, with
    /// others, at the settler's next round (see [`Fs::may_close_later`]).
    closed: bool,
}

/// The files whose create this client deferred.
#[derive(Default)]
pub(super) struct NewFiles {
    unborn: Mutex<HashMap<u64, Unborn>>,
    /// Whether creates may be deferred: only once a task commits them in time.
    defers: AtomicBool,
}

impl NewFiles {
    /// Whether a create may be answered now and committed later.
    pub(super) fn defers_creates(&self) -> bool {
        self.defers.load(Ordering::Relaxed)
    }

    pub(super) fn is_unborn(&self, ino: u64) -> bool {
        self.unborn.lock().unwrap().contains_key(&ino)
    }

    /// Whether `ino` is a new file whose close was answered before its flush.
    pub(super) fn is_closed_unborn(&self, ino: u64) -> bool {
        self.unborn
            .lock()
            .unwrap()
            .get(&ino)
            .is_some_and(|u| u.closed)
    }

    /// Whether a new file in `dir` had its close answered before its flush.
    pub(super) fn has_closed_unborn_in(&self, dir: u64) -> bool {
        self.unborn
            .lock()
            .unwrap()
            .values()
            .any(|u| u.closed && u.dir == dir)
    }

    /// Note that the close of new file `ino` was answered before its flush.
    pub(super) fn mark_closed(&self, ino: u64) {
        if let Some(unborn) = self.unborn.lock().unwrap().get_mut(&ino) {
            unborn.closed = true;
        }
    }

    /// The files whose deferred create matches `which`.
    fn unborn_where(&self, which: impl Fn(&Unborn) -> bool) -> Vec<u64> {
        let unborn = self.unborn.lock().unwrap();
        let mut inos: Vec<u64> = unborn
            .iter()
            .filter(|(_, u)| which(u))
            .map(|(ino, _)| *ino)
            .collect();
        inos.sort_unstable();
        inos
    }

    /// How many closed new files wait for their commit.
    fn closed(&self) -> usize {
        self.unborn
            .lock()
            .unwrap()
            .values()
            .filter(|u| u.closed)
            .count()
    }

    /// The deferred create of `ino` is over; whether its close had been answered.
    fn remove(&self, ino: u64) -> bool {
        self.unborn
            .lock()
            .unwrap()
            .remove(&ino)
            .is_some_and(|u| u.closed)
    }
}

impl Fs {
    /// Note that the create of `ino`, just opened, as `parent/name` is deferred.
    pub(super) async fn defer_create(&self, ino: u64, parent: u64, name: &[u8]) {
        let Some(data) = self.files.data(ino) else {
            return;
        };
        data.lock().await.create = Some(DeferredCreate {
            parent,
            name: name.to_vec(),
        });
        let unborn = Unborn {
            dir: parent,
            since: Instant::now(),
            closed: false,
        };
        self.new_files.unborn.lock().unwrap().insert(ino, unborn);
    }

    /// Whether the close of `data`'s file may be answered now and the file committed
    /// whole at the settler's next round, with other such files in one transaction: a
    /// new file in a directory whose lease this client holds, with its content small
    /// enough to go in the create's transaction. `tar x` then waits for no request at
    /// all per file. Another client that looks for the name meanwhile recalls the
    /// lease first (see `lease.rs`), so close-to-open holds across clients.
    pub(super) fn may_close_later(&self, data: &FileData) -> bool {
        let Some(create) = &data.create else {
            return false;
        };
        data.behind.is_none()
            && !data.block0_behind
            && self.flush_goes_with_inode(data)
            && self.new_files.closed() < CLOSED_LIMIT
            && self.leases.can_defer(create.parent)
    }

    /// Commit the deferred create of `data`'s file on its own: before its blocks go
    /// to the store apart from the inode, or before another operation reads it. A lost
    /// name is also kept for the file's next flush to report.
    pub(super) async fn commit_create(&self, data: &mut FileData) -> FsResult<()> {
        let Some(create) = data.create.clone() else {
            return Ok(());
        };
        let inode = data.stored.clone();
        let (create_ref, inode_ref) = (&create, &inode);
        let result = self
            .optimistic(|_| async move {
                let mut tx = Tx::new();
                create_ref.add_to(&mut tx, inode_ref);
                self.commit_with_create(tx, Some(create_ref)).await?;
                Ok(())
            })
            .await;
        if matches!(result, Ok(()) | Err(FsError::NameLost)) {
            self.create_done(data, result.is_ok());
        }
        data.name_lost = matches!(result, Err(FsError::NameLost));
        result
    }

    /// Commit `tx`, which holds `create` if that is given. A conflict because another
    /// client took the name meanwhile (its lease ran out, see `lease.rs`) is
    /// [`FsError::NameLost`].
    pub(super) async fn commit_with_create(
        &self,
        tx: Tx,
        create: Option<&DeferredCreate>,
    ) -> FsResult<BTreeMap<u64, Inode>> {
        match self.commit(tx).await {
            Err(e) if e.is_conflict() => match create {
                Some(c)
                    if self
                        .store
                        .get(&keys::entry_key(c.parent, &c.name))
                        .await?
                        .is_some() =>
                {
                    tracing::error!(dir = c.parent, "another client took the name of a new file while this client could not reach the store");
                    Err(FsError::NameLost)
                }
                _ => Err(e),
            },
            other => other,
        }
    }

    /// The deferred create of `data`'s file is over: committed, or never to be (then
    /// what this client cached of the file and its name goes).
    pub(super) fn create_done(&self, data: &mut FileData, committed: bool) {
        let ino = data.stored.ino;
        if self.new_files.remove(ino) {
            self.files.forget_if_closed(ino);
        }
        let Some(create) = data.create.take() else {
            return;
        };
        if !committed {
            self.cache_entry(create.parent, &create.name, None);
            self.cache.forget_listing(create.parent);
            self.forget_inode(ino);
        }
    }

    /// Commit the deferred create of `ino`, if there is one: before anything reads the
    /// file or its name from the store. A file whose close was answered goes whole.
    pub(super) async fn settle_create(&self, ino: u64) -> FsResult<()> {
        if !self.new_files.is_unborn(ino) {
            return Ok(());
        }
        let Some(data) = self.files.data(ino) else {
            return Ok(());
        };
        let mut data = data.lock().await;
        if !self.new_files.is_closed_unborn(ino) {
            return self.commit_create(&mut data).await;
        }
        // Boxed: a flush may read inodes, which settles creates first.
        let flushed = Box::pin(self.flush_data(&mut data)).await;
        if let (Err(e), Some(create)) = (&flushed, &data.create) {
            tracing::warn!(ino, dir = create.parent, error = %e, "cannot commit a closed new file yet; trying again");
        } else if let Err(e) = &flushed {
            tracing::error!(ino, error = %e, "a closed new file is lost: its name was taken by another client while this one could not reach the store");
        }
        flushed
    }

    /// Commit every deferred create in `dir`: before its entries are read from the store.
    pub(super) async fn settle_creates_in(&self, dir: u64) -> FsResult<()> {
        self.settle(|u| u.dir == dir).await
    }

    /// Commit the deferred create of the file `dir/name` names, if it is one.
    pub(super) async fn settle_entry(&self, dir: u64, name: &[u8]) -> FsResult<()> {
        match self.cache.entry(dir, name).answer() {
            Some(Some(entry)) => self.settle_create(entry.ino).await,
            _ => Ok(()),
        }
    }

    /// Commit every deferred create (sync, unmount).
    pub async fn settle_all_creates(&self) -> FsResult<()> {
        self.settle(|_| true).await
    }

    /// Commit the deferred creates that match `which`: the closed files in groups,
    /// then the open ones each on its own.
    async fn settle(&self, which: impl Fn(&Unborn) -> bool) -> FsResult<()> {
        let closed = self.new_files.unborn_where(|u| u.closed && which(u));
        let mut result = self.commit_closed(closed).await;
        for ino in self.new_files.unborn_where(|u| !u.closed && which(u)) {
            let settled = self.settle_create(ino).await;
            result = result.and(settled);
        }
        result.and(self.release_finished_leases().await)
    }

    /// Commit closed new files (see [`Fs::may_close_later`]), as many in each
    /// transaction as fit. A group that fails is tried once more (a recalled lease
    /// makes it fail once, see `lease.rs`), then each of its files on its own, which
    /// tells a lost name from a collision.
    async fn commit_closed(&self, inos: Vec<u64>) -> FsResult<()> {
        let mut alone = Vec::new();
        let mut retried = false;
        let mut rest: VecDeque<u64> = inos.into();
        while !rest.is_empty() {
            let mut tx = Tx::new();
            let mut group = Vec::new();
            let mut bytes = 0;
            while let Some(&ino) = rest.front() {
                let Some(data) = self.files.data(ino) else {
                    rest.pop_front();
                    continue;
                };
                // Never wait for a file's lock while holding others'; a busy file is
                // committed on its own, after the groups.
                let Ok(mut data) = data.try_lock_owned() else {
                    alone.push(ino);
                    rest.pop_front();
                    continue;
                };
                let Some(create) = data.create.clone() else {
                    rest.pop_front();
                    continue;
                };
                if !self.new_files.is_closed_unborn(ino) || data.behind.is_some() {
                    alone.push(ino);
                    rest.pop_front();
                    continue;
                }
                let size: usize = data.dirty.values().map(Vec::len).sum();
                let items = 3 + data.dirty.len();
                if !group.is_empty()
                    && (tx.len() + items > GROUP_ITEMS || bytes + size > GROUP_BYTES)
                {
                    break;
                }
                rest.pop_front();
                let (parts, apart) = self.take_flush(&mut data);
                if !apart.is_empty() {
                    data.dirty.extend(apart);
                    parts.give_back(&mut data);
                    alone.push(ino);
                    continue;
                }
                bytes += size;
                create.add_to(&mut tx, &data.stored);
                self.add_flush(&mut tx, &data.stored, &parts, None);
                group.push((data, parts));
            }
            if group.is_empty() {
                continue;
            }
            match self.commit(tx).await {
                Ok(written) => {
                    for (mut data, parts) in group {
                        let updated = written[&data.stored.ino].clone();
                        self.create_done(&mut data, true);
                        self.flushed(&mut data, parts, updated);
                    }
                }
                Err(e) => {
                    tracing::debug!(files = group.len(), error = %e, retried, "a group of closed new files failed");
                    for (mut data, parts) in group.into_iter().rev() {
                        parts.give_back(&mut data);
                        match retried {
                            true => alone.push(data.stored.ino),
                            false => rest.push_front(data.stored.ino),
                        }
                    }
                    retried = true;
                }
            }
        }
        let mut result = Ok(());
        for ino in alone {
            let settled = self.settle_create(ino).await;
            result = result.and(settled);
        }
        result
    }

    /// Start the task that commits deferred creates once they are
    /// [`lease::DEFER_LIMIT`] old. Until it runs, no create is deferred.
    pub fn spawn_create_settler(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        self.new_files.defers.store(true, Ordering::Relaxed);
        let fs = self.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(lease::DEFER_LIMIT / 4).await;
                let due = |u: &Unborn| u.closed || u.since.elapsed() >= lease::DEFER_LIMIT;
                if let Err(e) = fs.settle(due).await {
                    tracing::warn!(error = %e, "cannot commit a deferred create");
                }
            }
        });
    }
}
