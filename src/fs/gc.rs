//! Garbage collection: what operations leave to be deleted later, and who deletes it.
//!
//! Every kind of garbage is recorded, in the transaction that makes it, in the garbage
//! partition (`g:`), so nothing is ever found by scanning a table:
//!
//! - a **cleanup** (`g:`/`<ino>`): blocks past a size that a truncation or deletion left
//!   behind. The client that committed it deletes them at once; if it died first, any
//!   live client finishes the job once that client's lease has run out. One it left
//!   unfinished while alive (a failed request, or a collection stopped by an unmount)
//!   its own collector takes up again.
//! - a **doomed file** (`g:`/`u<ino>`): a regular file whose last name went away. It may
//!   still be open on any client, and POSIX says its data lives until the last close,
//!   so it is deleted only once every live session has renewed its lease since then
//!   (allowing one heartbeat for clock differences) and none lists it among the files
//!   it holds open. Opening a file costs nothing extra: the list rides on the lease
//!   renewal every client makes anyway.
//!
//! - **writers** (`g:`/`w<ino>`): the sessions that may be writing blocks past the
//!   stored size of a file (a large flush puts its blocks before the transaction that
//!   records the size). A session sets its attribute to 1 before the first such put
//!   and to 0 after its last close of the file. If it dies in between, any live client
//!   deletes the blocks past the recorded size — found by querying the file's stripes,
//!   in transactions conditioned on the record's version, so a live writer that
//!   registers meanwhile stops the deletion.
//!
//! Every client runs [`Fs::collect_garbage`] on its heartbeat. The live clients
//! share the doomed files by inode number (one delete each, and a read before it only
//! for a file changed after its unlink, however many clients are mounted). Every deletion is conditional, so two collectors never
//! collide; one that loses a race finds nothing left to do.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::stream::{self, StreamExt, TryStreamExt};

use super::blocks::{BlockRecord, PARALLEL_BLOCKS};
use super::session::now_ms;
use super::tx::Tx;
use super::{Fs, FsError, FsResult};
use crate::keys::{self, DOOMED_PREFIX, GARBAGE_PARTITION, WRITERS_PREFIX};
use crate::records::{from_item, Cleanup, Doomed, FileKind, FileRemains, Inode, Session, Usage};
use crate::store::{
    Condition, Item, SortKey, StoreError, Table, Value, WriteOp, MAX_TRANSACTION_ITEMS,
    VERSION_ATTR,
};

/// Above this many blocks, a cleanup queries the stripes instead of deleting every index.
const DIRECT_DELETE_BLOCKS: u64 = 1024;
/// Files up to this size have their blocks deleted in the transaction that deletes them.
const SMALL_DELETE_BYTES: u64 = 64 * 1024;
/// Heartbeats after its last name went away that a doomed file becomes any collector's,
/// not only the one whose share it is.
const OVERDUE_HEARTBEATS: u64 = 6;

/// Whether a collection may start its next step.
pub(super) type GoOn<'a> = dyn Fn() -> bool + Sync + 'a;

/// What a pass of the collector did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Doomed files deleted.
    pub files: usize,
    /// Cleanups of dead clients, or left unfinished by this one, finished.
    pub cleanups: usize,
    /// Files whose blocks past the end a dead writer left were deleted.
    pub past_end: usize,
    /// Doomed files still open somewhere, or not yet seen by every live session.
    pub waiting: usize,
    /// The pass was told to stop before it went through all the garbage.
    pub unfinished: bool,
}

/// The files whose cleanups this client is working on now (committing or deleting
/// their blocks), so that its collector leaves those to the task doing them. Counted:
/// two operations may trim the same file at once.
#[derive(Default)]
pub(super) struct CleaningNow(Mutex<HashMap<u64, usize>>);

/// Cleanups being worked on until this is dropped (also when its task is cancelled).
pub(super) struct Cleaning<'a> {
    now: &'a CleaningNow,
    inos: Vec<u64>,
}

