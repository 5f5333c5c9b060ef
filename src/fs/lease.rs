//! Directory leases: the client that made a directory may, for a moment, answer
//! creates in it without a round trip, and commit each with the new file's first
//! flush (see `deferred.rs`); and answer the close of a small new file there at once,
//! committing the files closed in a moment together. `tar x` then waits for no
//! request per file, where an exclusive create and the flush at close would be two.
//!
//! Answering a create without asking DynamoDB is only right if no other client can
//! add that name meanwhile. So:
//! - **Birth leases only.** `mkdir` writes `lease_by` (its session) and `lease_until`
//!   into the new directory's inode. A lease is never taken later, so a directory seen
//!   unleased, or with its lease over, stays so for good.
//! - **The holder renews** with the directory update each of its commits there makes
//!   anyway, on the condition that the lease is still its own, unexpired and not
//!   recalled.
//! - **Everyone else respects it**: every other write that changes a directory's names
//!   (its atomic touch, the versioned write or delete of its inode) carries the
//!   condition "no lease, or mine, or over for longer than the clock skew", at no extra
//!   request. Such a write that fails reads the directory; if another client's lease
//!   holds, it sets `lease_recall` and waits, at most the lease and the skew, until the
//!   lease is released or runs out ([`Fs::wait_out_leases`]).
//! - **Recall**: the holder's renewal fails once `lease_recall` is set. If it has no
//!   closed new files there still to commit, it commits what it has pending with an
//!   ordinary touch, which releases the lease for good. If it has, it keeps the lease,
//!   unrenewed, while it commits them, and then releases it with a write of its own
//!   ([`DirLeases`], [`Fs::release_finished_leases`]).
//! - **Closes answered early**: a lookup by another client that finds no name in a
//!   directory that may be under a lease recalls the lease, and looks again until the
//!   name is there or the lease is given up or over ([`Fs::entry_past_lease`]). As
//!   the holder gives it up only once its closed files are committed, a file closed
//!   before the lookup is found: close-to-open holds across clients.
//!
//! Exclusivity never rests on the lease: the deferred create still puts its entry on
//! the condition that the name is absent. What a lease buys is that this condition
//! holds. If the holder cannot reach DynamoDB for longer than its lease, another client
//! may take the name first; the holder's flush then fails with EIO ([`FsError::NameLost`]),
//! or, for a file whose close was answered already, the file is lost (and logged).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::session::now_ms;
use super::tx::in_place_update;
use super::{Fs, FsResult};
use crate::keys;
use crate::records::{from_item, Entry, FileKind, Inode};
use crate::store::{Condition, Item, StoreError, Value, WriteOp};

#[cfg(doc)]
use super::FsError;

/// How long a lease runs past the holder's last commit in the directory.
pub(super) const LEASE_MS: u64 = 1000;
/// How far apart two clients' clocks may be: a lease counts as over for other clients
/// only this long after its end by their own clock.
pub(super) const CLOCK_SKEW_MS: u64 = 250;
/// Longest a create is answered but not committed.
pub(super) const DEFER_LIMIT: Duration = Duration::from_millis(200);
/// A create is deferred only while the lease has this long to run: the deferral, and
/// time for the commit that ends it.
const DEFER_MARGIN_MS: u64 = 400;
/// Longest a client waits for another client's lease to end before trying again.
const WAIT_LIMIT: Duration = Duration::from_millis(LEASE_MS + CLOCK_SKEW_MS + 500);
/// How often a waiting client looks whether a lease was released.
const POLL: Duration = Duration::from_millis(50);

/// The attribute names of a lease in a directory's inode record.
const BY: &str = "lease_by";
const UNTIL: &str = "lease_until";
const RECALL: &str = "lease_recall";

/// A lease this client holds.
#[derive(Clone, Copy)]
struct Held {
    /// Its end, in ms since the epoch.
    until: u64,
    /// Another client recalled it while this one had closed new files there still to
    /// commit: they are committed under it, unrenewed, and then it is released.
    finishing: bool,
}

/// The leases this client holds, by directory.
#[derive(Default)]
pub(super) struct DirLeases {
    held: Mutex<HashMap<u64, Held>>,
}

impl DirLeases {
    /// Note a lease on `dir` until `until`, granted or renewed.
    pub(super) fn hold(&self, dir: u64, until: u64) {
        let held = Held {
            until,
            finishing: false,
        };
        self.held.lock().unwrap().insert(dir, held);
    }

    /// This client's lease on `dir` at `now` (ms since the epoch), if it holds one.
    fn lease(&self, dir: u64, now: u64) -> Option<Held> {
        let mut held = self.held.lock().unwrap();
        match held.get(&dir) {
            Some(lease) if lease.until > now => Some(*lease),
            Some(_) => {
                held.remove(&dir);
                None
            }
            None => None,
        }
    }

    /// Whether this client holds `dir`'s lease at `now` (ms since the epoch).
    pub(super) fn holds(&self, dir: u64, now: u64) -> bool {
        self.lease(dir, now).is_some()
    }

