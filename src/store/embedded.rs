//! The embedded backend: both tables in one local SQLite file, no server.
//!
//! Why SQLite (through rusqlite, built in): several processes must share one file —
//! two mounts of it behave as two clients of one DynamoDB table, and `dynamofs status`
//! and `fsck` read a mounted file — and SQLite's write-ahead log is made for exactly
//! that: readers never wait for the writer, writers of all processes take turns on
//! one lock, and a process killed at any moment leaves the last commit intact. redb,
//! which this store used before (2.x), locks its file for one process. redb 4.5's
//! `MultiWriter` mode shares it, but refuses non-durable commits there, so every
//! commit waits for the disk. Measured side by side on the 2-core test machine (file
//! on its disk, the machine busy with a test run): redb 4.5 `MultiWriter` 1,537 small
//! commits/s and 112 MiB/s of 256 KiB puts; SQLite (WAL, `synchronous=NORMAL`, 16 KiB
//! pages) 12,318 commits/s and 206 MiB/s. 4 KiB pages gave more small commits but
//! fewer MiB/s, 64 KiB pages fewer of both.
//!
//! - Every write runs in one `BEGIN IMMEDIATE` transaction, which holds the file's
//!   write lock across processes, so conditions are checked against exactly the state
//!   they change.
//! - Commits are not flushed to the disk one by one (`synchronous=NORMAL`): a killed
//!   process loses nothing committed, and only a power cut can lose the last commits,
//!   never consistency. [`Store::sync`] (what `fsync` calls) flushes the log, which
//!   makes every commit before it durable. Committed pages are copied from the log
//!   into the file (a checkpoint) by a thread of their own, not by the writers.
//! - Space of deleted and overwritten data goes to SQLite's free list and is reused for
//!   new data; when more than a quarter of the file is free (looked at every few
//!   hundred commits and at every sync), all but 16 MiB of it is given back to the
//!   operating system (`auto_vacuum=INCREMENTAL`).
//! - A block's bytes (attribute `d`) are kept raw in their own column, the other
//!   attributes as JSON.
//! - A file made by dynamofs 0.1 (redb) is converted on first open; the original is
//!   kept beside it as `PATH.redb-backup`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{
    Condition, Item, Key, Page, SortKey, Store, StoreError, StoreSpace, Table, Value, WriteOp,
    VERSION_ATTR,
};

/// `PRAGMA application_id` of a dynamofs store file ("dyfs").
const APPLICATION_ID: i64 = 0x6479_6673;
/// The layout version of the file, in `PRAGMA user_version`.
const LAYOUT_VERSION: i64 = 1;
/// Large enough that a 256 KiB block spans few overflow pages, small enough that a
/// metadata commit writes little to the log.
const PAGE_SIZE: i64 = 16 * 1024;
/// Bytes of write-ahead log kept after a checkpoint emptied it.
const LOG_LIMIT_BYTES: i64 = 16 << 20;
/// How often the checkpoint thread looks for new commits in the log.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Pages of log (256 MiB) past which a writer checkpoints by itself.
const CHECKPOINT_BACKSTOP_PAGES: i64 = 16 * 1024;
/// How much of the file each connection maps into memory to read it.
const MMAP_BYTES: i64 = 1 << 30;
/// The attribute whose bytes are kept in their own column.
const DATA_ATTR: &str = "d";
/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Commits between two looks at how much of the file is free (a sync looks too).
const VACUUM_CHECK_EVERY: u64 = 256;
/// Free pages kept for reuse rather than given back (16 MiB).
const FREE_PAGES_KEPT: i64 = 1024;

/// A [`Store`] kept in one local file, shared by every process that opens it.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    requests: AtomicU64,
}

struct Inner {
    path: PathBuf,
    /// This process's writing connection (one writer at a time per file anyway).
    writer: Mutex<Connection>,
    /// Idle reading connections; a read takes one or opens another.
    readers: Mutex<Vec<Connection>>,
    commits: AtomicU64,
    /// Held around this process's checkpoints: two at once would fail one of them.
    checkpointing: Mutex<()>,
}

