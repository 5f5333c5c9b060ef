//! POSIX byte-range locks (F_GETLK, F_SETLK, F_SETLKW) and BSD flock, advisory and
//! enforced across all clients.
//!
//! All locks on one file live in one record (`l:`/`<ino>`), changed only by writes
//! conditioned on its version, so two clients can never both take conflicting locks.
//! A lock is owned by (session, lock owner); locks of a session whose lease ran out
//! do not count and are dropped by the next writer of the record. A waiting F_SETLKW
//! polls with backoff (at most a few requests per second) and gives up with EINTR as
//! soon as the waiting process has a signal pending or is gone.
//!
//! Locks also order data, as on NFS: unlocking writes back the file's buffered data
//! first, and taking a lock drops what this client cached of the file.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use super::session::LockSets;
use super::{Fs, FsError, FsResult};
use crate::keys::{self, LOCK_PARTITION};
use crate::records::{from_item, to_item, Lock, LockKind, LockSet};
use crate::store::{Condition, SortKey, Table, WriteOp};

/// Longest pause between two attempts of a waiting F_SETLKW.
const MAX_WAIT_POLL: Duration = Duration::from_millis(500);
/// How often a waiter looks for a pending signal.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The (inode, owner) pairs that hold locks through this client, so that closing a
/// file costs no request when its owner holds none.
#[derive(Default)]
pub(super) struct HeldLocks {
    held: Mutex<HashSet<(u64, u64)>>,
}

impl HeldLocks {
    pub(super) fn forget_all(&self) {
        self.held.lock().unwrap().clear();
    }
}

/// What a lock request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRange {
    /// The kernel's lock owner id (per process for fcntl, per open file for flock).
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
    /// Process id of the caller.
    pub pid: u32,
}

fn overlaps(l: &Lock, start: u64, end: u64) -> bool {
    l.start <= end && start <= l.end
}

/// Take `range` out of `owner`'s locks, then (unless unlocking) add it as `kind`,
/// merged with adjacent locks of the same owner and kind.
fn apply(locks: &mut Vec<Lock>, session: &str, range: LockRange, kind: Option<LockKind>) {
    let mine = |l: &Lock| l.session == session && l.owner == range.owner;
    let mut kept = Vec::with_capacity(locks.len() + 1);
    for l in locks.drain(..) {
        if !mine(&l) || !overlaps(&l, range.start, range.end) {
            kept.push(l);
            continue;
        }
        if l.start < range.start {
            kept.push(Lock {
                end: range.start - 1,
                ..l.clone()
            });
        }
        if l.end > range.end {
            kept.push(Lock {
                start: range.end + 1,
                ..l
            });
        }
    }
    if let Some(kind) = kind {
        let (mut start, mut end) = (range.start, range.end);
        kept.retain(|l| {
            let adjacent =
                l.end.checked_add(1) == Some(start) || end.checked_add(1) == Some(l.start);
            if mine(l) && l.kind == kind && adjacent {
                start = start.min(l.start);
                end = end.max(l.end);
                false
            } else {
                true
            }
        });
        kept.push(Lock {
            session: session.to_string(),
            owner: range.owner,
            start,
            end,
            kind,
            pid: range.pid,
        });
    }
    *locks = kept;
}