    /// Whether a create in `dir` may be answered now and committed later.
    pub(super) fn can_defer(&self, dir: u64) -> bool {
        let now = now_ms();
        self.lease(dir, now.saturating_add(DEFER_MARGIN_MS))
            .is_some_and(|lease| !lease.finishing)
    }

    /// Give up this client's lease on `dir`: its next touch there releases it.
    pub(super) fn lose(&self, dir: u64) {
        self.held.lock().unwrap().remove(&dir);
    }

    /// `dir`'s lease was recalled: keep it, unrenewed, until the closed new files there
    /// are committed. False if it was recalled before (then it is to be given up).
    fn finish(&self, dir: u64) -> bool {
        match self.held.lock().unwrap().get_mut(&dir) {
            Some(lease) if !lease.finishing => {
                lease.finishing = true;
                true
            }
            _ => false,
        }
    }

    /// The directories whose recalled lease this client still holds.
    fn finishing(&self) -> Vec<u64> {
        let held = self.held.lock().unwrap();
        held.iter()
            .filter(|(_, lease)| lease.finishing)
            .map(|(dir, _)| *dir)
            .collect()
    }
}

/// How a write that changes a directory's names treats its lease.
#[derive(Clone, Debug)]
pub(super) enum LeaseUse {
    /// This client holds it: renew it, on the condition that it still does.
    Renew {
        /// This client's session.
        me: String,
        /// Now, in ms since the epoch.
        now: u64,
    },
    /// This client holds it, recalled: keep it unrenewed while committing the closed
    /// new files there.
    Finish {
        /// This client's session.
        me: String,
        /// Now, in ms since the epoch.
        now: u64,
        /// The lease's end.
        until: u64,
    },
    /// Respect another client's lease (and release this client's own).
    Respect {
        /// This client's session.
        me: String,
        /// Now, in ms since the epoch.
        now: u64,
    },
}

impl LeaseUse {
    /// How this client's write at `now` treats `dir`'s lease.
    pub(super) fn of(leases: &DirLeases, dir: u64, me: Option<&str>, now: u64) -> LeaseUse {
        let me = me.unwrap_or_default().to_string();
        match leases.lease(dir, now) {
            Some(Held {
                until,
                finishing: true,
            }) => LeaseUse::Finish { me, now, until },
            Some(_) => LeaseUse::Renew { me, now },
            None => LeaseUse::Respect { me, now },
        }
    }

    /// The condition the write carries.
    pub(super) fn condition(&self) -> Condition {
        match self {
            LeaseUse::Renew { me, now } => Condition::All(vec![
                Condition::StringIs(BY, me.clone()),
                Condition::NumberAbove(UNTIL, *now),
                Condition::Lacks(RECALL),
            ]),
            LeaseUse::Finish { me, now, .. } => Condition::All(vec![
                Condition::StringIs(BY, me.clone()),
                Condition::NumberAbove(UNTIL, *now),
            ]),
            LeaseUse::Respect { me, now } => Condition::All(vec![
                Condition::Present,
                Condition::Any(vec![
                    Condition::Lacks(UNTIL),
                    Condition::NumberBelow(UNTIL, now.saturating_sub(CLOCK_SKEW_MS)),
                    Condition::StringIs(BY, me.clone()),
                ]),
            ]),
        }
    }

    /// The lease attribute an atomic touch sets: a renewal moves the end, finishing
    /// keeps it, anything else ends it (a lease by another client that still held
    /// failed the condition).
    pub(super) fn set(&self, set: &mut Item) {
        set.insert(UNTIL.into(), Value::N(self.until().to_string()));
    }

    /// Where the lease ends after the write: 0 if released.
    pub(super) fn until(&self) -> u64 {
        match self {
            LeaseUse::Renew { now, .. } => now + LEASE_MS,
            LeaseUse::Finish { until, .. } => *until,
            LeaseUse::Respect { .. } => 0,
        }
    }
}

/// Whether `dir`, as this client last read it, may be under the lease of a session
/// other than `me`. A lease seen over when read is forgotten (see
/// [`Fs::without_ended_lease`]), so a copy that names one was read while it held:
/// renewals since may have moved its end.
fn may_be_foreign_lease(dir: &Inode, me: &str) -> bool {
    dir.lease_until != 0 && dir.lease_by != me
}

/// A new directory's birth lease for session `me`, made at `now`.
pub(super) fn grant(dir: &mut Inode, me: &str, now: u64) {
    dir.lease_by = me.to_string();
    dir.lease_until = now + LEASE_MS;
}

/// Whether `dir` may hold a lease of a session other than `me`, by this client's clock:
/// then the end of that lease.
fn foreign_lease(dir: &Inode, me: &str, now: u64) -> Option<u64> {
    (dir.lease_until != 0 && dir.lease_by != me && dir.lease_until + CLOCK_SKEW_MS >= now)
        .then_some(dir.lease_until)
}