impl CleaningNow {
    /// Mark the cleanups of `inos` as being worked on until the guard is dropped.
    pub(super) fn hold(&self, inos: Vec<u64>) -> Cleaning<'_> {
        let mut busy = self.0.lock().unwrap();
        for ino in &inos {
            *busy.entry(*ino).or_default() += 1;
        }
        Cleaning { now: self, inos }
    }

    /// Whether a cleanup of `ino` is being worked on now.
    fn busy(&self, ino: u64) -> bool {
        self.0.lock().unwrap().contains_key(&ino)
    }
}

impl Drop for Cleaning<'_> {
    fn drop(&mut self) {
        let mut busy = self.now.0.lock().unwrap();
        for ino in &self.inos {
            if let Some(n) = busy.get_mut(ino) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(ino);
                }
            }
        }
    }
}

/// What a collector read of a file before deleting any of its blocks.
struct Settled {
    /// Its recorded size (0 if it is gone).
    size: u64,
    /// Whether its data is inline (then every block in the blocks table is stray).
    inline: bool,
    /// Its cleanup record, if any.
    cleanup: Option<Cleanup>,
    /// Checks that hold as long as the inode and the writers record are as read.
    guards: Vec<WriteOp>,
}

/// The write that sets `session`'s attribute of the writers record of `ino`.
fn set_writer(ino: u64, session: &str, writing: bool) -> WriteOp {
    let mut set = Item::default();
    set.insert(
        keys::writer_attr(session),
        Value::N(u8::from(writing).to_string()),
    );
    WriteOp::Update {
        key: keys::writers_key(ino),
        set,
        add: vec![(VERSION_ATTR.to_string(), 1)],
        cond: Condition::None,
    }
}

/// The sessions a writers record says are writing, and its version.
fn writing_sessions(item: &Item) -> (Vec<String>, u64) {
    let prefix = keys::writer_attr("");
    let sessions = item
        .iter()
        .filter(|(_, v)| matches!(v, Value::N(n) if n == "1"))
        .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    (sessions, super::session::version_of(item))
}

/// Whether the collector of session `me` deletes `doomed` at `now`. The live sessions
/// share the doomed files by inode number, so that each is deleted once, not once by
/// every client. A file left long past its turn (its collector keeps failing)
/// is anyone's; a dead collector's share passes on once its session is no longer live.
fn is_my_share(doomed: &Doomed, live: &[Session], me: Option<&str>, now: u64) -> bool {
    let Some(mine) = live.iter().find(|s| Some(s.id.as_str()) == me) else {
        return true;
    };
    let position = live.iter().filter(|s| s.id < mine.id).count() as u64;
    let overdue_ms = mine.heartbeat_ms * OVERDUE_HEARTBEATS;
    doomed.ino % live.len() as u64 == position || now > doomed.at_ms.saturating_add(overdue_ms)
}

/// When `session` last renewed its lease, by its own clock.
fn renewed_ms(session: &Session) -> u64 {
    session
        .expires_ms
        .saturating_sub(session.heartbeat_ms * super::session::LEASE_HEARTBEATS)
}

impl Fs {
    /// What every heartbeat's collector does: release what dead sessions held, then
    /// delete the garbage no live client needs any more.
    pub async fn clean_up(&self) -> FsResult<Collected> {
        self.clean_up_while(&|| true).await
    }

    /// [`Fs::clean_up`], starting no new step once `go_on` says no (a step under way
    /// finishes: one cut in flight could commit without this client knowing, and the
    /// usage totals would miss what it deleted).
    pub(super) async fn clean_up_while(&self, go_on: &GoOn<'_>) -> FsResult<Collected> {
        let live = self.clean_dead_sessions(true).await?;
        self.collect_garbage(&live, go_on).await
    }

    /// What `fsck --repair` does first: the same, deleting dead sessions' records at
    /// once instead of keeping them for `dynamofs status` to show.
    pub(super) async fn clean_up_now(&self) -> FsResult<Collected> {
        let live = self.clean_dead_sessions(false).await?;
        self.collect_garbage(&live, &|| true).await
    }