impl EmbeddedStore {
    /// Open (creating if needed) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // A typo in the path must not format a new filesystem somewhere unexpected.
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            return Err(StoreError::fatal(format!(
                "cannot open {}: the directory {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        if is_redb_file(path)? {
            migrate_redb(path)?;
        }
        let writer = connect(path)?;
        init_layout(&writer, path)?;
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
            checkpointing: Mutex::new(()),
        });
        spawn_checkpointer(&inner)?;
        Ok(EmbeddedStore {
            inner,
            requests: AtomicU64::new(0),
        })
    }

    /// Store calls served so far (a batch get or a transaction counts once), for
    /// benchmarks that compare it with DynamoDB's request counts.
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Run `f` off the async threads: SQLite calls block, on the disk and on other
    /// processes' transactions.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(backend)?
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::fatal(format!("embedded store: {e}"))
}

/// SQLite errors: a lock held past the busy timeout may clear, anything else is fatal.
fn sqlite(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Backend {
                message: format!("embedded store busy: {e}"),
                transient: true,
            }
        }
        _ => backend(e),
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        StoreError::fatal(format!(
            "cannot open {} as a dynamofs store: {e}",
            path.display()
        ))
    })?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    // The log is cut back to this after the checkpoints that empty it.
    conn.pragma_update(None, "journal_size_limit", LOG_LIMIT_BYTES)
        .map_err(sqlite)?;
    // Checkpoints run on their own thread (see `spawn_checkpointer`).
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_BACKSTOP_PAGES)
        .map_err(sqlite)?;
    // Reads straight from the mapped file instead of copies of its pages.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)
        .map_err(sqlite)?;
    // The first statement that reads the file: where a file of another kind shows.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => not_a_store(path, &e),
            _ => sqlite(e),
        })?;
    Ok(conn)
}

fn not_a_store(path: &Path, why: &dyn std::fmt::Display) -> StoreError {
    StoreError::fatal(format!(
        "{} is not a dynamofs store ({why}): give local: the path of a dynamofs store or of a new file",
        path.display()
    ))
}

/// Create the table in a new file, or check that an existing file is a dynamofs store
/// of a layout this build reads.
fn init_layout(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| not_a_store(path, &e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite)?;
    if id == APPLICATION_ID {
        if version > LAYOUT_VERSION {
            return Err(StoreError::fatal(format!(
                "{} was written by a newer dynamofs (layout {version}, this build reads up to {LAYOUT_VERSION}): \
                 open it with that release",
                path.display()
            )));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        return Ok(());
    }
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(sqlite)?;
    if id != 0 || tables != 0 {
        return Err(not_a_store(path, &"another application's SQLite database"));
    }
    // Both settings only take effect before the first table is created.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(sqlite)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(sqlite)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite)?;
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS items (
             tbl INTEGER NOT NULL, pk TEXT NOT NULL, sk BLOB NOT NULL,
             attrs BLOB NOT NULL, data BLOB,
             PRIMARY KEY (tbl, pk, sk));
         PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {LAYOUT_VERSION};
         COMMIT;"
    ))
    .map_err(sqlite)
}

fn table_id(table: Table) -> i64 {
    match table {
        Table::Meta => 0,
        Table::Blocks => 1,
    }
}

fn encode_sort_key(sk: &SortKey) -> Vec<u8> {
    match sk {
        SortKey::S(s) => s.as_bytes().to_vec(),
        SortKey::N(n) => n.to_be_bytes().to_vec(),
    }
}

fn decode_sort_key(table: Table, raw: Vec<u8>) -> Result<SortKey, StoreError> {
    match table {
        Table::Meta => String::from_utf8(raw).map(SortKey::S).map_err(backend),
        Table::Blocks => <[u8; 8]>::try_from(raw.as_slice())
            .map(|b| SortKey::N(u64::from_be_bytes(b)))
            .map_err(backend),
    }
}