impl Fs {
    /// Whether a change of `dir`'s names may leave the directory out of its transaction
    /// (other clients collide there, see `create.rs`): not where a lease may hold,
    /// which such a change would not respect.
    pub(super) fn may_detach(&self, dir: &Inode) -> bool {
        self.cache.is_contended(dir.ino)
            && !self.leases.holds(dir.ino, now_ms())
            && foreign_lease(dir, self.session_id().unwrap_or_default(), now_ms()).is_none()
    }

    /// Give up the recalled leases whose closed new files are all committed (see
    /// [`DirLeases`]): the waiting client then knows it sees them.
    pub(super) async fn release_finished_leases(&self) -> FsResult<()> {
        let me = self.session_id().unwrap_or_default().to_string();
        for dir in self.leases.finishing() {
            if self.new_files.has_closed_unborn_in(dir) {
                continue;
            }
            self.leases.lose(dir);
            let mut set = Item::default();
            set.insert(UNTIL.into(), Value::N("0".into()));
            let mut release = in_place_update(dir, set, Vec::new());
            if let WriteOp::Update { cond, .. } = &mut release {
                *cond = Condition::StringIs(BY, me.clone());
            }
            match self.store.write(release).await {
                Ok(()) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `inode` as it is to be cached, if that differs: a directory read with another
    /// client's lease over by this client's clock keeps it over for good (it is never
    /// renewed once over, and never granted again), so the copy forgets it.
    pub(super) fn without_ended_lease(&self, inode: &Inode) -> Option<Inode> {
        let me = self.session_id().unwrap_or_default();
        let ended = inode.kind == FileKind::Dir
            && may_be_foreign_lease(inode, me)
            && foreign_lease(inode, me, now_ms()).is_none();
        ended.then(|| Inode {
            lease_until: 0,
            ..inode.clone()
        })
    }

    /// A lookup found no `name` in `dir`: if another client's lease may hold there, that
    /// client may have answered the close of a new file by that name and not committed
    /// it yet. Recall the lease, wait for it, and look again.
    pub(super) async fn entry_past_lease(&self, dir: u64, name: &[u8]) -> FsResult<Option<Entry>> {
        let me = self.session_id().unwrap_or_default();
        if self
            .cache
            .inode_any_age(dir)
            .is_none_or(|d| !may_be_foreign_lease(&d, me))
        {
            return Ok(None);
        }
        let started = Instant::now();
        loop {
            // The lease first: once it is seen given up, the files closed under it are
            // in the store (the holder commits them with the release).
            let held = self.recall_lease(dir, me).await?;
            let entry = self.load_entry(dir, name, true).await?;
            if entry.is_some() || held.is_none() || started.elapsed() >= WAIT_LIMIT {
                return Ok(entry);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Read `dir`; if another client's lease may hold there, recall it (once): then
    /// the end of that lease.
    async fn recall_lease(&self, dir: u64, me: &str) -> FsResult<Option<u64>> {
        let Some(item) = self.store.get(&keys::inode_key(dir)).await? else {
            return Ok(None);
        };
        let inode: Inode = from_item(item)?;
        self.cache_inode(&inode);
        let Some(until) = foreign_lease(&inode, me, now_ms()) else {
            return Ok(None);
        };
        if !inode.lease_recall {
            tracing::debug!(dir, holder = %inode.lease_by, "recalling a directory lease");
            let mut set = Item::default();
            set.insert(RECALL.into(), Value::Bool(true));
            match self
                .store
                .write(in_place_update(dir, set, Vec::new()))
                .await
            {
                Ok(()) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(until))
    }

    /// A write that changes the names of `dirs` failed its condition: give up this
    /// client's leases there (trying again releases them, which a recall asks for) and
    /// wait out other clients' leases.
    pub(super) async fn after_lease_conflict(&self, dirs: &[u64]) -> FsResult<()> {
        let now = now_ms();
        let others: Vec<u64> = dirs
            .iter()
            .copied()
            .filter(|dir| {
                let mine = self.leases.holds(*dir, now);
                if mine && !(self.new_files.has_closed_unborn_in(*dir) && self.leases.finish(*dir))
                {
                    self.leases.lose(*dir);
                }
                !mine
            })
            .collect();
        self.wait_out_leases(&others).await
    }

    /// After a write to `dirs` failed its condition: wait out the leases other clients
    /// hold on them, recalling each, so that the write can be tried again. A directory
    /// this client last saw unleased is not read again: its lease cannot come back.
    pub(super) async fn wait_out_leases(&self, dirs: &[u64]) -> FsResult<()> {
        let me = self.session_id().unwrap_or_default().to_string();
        for &dir in dirs {
            let cached = self.cache.inode_any_age(dir);
            if cached.is_some_and(|d| !may_be_foreign_lease(&d, &me)) {
                continue;
            }
            let started = Instant::now();
            while started.elapsed() < WAIT_LIMIT {
                let Some(until) = self.recall_lease(dir, &me).await? else {
                    break;
                };
                let left = (until + CLOCK_SKEW_MS).saturating_sub(now_ms());
                tokio::time::sleep(POLL.min(Duration::from_millis(left.max(1)))).await;
            }
        }
        Ok(())
    }
}