fn signal_mask(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether process `pid` has a signal for a thread waiting on FUSE (as F_SETLKW does),
/// or is gone. fuser does not pass FUSE_INTERRUPT on, and FUSE names the process, not
/// the thread, so a waiter looks at the process-wide pending signals and at those of
/// its threads that sit waiting for a FUSE answer. (Two threads of one process both
/// waiting, only one of them signalled, could see the wrong one interrupted.)
fn signal_pending(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    threads.flatten().any(|thread| {
        let Ok(status) = std::fs::read_to_string(thread.path().join("status")) else {
            return false;
        };
        let waiting = std::fs::read_to_string(thread.path().join("wchan"))
            .is_ok_and(|w| w.contains("request_wait_answer"));
        let own = if waiting {
            signal_mask(&status, "SigPnd:")
        } else {
            0
        };
        (own | signal_mask(&status, "ShdPnd:"))
            & !signal_mask(&status, "SigBlk:")
            & !signal_mask(&status, "SigIgn:")
            != 0
    })
}

impl Fs {
    fn lock_session(&self) -> FsResult<&str> {
        self.session_id().ok_or(FsError::NoLocks)
    }

    async fn load_locks(&self, ino: u64) -> FsResult<Option<LockSet>> {
        Ok(match self.store.get(&keys::lock_key(ino)).await? {
            Some(item) => Some(from_item(item)?),
            None => None,
        })
    }

    /// Every lock record of the filesystem.
    pub(super) async fn lock_sets(&self) -> FsResult<LockSets> {
        let items = self.query_all(Table::Meta, LOCK_PARTITION, None).await?;
        let mut out = Vec::with_capacity(items.len());
        for (sk, item) in items {
            if let SortKey::S(ino) = sk {
                out.push((ino.parse().unwrap_or(0), from_item(item)?));
            }
        }
        Ok(out)
    }

    /// Every lock held on the filesystem, by inode, for status reports.
    pub async fn all_locks(&self) -> FsResult<Vec<(u64, Lock)>> {
        Ok(self
            .lock_sets()
            .await?
            .into_iter()
            .flat_map(|(ino, set)| set.locks.into_iter().map(move |l| (ino, l)))
            .collect())
    }

    /// Write the lock record of `ino` after `change`, conditioned on the version read.
    pub(super) async fn rewrite_locks(
        &self,
        ino: u64,
        change: impl Fn(&mut Vec<Lock>),
    ) -> FsResult<()> {
        self.optimistic(|_| {
            let change = &change;
            async move {
                let current = self.load_locks(ino).await?;
                let mut set = current.clone().unwrap_or_default();
                change(&mut set.locks);
                self.store_locks(ino, current.as_ref(), set).await
            }
        })
        .await
    }

    async fn store_locks(
        &self,
        ino: u64,
        read: Option<&LockSet>,
        mut set: LockSet,
    ) -> FsResult<()> {
        if read.is_some_and(|r| r.locks == set.locks) {
            return Ok(());
        }
        let key = keys::lock_key(ino);
        let op = match (read, set.locks.is_empty()) {
            (None, true) => return Ok(()),
            (None, false) => {
                set.ver = 1;
                WriteOp::Put {
                    key,
                    item: to_item(&set),
                    cond: Condition::Absent,
                }
            }
            (Some(read), true) => WriteOp::Delete {
                key,
                cond: Condition::VersionIs(read.ver),
            },
            (Some(read), false) => {
                set.ver = read.ver + 1;
                WriteOp::Put {
                    key,
                    item: to_item(&set),
                    cond: Condition::VersionIs(read.ver),
                }
            }
        };
        Ok(self.store.write(op).await?)
    }

    /// The first lock of another owner that conflicts with `kind` over `range`.
    async fn conflict(
        &self,
        set: &LockSet,
        session: &str,
        range: LockRange,
        kind: LockKind,
    ) -> FsResult<Option<Lock>> {
        for l in &set.locks {
            let other = l.session != session || l.owner != range.owner;
            let exclusive = l.kind == LockKind::Write || kind == LockKind::Write;
            if other
                && exclusive
                && overlaps(l, range.start, range.end)
                && self.session_alive(&l.session).await?
            {
                return Ok(Some(l.clone()));
            }
        }
        Ok(None)
    }

    /// F_GETLK: a lock that would block taking `kind` over `range`, if any.
    pub async fn getlk(
        &self,
        ino: u64,
        range: LockRange,
        kind: LockKind,
    ) -> FsResult<Option<Lock>> {
        let session = self.lock_session()?;
        match self.load_locks(ino).await? {
            Some(set) => self.conflict(&set, session, range, kind).await,
            None => Ok(None),
        }
    }

    /// F_SETLK (`wait` false) and F_SETLKW (`wait` true); `kind` None unlocks.
    pub async fn setlk(
        &self,
        ino: u64,
        range: LockRange,
        kind: Option<LockKind>,
        wait: bool,
    ) -> FsResult<()> {
        let session = self.lock_session()?.to_string();
        // A lock is a point other clients synchronize at: the file exists for them.
        self.settle_create(ino).await?;
        if kind.is_none() {
            // What was written under the lock must be visible to its next holder.
            self.flush_open_file(ino).await?;
        }
        let mut pause = Duration::from_millis(10);
        loop {
            match self.try_setlk(ino, &session, range, kind).await {
                Ok(()) if kind.is_some() => return self.revalidate_open_file(ino).await,
                Err(FsError::WouldBlock) if wait => {
                    let until = tokio::time::Instant::now() + pause;
                    while tokio::time::Instant::now() < until {
                        if signal_pending(range.pid) {
                            return Err(FsError::Interrupted);
                        }
                        tokio::time::sleep(SIGNAL_POLL.min(pause)).await;
                    }
                    pause = (pause * 2).min(MAX_WAIT_POLL);
                    // Another client may have died holding it: read liveness again.
                    self.liveness.clear();
                }
                other => return other,
            }
        }
    }

    async fn try_setlk(
        &self,
        ino: u64,
        session: &str,
        range: LockRange,
        kind: Option<LockKind>,
    ) -> FsResult<()> {
        self.optimistic(|_| async move {
            let current = self.load_locks(ino).await?;
            let mut set = current.clone().unwrap_or_default();
            if let Some(kind) = kind {
                if self.conflict(&set, session, range, kind).await?.is_some() {
                    return Err(FsError::WouldBlock);
                }
            }
            let mut dead = HashSet::new();
            for l in &set.locks {
                if !self.session_alive(&l.session).await? {
                    dead.insert(l.session.clone());
                }
            }
            set.locks.retain(|l| !dead.contains(&l.session));
            apply(&mut set.locks, session, range, kind);
            let still_held = set
                .locks
                .iter()
                .any(|l| l.session == session && l.owner == range.owner);
            self.store_locks(ino, current.as_ref(), set).await?;
            let mut held = self.locks.held.lock().unwrap();
            if still_held {
                held.insert((ino, range.owner));
            } else {
                held.remove(&(ino, range.owner));
            }
            Ok(())
        })
        .await
    }

    /// Release every lock `owner` holds on `ino` (close of a descriptor, as POSIX says).
    pub async fn release_locks(&self, ino: u64, owner: u64) -> FsResult<()> {
        if !self.locks.held.lock().unwrap().contains(&(ino, owner)) {
            return Ok(());
        }
        let session = self.lock_session()?.to_string();
        self.rewrite_locks(ino, |locks| {
            locks.retain(|l| l.session != session || l.owner != owner)
        })
        .await?;
        self.locks.held.lock().unwrap().remove(&(ino, owner));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(owner: u64, start: u64, end: u64) -> LockRange {
        LockRange {
            owner,
            start,
            end,
            pid: 1,
        }
    }

    fn spans(locks: &[Lock]) -> Vec<(u64, u64, u64, LockKind)> {
        let mut v: Vec<_> = locks
            .iter()
            .map(|l| (l.owner, l.start, l.end, l.kind))
            .collect();
        v.sort_by_key(|s| (s.0, s.1));
        v
    }

    #[test]
    fn unlocking_the_middle_splits_and_adjacent_locks_merge() {
        let mut locks = Vec::new();
        apply(&mut locks, "s", range(1, 0, 99), Some(LockKind::Write));
        apply(&mut locks, "s", range(1, 40, 59), None);
        assert_eq!(
            spans(&locks),
            vec![(1, 0, 39, LockKind::Write), (1, 60, 99, LockKind::Write)]
        );
        apply(&mut locks, "s", range(1, 40, 59), Some(LockKind::Write));
        assert_eq!(spans(&locks), vec![(1, 0, 99, LockKind::Write)]);
        apply(&mut locks, "s", range(1, 10, 19), Some(LockKind::Read));
        assert_eq!(
            spans(&locks),
            vec![
                (1, 0, 9, LockKind::Write),
                (1, 10, 19, LockKind::Read),
                (1, 20, 99, LockKind::Write)
            ]
        );
        apply(
            &mut locks,
            "s",
            range(2, 200, u64::MAX),
            Some(LockKind::Read),
        );
        apply(&mut locks, "s", range(1, 0, u64::MAX), None);
        assert_eq!(spans(&locks), vec![(2, 200, u64::MAX, LockKind::Read)]);
    }

    #[test]
    fn another_session_with_the_same_owner_id_is_another_owner() {
        let mut locks = Vec::new();
        apply(&mut locks, "a", range(1, 0, 9), Some(LockKind::Read));
        apply(&mut locks, "b", range(1, 0, 9), None);
        assert_eq!(locks.len(), 1);
    }

    #[test]
    fn this_process_has_no_signal_pending() {
        assert!(!signal_pending(std::process::id()));
        assert!(
            signal_pending(u32::MAX),
            "a process that is gone counts as interrupted"
        );
    }
}