/// An item as stored: its attributes (with the key's, which win) as JSON, and the bytes
/// of `d`, borrowed rather than copied (a block's are most of the item).
fn encode_item<'a>(key: &Key, item: &'a Item) -> Result<(Vec<u8>, Option<&'a [u8]>), StoreError> {
    let data = match item.get(DATA_ATTR) {
        Some(Value::B(bytes)) => Some(bytes.as_slice()),
        _ => None,
    };
    let mut stored: Item = item
        .iter()
        .filter(|(name, _)| data.is_none() || name.as_str() != DATA_ATTR)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<std::collections::HashMap<_, _>>()
        .into();
    stored.extend(key.attributes().into_inner());
    Ok((serde_json::to_vec(&stored).map_err(backend)?, data))
}

fn decode_item(attrs: &[u8], data: Option<Vec<u8>>) -> Result<Item, StoreError> {
    let mut item: Item = serde_json::from_slice(attrs).map_err(backend)?;
    if let Some(bytes) = data {
        item.insert(DATA_ATTR.to_string(), Value::B(bytes));
    }
    Ok(item)
}

fn read_item(conn: &Connection, key: &Key) -> Result<Option<Item>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT attrs, data FROM items WHERE tbl = ?1 AND pk = ?2 AND sk = ?3")
        .map_err(sqlite)?;
    let row = stmt
        .query_row(
            params![
                table_id(key.table),
                key.pk.as_str(),
                encode_sort_key(&key.sk)
            ],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?)),
        )
        .optional()
        .map_err(sqlite)?;
    row.map(|(attrs, data)| decode_item(&attrs, data))
        .transpose()
}

fn put_item(conn: &Connection, key: &Key, item: &Item) -> Result<(), StoreError> {
    let (attrs, data) = encode_item(key, item)?;
    conn.prepare_cached(
        "INSERT INTO items (tbl, pk, sk, attrs, data) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tbl, pk, sk) DO UPDATE SET attrs = excluded.attrs, data = excluded.data",
    )
    .map_err(sqlite)?
    .execute(params![
        table_id(key.table),
        key.pk.as_str(),
        encode_sort_key(&key.sk),
        attrs,
        data
    ])
    .map_err(sqlite)?;
    Ok(())
}

fn number_of(item: &Item, attr: &str) -> Option<u64> {
    match item.get(attr) {
        Some(Value::N(n)) => n.parse().ok(),
        _ => None,
    }
}

fn holds(cond: &Condition, current: Option<&Item>) -> bool {
    match cond {
        Condition::None => true,
        Condition::Absent => current.is_none(),
        Condition::Present => current.is_some(),
        Condition::VersionIs(v) => current.and_then(|i| number_of(i, VERSION_ATTR)) == Some(*v),
        Condition::NumberIs(attr, v) => current.and_then(|i| number_of(i, attr)) == Some(*v),
        Condition::NumberBelow(attr, v) => current
            .and_then(|i| number_of(i, attr))
            .is_some_and(|n| n < *v),
        Condition::NumberAbove(attr, v) => current
            .and_then(|i| number_of(i, attr))
            .is_some_and(|n| n > *v),
        Condition::StringIs(attr, v) => {
            matches!(current.and_then(|i| i.get(*attr)), Some(Value::S(s)) if s == v)
        }
        Condition::Lacks(attr) => current.is_none_or(|i| !i.contains_key(*attr)),
        Condition::All(all) => all.iter().all(|c| holds(c, current)),
        Condition::Any(any) => any.iter().any(|c| holds(c, current)),
    }
}

