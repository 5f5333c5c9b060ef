//! Usage totals: how many inodes, directories, files and symlinks the filesystem
//! holds and how long its files are, known without scanning a table.
//!
//! Every committed transaction says how it moved the totals (see `tx.rs`: each inode
//! change knows what the inode added before and adds after). A client adds those
//! moves up in memory and writes them to the usage record (`f:` / `usage`) with one
//! atomic `ADD` per heartbeat and at unmount: never a read-modify-write, so clients
//! never overwrite each other's counts, and never a hot item in every transaction,
//! which DynamoDB would cancel whenever two clients' transactions met on it. What a
//! client added but had not written when it crashed is lost; `fsck` notices the
//! drift and `fsck --repair` writes the recount.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Fs, FsResult};
use crate::keys;
use crate::records::{from_item, to_item, Inode, Usage};
use crate::store::{Condition, Item, Store, WriteOp};

/// How long `statfs` answers from the totals it read last: `df` on many mounts must
/// not cost a request each time.
const STATFS_TOTALS_TTL: Duration = Duration::from_secs(1);

/// The moves of this client's committed changes not yet written to the usage record,
/// and the totals `statfs` read last.
#[derive(Default)]
pub(super) struct PendingUsage {
    unwritten: Mutex<Usage>,
    read: Mutex<Option<(Instant, Option<Usage>)>>,
}

impl PendingUsage {
    /// A committed change moved the totals by `delta`.
    pub(super) fn add(&self, delta: Usage) {
        *self.unwritten.lock().unwrap() += delta;
    }

    fn unwritten(&self) -> Usage {
        *self.unwritten.lock().unwrap()
    }
}

/// The atomic addition of `delta` to the usage record (which it creates if absent).
fn add_op(delta: &Usage) -> WriteOp {
    WriteOp::Update {
        key: keys::usage_key(),
        set: Item::default(),
        add: delta
            .fields()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(name, n)| (name.to_string(), n))
            .collect(),
        cond: Condition::None,
    }
}

/// The usage record's first value: the root directory alone. Written with the format
/// record, so that a new filesystem's totals are exact from the start.
pub(super) fn initial_record(root: &Inode) -> WriteOp {
    WriteOp::Put {
        key: keys::usage_key(),
        item: to_item(&Usage::of(root.kind, root.size)),
        cond: Condition::Absent,
    }
}

/// The usage totals as stored: None in a filesystem made before they were kept, until
/// `fsck --repair` counts them.
pub(super) async fn recorded(store: &dyn Store) -> FsResult<Option<Usage>> {
    match store.get(&keys::usage_key()).await? {
        Some(item) => Ok(Some(from_item(item)?)),
        None => Ok(None),
    }
}

impl Fs {
    /// Write what this client's changes moved the totals by since the last time, in
    /// one atomic add (nothing when they moved nothing). Kept for the next try if the
    /// write fails.
    pub async fn write_usage(&self) -> FsResult<()> {
        let delta = std::mem::take(&mut *self.usage.unwritten.lock().unwrap());
        if delta.is_zero() {
            return Ok(());
        }
        // A plain update, not a transaction of one (whose idempotency token would keep
        // a retry from adding twice): transactions of every client on this one item
        // would cancel each other. An addition applied but answered with a timeout is
        // added again: drift that fsck mends.
        if let Err(e) = self.store.write(add_op(&delta)).await {
            self.usage.add(delta);
            return Err(e.into());
        }
        Ok(())
    }

    /// The usage totals as this client knows them: the record with what this client
    /// has not written yet (other clients' unwritten changes are not in it). None
    /// when the filesystem keeps no totals yet (made before they were kept).
    pub async fn usage(&self) -> FsResult<Option<Usage>> {
        Ok(self.with_unwritten(recorded(self.store.as_ref()).await?))
    }

    /// [`Fs::usage`], with the record read at most once per [`STATFS_TOTALS_TTL`].
    pub(super) async fn usage_for_statfs(&self) -> FsResult<Option<Usage>> {
        let last = *self.usage.read.lock().unwrap();
        let recorded = match last {
            Some((at, recorded)) if at.elapsed() < STATFS_TOTALS_TTL => recorded,
            _ => {
                let recorded = recorded(self.store.as_ref()).await?;
                *self.usage.read.lock().unwrap() = Some((Instant::now(), recorded));
                recorded
            }
        };
        Ok(self.with_unwritten(recorded))
    }

    fn with_unwritten(&self, recorded: Option<Usage>) -> Option<Usage> {
        recorded.map(|mut usage| {
            usage += self.usage.unwritten();
            usage
        })
    }

    /// Replace the usage record with `counted` (fsck's recount, with no client mounted).
    pub(super) async fn set_usage(&self, counted: &Usage) -> FsResult<()> {
        *self.usage.unwritten.lock().unwrap() = Usage::default();
        self.store
            .write(WriteOp::Put {
                key: keys::usage_key(),
                item: to_item(counted),
                cond: Condition::None,
            })
            .await?;
        Ok(())
    }
}