    /// Delete the garbage no live client needs any more, given the live sessions as
    /// just read, while `go_on` says so.
    async fn collect_garbage(&self, live: &[Session], go_on: &GoOn<'_>) -> FsResult<Collected> {
        let mut collected = Collected::default();
        let mut deletable = Vec::new();
        for (sk, item) in self.query_all(Table::Meta, GARBAGE_PARTITION, None).await? {
            if !go_on() {
                collected.unfinished = true;
                break;
            }
            let SortKey::S(name) = sk else { continue };
            if let Some(ino) = name.strip_prefix(WRITERS_PREFIX) {
                let ino: u64 = ino
                    .parse()
                    .map_err(|_| StoreError::fatal(format!("malformed writers record {name:?}")))?;
                let (writing, ver) = writing_sessions(&item);
                if writing.iter().any(|w| live.iter().any(|s| &s.id == w)) {
                    collected.waiting += 1;
                    continue;
                }
                if !writing.is_empty() {
                    tracing::info!(
                        ino,
                        "deleting the blocks a dead client wrote past a file's end"
                    );
                    match self.delete_past_end(ino, live).await {
                        Ok(true) => collected.past_end += 1,
                        // A live writer registered meanwhile: its record, its turn.
                        Ok(false) => continue,
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e),
                    }
                }
                let done = WriteOp::Delete {
                    key: keys::writers_key(ino),
                    cond: Condition::VersionIs(ver),
                };
                match self.store.write(done).await {
                    Ok(()) | Err(StoreError::Conflict) => {}
                    Err(e) => return Err(e.into()),
                }
            } else if name.starts_with(DOOMED_PREFIX) {
                let doomed: Doomed = from_item(item)?;
                if self.still_needed(&doomed, live) {
                    collected.waiting += 1;
                } else if is_my_share(&doomed, live, self.session_id(), now_ms()) {
                    deletable.push(doomed);
                }
            } else {
                let cleanup: Cleanup = from_item(item)?;
                let owner = cleanup.session.as_deref();
                let mine = owner.is_some() && owner == self.session_id();
                if !mine && owner.is_some_and(|owner| live.iter().any(|s| s.id == owner)) {
                    continue;
                }
                match self.take_up_cleanup(&cleanup, live).await {
                    Ok(true) => collected.cleanups += 1,
                    Ok(false) => {}
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // After a big `rm -rf` there are many: side by side, not one after the other.
        let found = deletable.len();
        collected.files = stream::iter(deletable)
            .take_while(|_| std::future::ready(go_on()))
            .map(|doomed| self.delete_doomed(doomed))
            .buffer_unordered(PARALLEL_BLOCKS)
            .try_fold(0, |n, ()| async move { Ok(n + 1) })
            .await?;
        collected.unfinished |= collected.files < found;
        Ok(collected)
    }

    /// Record, before this client first writes blocks past the stored end of `ino`,
    /// that it may leave such blocks behind if it dies (once, until its last close).
    pub(super) async fn writing_past_end(&self, ino: u64) -> FsResult<()> {
        let Some(session) = self.session_id() else {
            return Ok(());
        };
        if !self.files.start_writing(ino) {
            return Ok(());
        }
        let recorded = self.store.write(set_writer(ino, session, true)).await;
        if recorded.is_err() {
            self.files.stop_writing(ino);
        }
        Ok(recorded?)
    }

    /// After the last close of `ino` (its size recorded): this client writes no more
    /// past its end. A failure only leaves work for a collector, after this session.
    pub(super) async fn done_writing_past_end(&self, ino: u64) {
        let Some(session) = self.session_id() else {
            return;
        };
        if self.files.stop_writing(ino) {
            if let Err(e) = self.store.write(set_writer(ino, session, false)).await {
                tracing::warn!(ino, error = %e, "cannot clear this client's writer record");
            }
        }
    }

    /// Finish a cleanup that its client left: a dead one's, or one of this client's
    /// that failed or was cut short. Unlike the committing client, which trims at once
    /// and alone, a collector may come much later, when the file has grown again or is
    /// being written: it reads the file fresh, keeps everything up to its size now,
    /// and deletes only under conditions that fail if the file changed meanwhile.
    /// Returns whether it finished the cleanup (false: not now, or not any more).
    async fn take_up_cleanup(&self, listed: &Cleanup, live: &[Session]) -> FsResult<bool> {
        let ino = listed.ino;
        if self.cleaning.busy(ino) {
            // This client is committing or trimming it right now.
            return Ok(false);
        }
        let _cleaning = self.cleaning.hold(vec![ino]);
        let Some(mut file) = self.settled(ino, live).await? else {
            return Ok(false);
        };
        if file.cleanup.as_ref().map(|c| c.stored) != Some(listed.stored) {
            // Finished, or replaced by a later one, since it was listed.
            return Ok(false);
        }
        tracing::info!(ino, owner = ?listed.session, "finishing a cleanup its client left");
        let recorded = WriteOp::Check {
            key: keys::cleanup_key(ino),
            cond: Condition::NumberIs("stored", listed.stored),
        };
        file.guards.push(recorded);
        self.trim_guarded(ino, listed.keep.max(file.size), &file)
            .await?;
        let done = WriteOp::Delete {
            key: keys::cleanup_key(ino),
            cond: Condition::NumberIs("stored", listed.stored),
        };
        match self.store.write(done).await {
            Ok(()) | Err(StoreError::Conflict) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete the blocks a dead writer left past the recorded end of `ino` (and a stray
    /// block 0 of an inline file; every block of a file that is gone). Returns false if
    /// a live client is writing it now.
    async fn delete_past_end(&self, ino: u64, live: &[Session]) -> FsResult<bool> {
        let Some(file) = self.settled(ino, live).await? else {
            return Ok(false);
        };
        self.trim_guarded(ino, file.size, &file).await?;
        Ok(true)
    }

    /// Read, with one request, what decides which blocks of `ino` a collector may
    /// delete. None while a live client may be writing blocks past its end.
    async fn settled(&self, ino: u64, live: &[Session]) -> FsResult<Option<Settled>> {
        let keys = [
            keys::inode_key(ino),
            keys::writers_key(ino),
            keys::cleanup_key(ino),
        ];
        let mut items = self.store.batch_get(&keys).await?.into_iter();
        let (inode, writers, cleanup) = (
            items.next().flatten(),
            items.next().flatten(),
            items.next().flatten(),
        );
        let (writing, writers_guard) = match &writers {
            Some(item) => {
                let (writing, ver) = writing_sessions(item);
                (writing, Condition::VersionIs(ver))
            }
            None => (Vec::new(), Condition::Absent),
        };
        if writing.iter().any(|w| live.iter().any(|s| &s.id == w)) {
            return Ok(None);
        }
        let (size, inline, inode_guard) = match inode {
            Some(item) => {
                let inode: Inode = from_item(item)?;
                (inode.size, inode.inline, Condition::VersionIs(inode.ver))
            }
            None => (0, false, Condition::Absent),
        };
        Ok(Some(Settled {
            size,
            inline,
            cleanup: cleanup.map(from_item).transpose()?,
            guards: vec![
                WriteOp::Check {
                    key: keys::inode_key(ino),
                    cond: inode_guard,
                },
                WriteOp::Check {
                    key: keys::writers_key(ino),
                    cond: writers_guard,
                },
            ],
        }))
    }

    /// Delete the blocks-table blocks of `ino` past byte `keep` (trimming the one that
    /// holds it; all of them if the file is inline), in transactions that also check
    /// `file.guards`, so that nothing is deleted if the file changed since it was read.
    async fn trim_guarded(&self, ino: u64, keep: u64, file: &Settled) -> FsResult<()> {
        let bs = self.format.block_size;
        let mut ops = Vec::new();
        let first_dead = match file.inline {
            true => 0,
            false => keep.div_ceil(bs),
        };
        if !file.inline && keep % bs != 0 {
            let idx = keep / bs;
            if let Some(item) = self
                .store
                .get(&keys::block_key(ino, idx, self.format.stripes))
                .await?
            {
                let mut block = BlockRecord::bytes(item, bs)?;
                if block.len() as u64 > keep - idx * bs {
                    block.truncate((keep - idx * bs) as usize);
                    ops.push(self.block_put(ino, idx, &block));
                }
            }
        }
        ops.extend(
            self.stored_block_indices(ino, first_dead)
                .await?
                .into_iter()
                .map(|idx| self.block_delete(ino, idx)),
        );
        for chunk in ops.chunks(MAX_TRANSACTION_ITEMS - file.guards.len()) {
            let mut tx = file.guards.clone();
            tx.extend_from_slice(chunk);
            self.store.transact(tx).await?;
        }
        Ok(())
    }

    /// The indices of the blocks of `ino` stored in the blocks table from `first` on,
    /// found by querying each stripe.
    async fn stored_block_indices(&self, ino: u64, first: u64) -> FsResult<Vec<u64>> {
        let after = first.checked_sub(1).map(SortKey::N);
        let mut found = Vec::new();
        for stripe in 0..self.format.stripes {
            let partition = keys::block_partition(ino, stripe);
            for (sk, _) in self
                .query_all(Table::Blocks, &partition, after.clone())
                .await?
            {
                if let SortKey::N(idx) = sk {
                    found.push(idx);
                }
            }
        }
        Ok(found)
    }

    /// Whether a doomed file may still be open on some live client.
    fn still_needed(&self, doomed: &Doomed, live: &[Session]) -> bool {
        self.files.is_open(doomed.ino)
            || live.iter().any(|s| {
                s.open.contains(&doomed.ino)
                    || renewed_ms(s) < doomed.at_ms.saturating_add(s.heartbeat_ms)
            })
    }

    /// Delete a doomed file with its data, and its garbage record. The first attempt
    /// trusts the inode as the unlink left it (the record says), on the condition that
    /// its version has not moved since: one request instead of a read and a write. If
    /// it moved (the file was written while open elsewhere), or another collector was
    /// first, the retry reads the inode.
    async fn delete_doomed(&self, doomed: Doomed) -> FsResult<()> {
        let ino = doomed.ino;
        self.optimistic(|fresh| async move {
            let mut tx = Tx::new();
            tx.write(WriteOp::Delete {
                key: keys::doomed_key(ino),
                cond: Condition::None,
            });
            match doomed.left.filter(|_| !fresh) {
                Some(left) => self.delete_file(&mut tx, ino, left),
                None => match self.load_inode(ino, true).await {
                    Ok(inode) if inode.nlink == 0 => {
                        debug_assert_eq!(inode.kind, FileKind::File);
                        self.delete_file(&mut tx, ino, FileRemains::of(&inode))
                    }
                    // Already gone (another collector was first), or (never, but) named again.
                    Ok(_) | Err(FsError::Stale) => {}
                    Err(e) => return Err(e),
                },
            }
            self.commit(tx).await.map(|_| ())
        })
        .await
    }

    /// Add to `tx` the deletion of regular file `ino`, with no name and no open
    /// descriptor, if its inode is still as `left`: the inode, its inline data, and its
    /// blocks (in the transaction for a small file, as a cleanup for a larger one).
    fn delete_file(&self, tx: &mut Tx, ino: u64, left: FileRemains) {
        tx.delete_at(ino, left.ver, Usage::of(FileKind::File, left.size));
        if left.inline {
            tx.write(WriteOp::Delete {
                key: keys::inline_key(ino),
                cond: Condition::None,
            });
        }
        if left.size <= SMALL_DELETE_BYTES {
            for idx in u64::from(left.inline)..left.size.div_ceil(self.format.block_size) {
                tx.write(self.block_delete(ino, idx));
            }
        } else {
            tx.add_cleanup(ino, 0, left.size);
        }
    }

    /// Delete the blocks a committed cleanup record names, then the record. A failure
    /// leaves the record in place for a later run to finish.
    pub(super) async fn finish_cleanup(&self, cleanup: Cleanup) {
        if let Err(e) = self.trim_blocks(&cleanup).await {
            tracing::warn!(ino = cleanup.ino, error = %e, "block cleanup left unfinished");
            return;
        }
        // Unless a later cleanup of the same file replaced the record meanwhile.
        let done = WriteOp::Delete {
            key: keys::cleanup_key(cleanup.ino),
            cond: Condition::NumberIs("stored", cleanup.stored),
        };
        if let Err(e) = self.store.write(done).await {
            tracing::warn!(ino = cleanup.ino, error = %e, "cannot remove a finished cleanup record");
        }
    }

    /// Delete the blocks-table blocks of `ino` past byte `keep` (trimming the one that
    /// holds it). Never touches an inline block 0: cleanups of inline files keep at
    /// least the first block.
    async fn trim_blocks(&self, cleanup: &Cleanup) -> FsResult<()> {
        let (ino, keep, stored) = (cleanup.ino, cleanup.keep, cleanup.stored);
        let bs = self.format.block_size;
        let stripes = self.format.stripes;
        if keep % bs != 0 {
            let idx = keep / bs;
            let in_blocks = keys::block_key(ino, idx, stripes);
            let items = self
                .store
                .batch_get(std::slice::from_ref(&in_blocks))
                .await?;
            if let Some(item) = items.into_iter().flatten().next() {
                let mut block = BlockRecord::bytes(item, bs)?;
                block.truncate((keep - idx * bs) as usize);
                self.store.write(self.block_put(ino, idx, &block)).await?;
            }
        }
        let first_dead = keep.div_ceil(bs);
        let end = stored.div_ceil(bs);
        let doomed: Vec<u64> = if end.saturating_sub(first_dead) <= DIRECT_DELETE_BLOCKS {
            (first_dead..end).collect()
        } else {
            self.stored_block_indices(ino, first_dead).await?
        };
        stream::iter(
            doomed
                .into_iter()
                .map(|idx| self.store.write(self.block_delete(ino, idx))),
        )
        .buffer_unordered(PARALLEL_BLOCKS)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Timestamp;

    fn session(id: &str) -> Session {
        Session {
            id: id.into(),
            host: "h".into(),
            pid: 1,
            mountpoint: "/mnt".into(),
            version: "test".into(),
            started: Timestamp::now(),
            expires_ms: 0,
            heartbeat_ms: 1000,
            open: Vec::new(),
        }
    }

    #[test]
    fn each_doomed_file_is_one_collectors_until_it_is_overdue() {
        let live = [session("c"), session("a"), session("b")];
        let now = 1_000_000;
        for ino in 100..130 {
            let fresh = Doomed {
                ino,
                at_ms: now - 1000,
                left: None,
            };
            let takers: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .filter(|me| is_my_share(&fresh, &live, Some(me), now))
                .collect();
            assert_eq!(takers.len(), 1, "ino {ino} taken by {takers:?}");
            let overdue = Doomed {
                ino,
                at_ms: now - 1000 * OVERDUE_HEARTBEATS - 1,
                left: None,
            };
            assert!(["a", "b", "c"].into_iter().all(|me| is_my_share(
                &overdue,
                &live,
                Some(me),
                now
            )));
        }
        let fresh = Doomed {
            ino: 7,
            at_ms: now,
            left: None,
        };
        // Without a session of its own (fsck), or one not yet listed: everything.
        assert!(is_my_share(&fresh, &live, None, now));
        assert!(is_my_share(&fresh, &live, Some("d"), now));
        // A session alone takes everything.
        assert!(is_my_share(&fresh, &live[..1], Some("c"), now));
    }
}