/// Apply one write inside an open write transaction, if its condition holds.
fn apply(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    let key = op.key();
    let (WriteOp::Put { cond, .. }
    | WriteOp::Update { cond, .. }
    | WriteOp::Delete { cond, .. }
    | WriteOp::Check { cond, .. }) = op;
    let needs_current = !matches!(cond, Condition::None) || matches!(op, WriteOp::Update { .. });
    let current = match needs_current {
        true => read_item(conn, key)?,
        false => None,
    };
    if !holds(cond, current.as_ref()) {
        return Err(StoreError::Conflict);
    }
    match op {
        WriteOp::Put { item, .. } => put_item(conn, key, item)?,
        WriteOp::Update { set, add, .. } => {
            let mut item = current.unwrap_or_default();
            item.extend(set.clone().into_inner());
            for (attr, delta) in add {
                let now = match item.get(attr) {
                    Some(Value::N(n)) => n.parse::<i64>().map_err(backend)?,
                    _ => 0,
                };
                item.insert(attr.clone(), Value::N((now + delta).to_string()));
            }
            put_item(conn, key, &item)?;
        }
        WriteOp::Delete { .. } => {
            conn.prepare_cached("DELETE FROM items WHERE tbl = ?1 AND pk = ?2 AND sk = ?3")
                .map_err(sqlite)?
                .execute(params![
                    table_id(key.table),
                    key.pk.as_str(),
                    encode_sort_key(&key.sk)
                ])
                .map_err(sqlite)?;
        }
        WriteOp::Check { .. } => {}
    }
    Ok(())
}

impl Inner {
    /// The write-ahead log beside the file.
    fn log_path(&self) -> PathBuf {
        let mut log = self.path.clone().into_os_string();
        log.push("-wal");
        PathBuf::from(log)
    }

    /// Run `f` in one write transaction: all of its writes or, if it fails, none.
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().unwrap();
        let txn = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        // Dropping an uncommitted transaction rolls it back.
        let out = f(&txn)?;
        txn.commit().map_err(sqlite)?;
        if self.commits.fetch_add(1, Ordering::Relaxed) % VACUUM_CHECK_EVERY == 0 {
            give_back_free_space(&conn)?;
        }
        Ok(out)
    }

    /// Run `f` in one read transaction (one consistent state), on an idle connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.readers.lock().unwrap().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        let out = {
            let txn = conn.transaction().map_err(sqlite)?;
            let out = f(&txn)?;
            txn.finish().map_err(sqlite)?;
            out
        };
        self.readers.lock().unwrap().push(conn);
        Ok(out)
    }
}

/// Copy committed pages from the log into the file on a thread of its own, so that
/// writers do not stop for it (they do only past [`CHECKPOINT_BACKSTOP_PAGES`], if
/// this falls behind); once writes pause, empty the log and cut it to nothing. It
/// ends when the store is dropped.
fn spawn_checkpointer(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let conn = connect(&inner.path)?;
    // Never hold writers up for long waiting for a reader: try again later instead.
    conn.busy_timeout(CHECKPOINT_EVERY).map_err(sqlite)?;
    let store = Arc::downgrade(inner);
    let checkpoint = move |mode: &str| {
        let sql = format!("PRAGMA wal_checkpoint({mode})");
        if let Err(e) = conn.query_row(&sql, [], |_| Ok(())) {
            tracing::debug!(error = %e, mode, "checkpoint of the local store's log");
        }
    };
    std::thread::Builder::new()
        .name("dynamofs-checkpoint".into())
        .spawn(move || {
            let (mut seen, mut emptied) = (0, true);
            while let Some(inner) = store.upgrade() {
                let commits = inner.commits.load(Ordering::Relaxed);
                {
                    let _alone = inner.checkpointing.lock().unwrap();
                    if commits != seen {
                        // PASSIVE copies what no reader still needs and never waits.
                        checkpoint("PASSIVE");
                        (seen, emptied) = (commits, false);
                    } else if !emptied {
                        checkpoint("TRUNCATE");
                        emptied = true;
                    }
                }
                drop(inner);
                std::thread::sleep(CHECKPOINT_EVERY);
            }
        })
        .map_err(backend)?;
    Ok(())
}

/// When more than a quarter of the file is free pages, return all but a few of them
/// to the operating system (free pages are reused for new data meanwhile).
fn give_back_free_space(conn: &Connection) -> Result<(), StoreError> {
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(sqlite)?;
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .map_err(sqlite)?;
    if free > FREE_PAGES_KEPT && free * 4 > pages {
        // Each step of this statement frees one page: run it to the end.
        let mut vacuum = conn
            .prepare(&format!(
                "PRAGMA incremental_vacuum({})",
                free - FREE_PAGES_KEPT
            ))
            .map_err(sqlite)?;
        let mut steps = vacuum.raw_query();
        while steps.next().map_err(sqlite)?.is_some() {}
    }
    Ok(())
}

