//! Client sessions: every mount registers a record with a lease, renews it on a
//! heartbeat, and removes it (with its locks) on a clean unmount. A session whose
//! lease has run out is dead: any live client may release its locks and delete it,
//! each step a conditional write so that two cleaners never collide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Fs, FsError, FsResult};
use crate::keys::{self, SESSION_PARTITION};
use crate::records::{from_item, to_item, LockSet, Session, Timestamp};
use crate::store::{Condition, Table, Value, WriteOp, VERSION_ATTR};

/// Heartbeats a lease lasts.
pub(super) const LEASE_HEARTBEATS: u64 = 3;
/// Heartbeats an expired session's record is kept after its locks were released.
const RETAIN_HEARTBEATS: u64 = 60;
/// How long an unmount spends collecting garbage before it leaves the rest.
const UNMOUNT_COLLECTION: Duration = Duration::from_secs(5);
/// How long another session's liveness is trusted before it is read again.
const LIVENESS_TTL: Duration = Duration::from_secs(1);

/// This mount's own session.
pub(super) struct OwnSession {
    pub(super) id: String,
    heartbeat: Duration,
    /// The record as last written and its version; `None` once the session ended.
    record: tokio::sync::Mutex<Option<(Session, u64)>>,
    /// The heartbeat's tasks, once started.
    heartbeat_tasks: Mutex<Option<HeartbeatTasks>>,
}

/// The running heartbeat (see [`Fs::start_heartbeat`]) and how to stop it.
struct HeartbeatTasks {
    stop: tokio::sync::watch::Sender<bool>,
    /// The lease renewer and the collector.
    tasks: [tokio::task::JoinHandle<()>; 2],
}

/// Wait one `heartbeat`; false if told to stop meanwhile (or before).
async fn pause(heartbeat: Duration, stopped: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(heartbeat) => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
    !*stopped.borrow()
}

/// Liveness of other sessions, as last read.
#[derive(Default)]
pub(super) struct Liveness {
    seen: Mutex<HashMap<String, (bool, Instant)>>,
}

/// A session as `dynamofs status` reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionStatus {
    /// The stored record.
    #[serde(flatten)]
    pub session: Session,
    /// Whether its lease still holds.
    pub alive: bool,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a session record's lease still holds, allowing one heartbeat of grace for
