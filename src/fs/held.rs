//! Attribute changes held back and merged.
//!
//! `tar` and `cp -a` finish every file and directory with a chown, a chmod and a
//! utimens in a row. Written one by one, that is three requests for what one write
//! holds. So a setattr that changes no size is checked at once, shown at once by this
//! client, and written a moment later ([`HOLD`], never more than `attr_ttl`) together
//! with whatever else changed meanwhile — other clients' attribute caches allow that
//! much staleness anyway. Held changes are written before anything that promises
//! durability or ordering: fsync, a lock, an unmount, a truncation, and the flush of a
//! file's data. A file with unflushed writes holds its changes with those writes
//! instead (see `file.rs`), with the same [`AttrDelta`].
//!
//! Before their time is up, held changes ride along any transaction this client
//! commits that does not write their inodes ([`HeldChanges::take_riders`],
//! `Fs::commit`), as atomic updates that need no version: a directory's times,
//! which `tar` and `cp -a` set on leaving it, go with the next file's create.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tx::{attribute, in_place_update, Tx};
use super::{Fs, FsError, FsResult};
use crate::records::{Inode, Timestamp};
use crate::store::{Item, WriteOp};

/// Longest a change is held before it is written (shorter when `attr_ttl` is).
const HOLD: Duration = Duration::from_millis(200);
/// Most held changes that ride along one transaction of other records.
const RIDERS: usize = 8;

/// The attributes a setattr changed, field by field, so that they apply on top of a
/// fresher copy of the inode without undoing other changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct AttrDelta {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<Timestamp>,
    mtime: Option<Timestamp>,
    ctime: Option<Timestamp>,
}

fn differs<T: PartialEq>(old: T, new: T) -> Option<T> {
    (old != new).then_some(new)
}

impl AttrDelta {
    /// What turned `old` into `new`.
    pub(super) fn between(old: &Inode, new: &Inode) -> Self {
        AttrDelta {
            mode: differs(old.mode, new.mode),
            uid: differs(old.uid, new.uid),
            gid: differs(old.gid, new.gid),
            atime: differs(old.atime, new.atime),
            mtime: differs(old.mtime, new.mtime),
            ctime: differs(old.ctime, new.ctime),
        }
    }

    /// This change followed by `later`.
    pub(super) fn then(self, later: AttrDelta) -> Self {
        AttrDelta {
            mode: later.mode.or(self.mode),
            uid: later.uid.or(self.uid),
            gid: later.gid.or(self.gid),
            atime: later.atime.or(self.atime),
            mtime: later.mtime.or(self.mtime),
            ctime: later.ctime.or(self.ctime),
        }
    }

    /// Apply the change to `inode`.
    pub(super) fn apply(&self, inode: &mut Inode) {
        inode.mode = self.mode.unwrap_or(inode.mode);
        inode.uid = self.uid.unwrap_or(inode.uid);
        inode.gid = self.gid.unwrap_or(inode.gid);
        inode.atime = self.atime.unwrap_or(inode.atime);
        inode.mtime = self.mtime.unwrap_or(inode.mtime);
        inode.ctime = self.ctime.unwrap_or(inode.ctime);
    }

    /// The write of this change to the record of `ino` in place: the attributes it
    /// changes set and the version moved, conditioned only on the record existing. The
    /// same as applying it to a fresh copy, without reading one and without a version
    /// to conflict on, so it can ride along any transaction (see [`Fs::commit`]).
    pub(super) fn update_op(&self, ino: u64) -> WriteOp {
        let fields = [
            ("mode", self.mode.map(attribute)),
            ("uid", self.uid.map(attribute)),
            ("gid", self.gid.map(attribute)),
            ("atime", self.atime.map(attribute)),
            ("mtime", self.mtime.map(attribute)),
            ("ctime", self.ctime.map(attribute)),
        ];
        let mut set = Item::default();
        for (name, v) in fields {
            if let Some(v) = v {
                set.insert(name.into(), v);
            }
        }
        in_place_update(ino, set, Vec::new())
    }

    /// The change without its times (a later change of content or entries set newer ones).
    pub(super) fn without_times(self) -> Self {
        AttrDelta {
            mtime: None,
            ctime: None,
            ..self
        }
    }
}

/// The changes held on this client, by inode, with when each was first held.
#[derive(Default)]
pub(super) struct HeldChanges {
    held: Mutex<HashMap<u64, (AttrDelta, Instant)>>,
    /// Changes taken to be written and not yet committed: still shown, so that no
    /// getattr in between answers with the attributes from before them. An inode is
    /// here from [`HeldChanges::take`] until its [`Taken`] is dropped, even when nothing
    /// was held for it, so that writes of one inode's attributes never overlap.
    writing: Mutex<HashMap<u64, AttrDelta>>,
    /// Told whenever a [`Taken`] is dropped.
    released: tokio::sync::Notify,
    wake: tokio::sync::Notify,
    /// Whether a flusher task writes held changes; without one nothing is held.
    flusher: AtomicBool,
}