/// Items of one partition after `after`, ascending, at most `limit` (and whether more follow).
fn query_page(
    conn: &Connection,
    table: Table,
    pk: &str,
    after: Option<&SortKey>,
    limit: usize,
) -> Result<Page, StoreError> {
    let sql = match after {
        Some(_) => "SELECT sk, attrs, data FROM items WHERE tbl = ?1 AND pk = ?2 AND sk > ?3 ORDER BY sk LIMIT ?4",
        None => "SELECT sk, attrs, data FROM items WHERE tbl = ?1 AND pk = ?2 AND sk >= ?3 ORDER BY sk LIMIT ?4",
    };
    let mut stmt = conn.prepare_cached(sql).map_err(sqlite)?;
    let from = after.map(encode_sort_key).unwrap_or_default();
    let rows = stmt
        .query_map(params![table_id(table), pk, from, limit as i64 + 1], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        })
        .map_err(sqlite)?;
    let mut page = Page::default();
    for row in rows {
        let (sk, attrs, data) = row.map_err(sqlite)?;
        if page.items.len() == limit {
            page.more = true;
            break;
        }
        page.items
            .push((decode_sort_key(table, sk)?, decode_item(&attrs, data)?));
    }
    Ok(page)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        Ok(self
            .batch_get(std::slice::from_ref(key))
            .await?
            .pop()
            .flatten())
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            inner.read(|conn| keys.iter().map(|key| read_item(conn, key)).collect())
        })
        .await
    }

    async fn query(
        &self,
        table: Table,
        pk: &str,
        after: Option<&SortKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let (pk, after) = (pk.to_string(), after.cloned());
        self.blocking(move |inner| {
            inner.read(|conn| query_page(conn, table, &pk, after.as_ref(), limit))
        })
        .await
    }

    async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        super::check_write(&op)?;
        self.blocking(move |inner| inner.write(|conn| apply(conn, &op)))
            .await
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        super::check_transaction(&ops)?;
        self.blocking(move |inner| {
            inner.write(|conn| ops.iter().try_for_each(|op| apply(conn, op)))
        })
        .await
    }

    async fn scan_keys(
        &self,
        table: Table,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<Key>, bool), StoreError> {
        let after = after.map(|k| (k.pk.clone(), encode_sort_key(&k.sk)));
        self.blocking(move |inner| {
            inner.read(|conn| {
                let (pk, sk) = after.unwrap_or_default();
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT pk, sk FROM items WHERE tbl = ?1 AND (pk, sk) > (?2, ?3)
                         ORDER BY pk, sk LIMIT ?4",
                    )
                    .map_err(sqlite)?;
                let rows = stmt
                    .query_map(params![table_id(table), pk, sk, limit as i64 + 1], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .map_err(sqlite)?;
                let mut keys = Vec::new();
                for row in rows {
                    let (pk, sk) = row.map_err(sqlite)?;
                    if keys.len() == limit {
                        return Ok((keys, true));
                    }
                    keys.push(Key {
                        table,
                        pk,
                        sk: decode_sort_key(table, sk)?,
                    });
                }
                Ok((keys, false))
            })
        })
        .await
    }

    async fn add(&self, key: &Key, attr: &str, delta: u64) -> Result<u64, StoreError> {
        let (key, attr) = (key.clone(), attr.to_string());
        self.blocking(move |inner| {
            inner.write(|conn| {
                let update = WriteOp::Update {
                    key: key.clone(),
                    set: Item::default(),
                    add: vec![(attr.clone(), delta as i64)],
                    cond: Condition::None,
                };
                apply(conn, &update)?;
                read_item(conn, &key)?
                    .as_ref()
                    .and_then(|item| number_of(item, &attr))
                    .ok_or_else(|| backend("counter vanished"))
            })
        })
        .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.blocking(|inner| {
            let writer = inner.writer.lock().unwrap();
            give_back_free_space(&writer)?;
            let log = inner.log_path();
            let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            if log_bytes > LOG_LIMIT_BYTES as u64 {
                // Copy a long log into the file and empty it (the checkpoint flushes
                // both): the last mount to leave must not leave it behind.
                let _alone = inner.checkpointing.lock().unwrap();
                writer
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .map_err(sqlite)?;
            }
            // Every commit not yet copied into the file is in the log.
            let file = match std::fs::File::open(&log) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::File::open(&inner.path).map_err(backend)?
                }
                Err(e) => return Err(backend(e)),
            };
            file.sync_data().map_err(backend)
        })
        .await
    }

    fn space(&self) -> Result<Option<StoreSpace>, StoreError> {
        self.inner.read(|conn| {
            let number = |pragma: &str| -> Result<u64, StoreError> {
                conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(sqlite)
            };
            let page = number("page_size")?;
            let pages = number("page_count")?;
            let free = number("freelist_count")?;
            let log_bytes = std::fs::metadata(self.inner.log_path())
                .map(|m| m.len())
                .unwrap_or(0);
            Ok(Some(StoreSpace {
                file_bytes: pages * page + log_bytes,
                used_bytes: (pages - free) * page,
                available_bytes: available_space(&self.inner.path),
            }))
        })
    }
}