/// clock differences and a slow renewal.
fn is_alive(session: &Session, now_ms: u64) -> bool {
    now_ms <= session.expires_ms.saturating_add(session.heartbeat_ms)
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn session_item(session: &Session, ver: u64) -> crate::store::Item {
    let mut item = to_item(session);
    item.insert(VERSION_ATTR.into(), Value::N(ver.to_string()));
    item
}

/// The version a record carries in [`VERSION_ATTR`] (0 if none).
pub(super) fn version_of(item: &crate::store::Item) -> u64 {
    match item.get(VERSION_ATTR) {
        Some(Value::N(n)) => n.parse().unwrap_or(0),
        _ => 0,
    }
}

impl Fs {
    /// Register this mount as a session with a lease of a few `heartbeat`s. Locks need one.
    pub async fn register_session(
        &self,
        mountpoint: &str,
        heartbeat: Duration,
    ) -> FsResult<String> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let heartbeat_ms = heartbeat.as_millis() as u64;
        let session = Session {
            id: id.clone(),
            host: host_name(),
            pid: std::process::id(),
            mountpoint: mountpoint.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started: Timestamp::now(),
            expires_ms: now_ms() + heartbeat_ms * LEASE_HEARTBEATS,
            heartbeat_ms,
            open: Vec::new(),
        };
        let put = WriteOp::Put {
            key: keys::session_key(&id),
            item: session_item(&session, 1),
            cond: Condition::Absent,
        };
        self.store.write(put).await?;
        let own = OwnSession {
            id: id.clone(),
            heartbeat,
            record: tokio::sync::Mutex::new(Some((session, 1))),
            heartbeat_tasks: Mutex::new(None),
        };
        if self.session.set(own).is_err() {
            return Err(FsError::Invalid);
        }
        tracing::info!(session = %id, "session registered");
        Ok(id)
    }

    /// This mount's session id, if it registered one.
    pub fn session_id(&self) -> Option<&str> {
        self.session.get().map(|s| s.id.as_str())
    }

    /// Renew the lease, listing the files this client holds open (see `gc.rs`). If a
    /// cleaner already took the session for dead (this client stalled past its lease),
    /// its locks are gone: say so and register it again.
    pub async fn renew_session(&self) -> FsResult<()> {
        let Some(own) = self.session.get() else {
            return Ok(());
        };
        let mut record = own.record.lock().await;
        // Ended (unmounted): a heartbeat still in flight must not bring it back.
        let Some((session, ver)) = record.as_mut() else {
            return Ok(());
        };
        session.expires_ms = now_ms() + own.heartbeat.as_millis() as u64 * LEASE_HEARTBEATS;
        session.open = self.files.open_inodes();
        let key = keys::session_key(&own.id);
        let renewed = self
            .store
            .write(WriteOp::Put {
                key: key.clone(),
                item: session_item(session, *ver + 1),
                cond: Condition::VersionIs(*ver),
            })
            .await;
        match renewed {
            Ok(()) => *ver += 1,
            Err(crate::store::StoreError::Conflict) => {
                tracing::error!(session = %own.id, "the session's lease ran out and another client cleaned it up: its locks were released");
                self.locks.forget_all();
                self.store
                    .write(WriteOp::Put {
                        key,
                        item: session_item(session, 1),
                        cond: Condition::None,
                    })
                    .await?;
                *ver = 1;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Start this session's two heartbeat tasks (nothing without a session): one renews
    /// the lease every heartbeat; the other, every heartbeat, cleans up after dead
    /// sessions, collects garbage and writes what this client moved the usage totals
    /// by. Apart, so that a long collection never delays a renewal, and never cut
    /// short: a commit cancelled in flight would lose its move of the totals. They run
    /// until [`Fs::end_client`] stops them between steps.
    pub fn start_heartbeat(self: &Arc<Self>) {
        let Some(own) = self.session.get() else {
            return;
        };
        let heartbeat = own.heartbeat;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let fs = self.clone();
        let mut until_stopped = stopped.clone();
        let renewer = tokio::spawn(async move {
            while pause(heartbeat, &mut until_stopped).await {
                if let Err(e) = fs.renew_session().await {
                    tracing::warn!(error = %e, "cannot renew the session lease");
                }
            }
        });
        let fs = self.clone();
        let mut until_stopped = stopped.clone();
        let collector = tokio::spawn(async move {
            while pause(heartbeat, &mut until_stopped).await {
                let go_on = || !*stopped.borrow();
                match fs.clean_up_while(&go_on).await {
                    Ok(collected) if collected.unfinished => {
                        tracing::debug!("garbage collection stopped by the unmount")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot clean up after dead sessions or collect garbage")
                    }
                }
                if let Err(e) = fs.write_usage().await {
                    tracing::warn!(error = %e, "cannot add this client's changes to the usage totals");
                }
            }
        });
        *own.heartbeat_tasks.lock().unwrap() = Some(HeartbeatTasks {
            stop,
            tasks: [renewer, collector],
        });
    }

    /// Stop the heartbeat tasks, letting each finish the step it is in.
    async fn stop_heartbeat(&self) {
        let Some(own) = self.session.get() else {
            return;
        };
        let Some(running) = own.heartbeat_tasks.lock().unwrap().take() else {
            return;
        };
        running.stop.send_replace(true);
        for task in running.tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a heartbeat task failed");
            }
        }
    }

    /// Every session record, with the version it was read at.
    async fn session_records(&self) -> FsResult<Vec<(Session, u64)>> {
        let items = self.query_all(Table::Meta, SESSION_PARTITION, None).await?;
        items
            .into_iter()
            .map(|(_, item)| {
                let ver = version_of(&item);
                Ok((from_item(item)?, ver))
            })
            .collect()
    }

    /// Where the clients whose lease holds have this filesystem mounted, as
    /// `host:mountpoint`.
    pub async fn live_mounts(&self) -> FsResult<Vec<String>> {
        Ok(self
            .sessions()
            .await?
            .into_iter()
            .filter(|s| s.alive)
            .map(|s| format!("{}:{}", s.session.host, s.session.mountpoint))
            .collect())
    }

    /// Every session record, with its liveness.
    pub async fn sessions(&self) -> FsResult<Vec<SessionStatus>> {
        let now = now_ms();
        let records = self.session_records().await?;
        Ok(records
            .into_iter()
            .map(|(session, _)| SessionStatus {
                alive: is_alive(&session, now),
                session,
            })
            .collect())
    }

    /// Whether session `id` holds a live lease (this mount's own always does).
    pub(super) async fn session_alive(&self, id: &str) -> FsResult<bool> {
        if self.session_id() == Some(id) {
            return Ok(true);
        }
        if let Some((alive, at)) = self.liveness.seen.lock().unwrap().get(id) {
            if at.elapsed() < LIVENESS_TTL {
                return Ok(*alive);
            }
        }
        let alive = match self.store.get(&keys::session_key(id)).await? {
            Some(item) => is_alive(&from_item::<Session>(item)?, now_ms()),
            None => false,
        };
        self.liveness
            .seen
            .lock()
            .unwrap()
            .insert(id.to_string(), (alive, Instant::now()));
        Ok(alive)
    }

    /// Release the locks of sessions whose lease ran out; delete their records once they
    /// have been expired for a while (until then `dynamofs status` shows them), or at
    /// once when not `retain`. Returns the live sessions, this one included.
    pub(super) async fn clean_dead_sessions(&self, retain: bool) -> FsResult<Vec<Session>> {
        let now = now_ms();
        let (live, dead): (Vec<_>, Vec<_>) = self
            .session_records()
            .await?
            .into_iter()
            .partition(|(s, _)| is_alive(s, now) || self.session_id() == Some(s.id.as_str()));
        let live = live.into_iter().map(|(s, _)| s).collect();
        if dead.is_empty() {
            return Ok(live);
        }
        let is_dead = |id: &str| dead.iter().any(|(s, _)| s.id == id);
        for (ino, set) in self.lock_sets().await? {
            if set.locks.iter().any(|l| is_dead(&l.session)) {
                tracing::info!(ino, "releasing the locks of a dead session");
                self.rewrite_locks(ino, |locks| locks.retain(|l| !is_dead(&l.session)))
                    .await?;
            }
        }
        for (session, ver) in &dead {
            if retain
                && now
                    <= session
                        .expires_ms
                        .saturating_add(session.heartbeat_ms * RETAIN_HEARTBEATS)
            {
                continue;
            }
            tracing::info!(session = %session.id, "deleting the record of a dead session");
            let delete = WriteOp::Delete {
                key: keys::session_key(&session.id),
                cond: Condition::VersionIs(*ver),
            };
            match self.store.write(delete).await {
                // It renewed after all, or another cleaner was first.
                Ok(()) | Err(crate::store::StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(live)
    }

    /// End this client's work, last thing before it goes (an unmount, the end of an
    /// import): commit the new files and attribute changes it still holds, end its
    /// session, add its last changes to the usage totals and make everything durable.
    /// Every step runs even if one before failed; the first failure is returned.
    pub async fn end_client(&self) -> FsResult<()> {
        self.stop_heartbeat().await;
        let settled = self.settle_all_creates().await;
        if let Err(e) = &settled {
            tracing::warn!(error = %e, "cannot commit the last new files");
        }
        self.write_all_held().await;
        let ended = self.unregister_session().await;
        if let Err(e) = &ended {
            tracing::warn!(error = %e, "cannot remove the session record");
        }
        let added = self.write_usage().await;
        if let Err(e) = &added {
            tracing::warn!(error = %e, "cannot add this client's last changes to the usage totals");
        }
        let synced = self.sync().await;
        if let Err(e) = &synced {
            tracing::warn!(error = %e, "cannot make the last writes durable");
        }
        settled.and(ended).and(added).and(synced)
    }

    /// End this mount's session: release its locks, delete its record, and collect the
    /// garbage no remaining client needs.
    pub async fn unregister_session(&self) -> FsResult<()> {
        let Some(own) = self.session.get() else {
            return Ok(());
        };
        let mut record = own.record.lock().await;
        if record.take().is_none() {
            return Ok(());
        }
        for (ino, set) in self.lock_sets().await? {
            if set.locks.iter().any(|l| l.session == own.id) {
                self.rewrite_locks(ino, |locks| locks.retain(|l| l.session != own.id))
                    .await?;
            }
        }
        self.store
            .write(WriteOp::Delete {
                key: keys::session_key(&own.id),
                cond: Condition::None,
            })
            .await?;
        tracing::info!(session = %own.id, "session ended");
        // The last client to leave deletes what nobody holds open any more, instead of
        // leaving it to the next mount.
        let until = Instant::now() + UNMOUNT_COLLECTION;
        match self.clean_up_while(&|| Instant::now() < until).await {
            Ok(collected) if collected.unfinished => {
                tracing::info!("garbage left for the next client (or fsck --repair)")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot collect garbage at unmount"),
        }
        Ok(())
    }
}

impl Liveness {
    /// Forget what was read, so the next check reads again.
    pub(super) fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Every lock set in the store, by inode.
pub(super) type LockSets = Vec<(u64, LockSet)>;
