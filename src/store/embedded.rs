//! The embedded backend: both tables in one local file (redb), no server.
//!
//! Every write runs in one redb write transaction, which serializes all writers of
//! the file, so conditions are checked against exactly the state they change.
//! Only one process may open the file at a time (redb locks it).

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    Condition, Item, Key, Page, SortKey, Store, StoreError, Table, Value, WriteOp, VERSION_ATTR,
};

/// (table, hash key, encoded range key) -> JSON of the item.
const ITEMS: TableDefinition<(u8, &str, &[u8]), &[u8]> = TableDefinition::new("items");

/// A [`Store`] kept in one local file.
pub struct EmbeddedStore {
    db: Database,
    requests: AtomicU64,
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
        let db = Database::create(path).map_err(|e| {
            StoreError::fatal(format!(
                "cannot open {} as a dynamofs store: {e}",
                path.display()
            ))
        })?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(ITEMS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore {
            db,
            requests: AtomicU64::new(0),
        })
    }

    /// Store calls served so far (a batch get or a transaction counts once), for
    /// benchmarks that compare it with DynamoDB's request counts.
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::fatal(format!("embedded store: {e}"))
}

fn table_id(table: Table) -> u8 {
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

fn decode_sort_key(table: Table, raw: &[u8]) -> Result<SortKey, StoreError> {
    match table {
        Table::Meta => String::from_utf8(raw.to_vec())
            .map(SortKey::S)
            .map_err(backend),
        Table::Blocks => raw
            .try_into()
            .map(|b| SortKey::N(u64::from_be_bytes(b)))
            .map_err(backend),
    }
}

fn decode_item(raw: &[u8]) -> Result<Item, StoreError> {
    serde_json::from_slice(raw).map_err(backend)
}

fn read_item(txn: &WriteTransaction, key: &Key) -> Result<Option<Item>, StoreError> {
    let table = txn.open_table(ITEMS).map_err(backend)?;
    let sk = encode_sort_key(&key.sk);
    let found = table
        .get((table_id(key.table), key.pk.as_str(), sk.as_slice()))
        .map_err(backend)?;
    found.map(|v| decode_item(v.value())).transpose()
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
    }
}

fn apply(txn: &WriteTransaction, op: &WriteOp) -> Result<(), StoreError> {
    let key = op.key();
    let (WriteOp::Put { cond, .. }
    | WriteOp::Update { cond, .. }
    | WriteOp::Delete { cond, .. }
    | WriteOp::Check { cond, .. }) = op;
    let current = read_item(txn, key)?;
    if !holds(cond, current.as_ref()) {
        return Err(StoreError::Conflict);
    }
    let mut table = txn.open_table(ITEMS).map_err(backend)?;
    let sk = encode_sort_key(&key.sk);
    let k = (table_id(key.table), key.pk.as_str(), sk.as_slice());
    match op {
        WriteOp::Put { item, .. } => {
            let raw = serde_json::to_vec(&key.stored_item(item)).map_err(backend)?;
            table.insert(k, raw.as_slice()).map_err(backend)?;
        }
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
            let raw = serde_json::to_vec(&key.stored_item(&item)).map_err(backend)?;
            table.insert(k, raw.as_slice()).map_err(backend)?;
        }
        WriteOp::Delete { .. } => {
            table.remove(k).map_err(backend)?;
        }
        WriteOp::Check { .. } => {}
    }
    Ok(())
}

impl EmbeddedStore {
    /// Run `ops` in one write transaction: all of them or, on the first failure, none.
    fn commit_all(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        for op in ops {
            // Dropping an uncommitted transaction aborts it.
            apply(&txn, op)?;
        }
        txn.commit().map_err(backend)
    }
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
        self.count();
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(ITEMS).map_err(backend)?;
        keys.iter()
            .map(|key| {
                let sk = encode_sort_key(&key.sk);
                let found = table
                    .get((table_id(key.table), key.pk.as_str(), sk.as_slice()))
                    .map_err(backend)?;
                found.map(|v| decode_item(v.value())).transpose()
            })
            .collect()
    }

    async fn query(
        &self,
        table: Table,
        pk: &str,
        after: Option<&SortKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.count();
        let txn = self.db.begin_read().map_err(backend)?;
        let items = txn.open_table(ITEMS).map_err(backend)?;
        let id = table_id(table);
        let after = after.map(encode_sort_key);
        let start = match &after {
            Some(sk) => Bound::Excluded((id, pk, sk.as_slice())),
            None => Bound::Included((id, pk, &[][..])),
        };
        let mut page = Page::default();
        for entry in items
            .range::<(u8, &str, &[u8])>((start, Bound::Unbounded))
            .map_err(backend)?
        {
            let (k, v) = entry.map_err(backend)?;
            let (t, p, sk) = k.value();
            if t != id || p != pk {
                break;
            }
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            page.items
                .push((decode_sort_key(table, sk)?, decode_item(v.value())?));
        }
        Ok(page)
    }

    async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        self.count();
        super::check_write(&op)?;
        self.commit_all(std::slice::from_ref(&op))
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.count();
        super::check_transaction(&ops)?;
        self.commit_all(&ops)
    }

    async fn scan_keys(
        &self,
        table: Table,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<Key>, bool), StoreError> {
        self.count();
        let txn = self.db.begin_read().map_err(backend)?;
        let items = txn.open_table(ITEMS).map_err(backend)?;
        let id = table_id(table);
        let after_sk = after.map(|k| encode_sort_key(&k.sk));
        let start = match (after, &after_sk) {
            (Some(k), Some(sk)) => Bound::Excluded((id, k.pk.as_str(), sk.as_slice())),
            _ => Bound::Included((id, "", &[][..])),
        };
        let mut keys = Vec::new();
        for entry in items
            .range::<(u8, &str, &[u8])>((start, Bound::Unbounded))
            .map_err(backend)?
        {
            let (k, _) = entry.map_err(backend)?;
            let (t, pk, sk) = k.value();
            if t != id {
                break;
            }
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(Key {
                table,
                pk: pk.to_string(),
                sk: decode_sort_key(table, sk)?,
            });
        }
        Ok((keys, false))
    }

    async fn add(&self, key: &Key, attr: &str, delta: u64) -> Result<u64, StoreError> {
        self.count();
        let txn = self.db.begin_write().map_err(backend)?;
        let update = WriteOp::Update {
            key: key.clone(),
            set: Item::default(),
            add: vec![(attr.to_string(), delta as i64)],
            cond: Condition::None,
        };
        apply(&txn, &update)?;
        let next = match read_item(&txn, key)?.as_ref().and_then(|i| i.get(attr)) {
            Some(Value::N(n)) => n.parse::<u64>().map_err(backend)?,
            _ => return Err(backend("counter vanished")),
        };
        txn.commit().map_err(backend)?;
        Ok(next)
    }
}