/// What was held for one inode, taken to be written with the next write of its
/// attributes. While it lives it is shown by getattr and no other write of the
/// inode's attributes can take it or start (see [`HeldChanges::take`]).
pub(super) struct Taken<'a> {
    changes: &'a HeldChanges,
    ino: u64,
    delta: Option<AttrDelta>,
    /// Since when it was held: given back, it is due when it was.
    since: Instant,
}

impl Taken<'_> {
    /// The change taken, if anything was held.
    pub(super) fn delta(&self) -> Option<AttrDelta> {
        self.delta
    }

    /// The inode it is a change of.
    pub(super) fn ino(&self) -> u64 {
        self.ino
    }

    /// The write that was to carry the change failed: hold it again, before whatever
    /// was held since.
    pub(super) fn give_back(mut self) {
        if let Some(delta) = self.delta.take() {
            self.changes
                .merge(self.ino, self.since, |since| delta.then(since));
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.changes.writing.lock().unwrap().remove(&self.ino);
        self.changes.released.notify_waiters();
    }
}

impl HeldChanges {
    /// Hold `delta` for `ino`, merged after what is already held.
    pub(super) fn hold(&self, ino: u64, delta: AttrDelta) {
        self.merge(ino, Instant::now(), |held| held.then(delta));
    }

    /// Replace what is held for `ino` (nothing: the empty change) by `combine` of it;
    /// it is held since `since` at the latest.
    fn merge(&self, ino: u64, since: Instant, combine: impl FnOnce(AttrDelta) -> AttrDelta) {
        let mut held = self.held.lock().unwrap();
        let entry = held.entry(ino).or_insert((AttrDelta::default(), since));
        entry.0 = combine(entry.0);
        entry.1 = entry.1.min(since);
        self.wake.notify_one();
    }

    /// Take what is held for `ino` to write it now, first waiting until no other write
    /// of its attributes that took held changes is still under way: one that commits
    /// later would land on top of this one and undo it (the flusher's delayed
    /// `chmod 4777` over the kernel's clearing of setuid after another user's write).
    pub(super) async fn take(&self, ino: u64) -> Taken<'_> {
        loop {
            // Made before the check, so that a release in between still wakes it.
            let released = self.released.notified();
            {
                let mut writing = self.writing.lock().unwrap();
                if let Entry::Vacant(slot) = writing.entry(ino) {
                    let held = self.held.lock().unwrap().remove(&ino);
                    slot.insert(held.map(|(d, _)| d).unwrap_or_default());
                    return Taken {
                        changes: self,
                        ino,
                        delta: held.map(|(d, _)| d),
                        since: held.map_or_else(Instant::now, |(_, since)| since),
                    };
                }
            }
            released.await;
        }
    }

    /// Take, without waiting, up to [`RIDERS`] held changes of inodes that no write is
    /// under way for and that `skip` does not name, to ride along a transaction.
    pub(super) fn take_riders(&self, skip: impl Fn(u64) -> bool) -> Vec<Taken<'_>> {
        let mut writing = self.writing.lock().unwrap();
        let mut held = self.held.lock().unwrap();
        let inos: Vec<u64> = held
            .keys()
            .filter(|ino| !writing.contains_key(ino) && !skip(**ino))
            .take(RIDERS)
            .copied()
            .collect();
        inos.into_iter()
            .map(|ino| {
                let (delta, since) = held.remove(&ino).expect("listed above");
                writing.insert(ino, delta);
                Taken {
                    changes: self,
                    ino,
                    delta: Some(delta),
                    since,
                }
            })
            .collect()
    }

    /// Show what is held for the inode (and what is being written) on it.
    pub(super) fn overlay(&self, inode: &mut Inode) {
        if let Some(delta) = self.writing.lock().unwrap().get(&inode.ino) {
            delta.apply(inode);
        }
        if let Some((delta, _)) = self.held.lock().unwrap().get(&inode.ino) {
            delta.apply(inode);
        }
    }

    /// This client just changed the content or the entries of `ino` (new times):
    /// held times are older and must not overwrite them.
    pub(super) fn superseded_times(&self, ino: u64) {
        if let Some((delta, _)) = self.held.lock().unwrap().get_mut(&ino) {
            *delta = delta.without_times();
        }
    }

    /// The inodes whose changes were held for at least `hold`, and when the next one is due.
    fn due(&self, hold: Duration) -> (Vec<u64>, Option<Duration>) {
        let held = self.held.lock().unwrap();
        let due = held
            .iter()
            .filter(|(_, (_, since))| since.elapsed() >= hold)
            .map(|(ino, _)| *ino)
            .collect();
        let next = held
            .values()
            .filter(|(_, since)| since.elapsed() < hold)
            .map(|(_, since)| hold - since.elapsed())
            .min();
        (due, next)
    }

    fn all(&self) -> Vec<u64> {
        self.held.lock().unwrap().keys().copied().collect()
    }
}