/// Bytes free for an unprivileged user on the filesystem that holds `path`.
fn available_space(path: &Path) -> u64 {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let Ok(c_dir) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs fills the struct it is given; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_dir.as_ptr(), &mut st) != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

/// Whether `path` is a store file of dynamofs 0.1, which kept its items in redb.
fn is_redb_file(path: &Path) -> Result<bool, StoreError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    match std::fs::File::open(path) {
        Ok(mut file) => Ok(file.read_exact(&mut magic).is_ok() && &magic == b"redb"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::fatal(format!(
            "cannot open {}: {e}",
            path.display()
        ))),
    }
}

/// Convert a dynamofs 0.1 (redb) store file in place, keeping the original as
/// `PATH.redb-backup`.
fn migrate_redb(path: &Path) -> Result<(), StoreError> {
    use redb::{ReadableTable, TableDefinition};
    const ITEMS: TableDefinition<(u8, &str, &[u8]), &[u8]> = TableDefinition::new("items");
    let with_suffix = |suffix: &str| {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    let (converting, backup) = (with_suffix(".converting"), with_suffix(".redb-backup"));
    tracing::info!(path = %path.display(), "converting a dynamofs 0.1 store file (redb) to this version's layout");
    let failed = |e: &dyn std::fmt::Display| {
        StoreError::fatal(format!(
            "cannot convert {} from dynamofs 0.1's layout: {e} (the file is unchanged)",
            path.display()
        ))
    };
    let old = redb::Database::open(path).map_err(|e| failed(&e))?;
    let _ = std::fs::remove_file(&converting);
    let new = connect(&converting)?;
    init_layout(&new, &converting)?;
    let txn = old.begin_read().map_err(|e| failed(&e))?;
    let items = txn.open_table(ITEMS).map_err(|e| failed(&e))?;
    new.execute_batch("BEGIN").map_err(sqlite)?;
    for entry in items.iter().map_err(|e| failed(&e))? {
        let (k, v) = entry.map_err(|e| failed(&e))?;
        let (tbl, pk, sk) = k.value();
        let table = if tbl == 0 { Table::Meta } else { Table::Blocks };
        let key = Key {
            table,
            pk: pk.to_string(),
            sk: decode_sort_key(table, sk.to_vec())?,
        };
        let item: Item = serde_json::from_slice(v.value()).map_err(|e| failed(&e))?;
        put_item(&new, &key, &item)?;
    }
    new.execute_batch("COMMIT").map_err(sqlite)?;
    new.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sqlite)?;
    drop(new);
    drop(items);
    drop(txn);
    drop(old);
    std::fs::rename(path, &backup).map_err(|e| failed(&e))?;
    std::fs::rename(&converting, path).map_err(|e| failed(&e))?;
    for log in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(&format!(".converting{log}")));
    }
    tracing::info!(backup = %backup.display(), "converted; the original file is kept");
    Ok(())
}