impl Fs {
    fn hold_time(&self) -> Duration {
        HOLD.min(self.config.attr_ttl)
    }

    /// Hold `delta` for `ino` if a flusher will write it; false if it must be written now.
    pub(super) fn hold_attrs(&self, ino: u64, delta: AttrDelta) -> bool {
        if !self.held.flusher.load(Ordering::Relaxed) || self.hold_time().is_zero() {
            return false;
        }
        self.held.hold(ino, delta);
        true
    }

    /// Write what is held for `ino` now (fsync, locks, truncation).
    pub(super) async fn write_held(&self, ino: u64) -> FsResult<()> {
        self.write_taken(self.held.take(ino).await).await
    }

    /// Write every held change (unmount).
    pub async fn write_all_held(&self) {
        for ino in self.held.all() {
            if let Err(e) = self.write_held(ino).await {
                tracing::warn!(ino, error = %e, "cannot write held attribute changes");
            }
        }
    }

    /// Write a change taken with [`HeldChanges::take`].
    async fn write_taken(&self, taken: Taken<'_>) -> FsResult<()> {
        let Some(delta) = taken.delta() else {
            return Ok(());
        };
        let ino = taken.ino;
        let written = self
            .optimistic(|fresh| async move {
                let inode = self.load_inode(ino, fresh).await?;
                let mut tx = Tx::new();
                delta.apply(tx.update(&inode));
                self.commit(tx).await.map(|_| ())
            })
            .await;
        match written {
            // Deleted meanwhile: nothing left to change.
            Err(FsError::Stale) => Ok(()),
            other => other,
        }
    }

    /// Start the task that writes held attribute changes once their time is up. Until it
    /// runs, setattr writes at once.
    pub fn spawn_flusher(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        self.held.flusher.store(true, Ordering::Relaxed);
        let fs = self.clone();
        rt.spawn(async move {
            loop {
                let hold = fs.hold_time();
                let (due, next) = fs.held.due(hold);
                for ino in due {
                    if let Err(e) = fs.write_held(ino).await {
                        tracing::warn!(ino, error = %e, "cannot write held attribute changes");
                    }
                }
                let wait = next.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = fs.held.wake.notified() => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::FileKind;

    fn inode() -> Inode {
        let t = Timestamp { s: 1, n: 0 };
        Inode {
            kind: FileKind::File,
            mode: 0o600,
            nlink: 1,
            parent: 0,
            ..Inode::empty_dir(5, 1, (1, 1), t)
        }
    }

    #[test]
    fn deltas_merge_field_by_field_and_apply_on_fresher_copies() {
        let old = inode();
        let chmod = Inode {
            mode: 0o644,
            ..old.clone()
        };
        let chown = Inode {
            uid: 7,
            ..chmod.clone()
        };
        let merged = AttrDelta::between(&old, &chmod).then(AttrDelta::between(&chmod, &chown));
        // Another client changed the size meanwhile: the merged change keeps it.
        let mut fresher = Inode {
            size: 99,
            ver: 2,
            ..old.clone()
        };
        merged.apply(&mut fresher);
        assert_eq!((fresher.mode, fresher.uid, fresher.size), (0o644, 7, 99));
        let touched = Inode {
            mtime: Timestamp { s: 5, n: 0 },
            ..old.clone()
        };
        let without = AttrDelta::between(&old, &touched).without_times();
        assert_eq!(without, AttrDelta::default());
    }

    #[tokio::test]
    async fn the_in_place_write_stores_what_applying_the_change_gives() {
        use crate::keys;
        use crate::records::{from_item, to_item};
        use crate::store::{embedded::EmbeddedStore, Condition, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let old = inode();
        store
            .write(WriteOp::Put {
                key: keys::inode_key(old.ino),
                item: to_item(&old),
                cond: Condition::None,
            })
            .await
            .unwrap();
        let new = Inode {
            mode: 0o600,
            gid: 9,
            mtime: Timestamp { s: 77, n: 5 },
            ..old.clone()
        };
        let delta = AttrDelta::between(&old, &new);
        store.write(delta.update_op(old.ino)).await.unwrap();
        let stored: Inode =
            from_item(store.get(&keys::inode_key(old.ino)).await.unwrap().unwrap()).unwrap();
        let mut expected = old.clone();
        delta.apply(&mut expected);
        expected.ver += 1;
        assert_eq!(stored, expected);
        // Only where the record still exists.
        let gone = delta.update_op(old.ino + 1);
        assert!(store.write(gone).await.is_err());
    }
}
