//! The narrow storage interface the filesystem is written against.
//!
//! A store holds two tables of items addressed by a [`Key`]: the metadata table
//! (hash key `path`, range key `name`, both strings) and the blocks table (hash key
//! `blockId` string, range key `blockNum` number). Items are DynamoDB-shaped
//! ([`Item`]) so that records serialize once, through `serde_dynamo`, for every backend.
//!
//! The operations are the ones DynamoDB offers and the filesystem needs: get, batch
//! get, a query of one partition in sort-key order, a conditional single write (put,
//! atomic update or delete), an all-or-nothing transaction of conditional writes, and
//! an atomic counter. Each
//! backend only decides what counts as a conflict; [`StoreError`] is the common vocabulary.

pub mod dynamo;
pub mod embedded;

use async_trait::async_trait;

/// A DynamoDB-shaped item: attribute name to value.
pub type Item = serde_dynamo::Item;
/// One attribute value of an [`Item`].
pub type Value = serde_dynamo::AttributeValue;

/// Which of the two tables a key addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `<TABLE>`: entries, inodes and the filesystem's own records.
    Meta,
    /// `<TABLE>Blocks`: file data.
    Blocks,
}

/// The range key of an item: a string in the metadata table, a number in the blocks table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SortKey {
    /// `name` in the metadata table.
    S(String),
    /// `blockNum` in the blocks table.
    N(u64),
}

/// The full primary key of one item.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The table the item lives in.
    pub table: Table,
    /// The hash key (`path` or `blockId`).
    pub pk: String,
    /// The range key (`name` or `blockNum`).
    pub sk: SortKey,
}

impl Key {
    /// A key in the metadata table.
    pub fn meta(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Key {
            table: Table::Meta,
            pk: pk.into(),
            sk: SortKey::S(sk.into()),
        }
    }

    /// A key in the blocks table.
    pub fn block(pk: impl Into<String>, num: u64) -> Self {
        Key {
            table: Table::Blocks,
            pk: pk.into(),
            sk: SortKey::N(num),
        }
    }
}

impl Table {
    /// Names of the hash and range key attributes of this table.
    pub fn key_names(self) -> (&'static str, &'static str) {
        match self {
            Table::Meta => ("path", "name"),
            Table::Blocks => ("blockId", "blockNum"),
        }
    }
}

impl Key {
    /// The key as the two attributes every stored item carries.
    pub fn attributes(&self) -> Item {
        let (hash, range) = self.table.key_names();
        let sort = match &self.sk {
            SortKey::S(s) => Value::S(s.clone()),
            SortKey::N(n) => Value::N(n.to_string()),
        };
        let mut item = Item::default();
        item.insert(hash.to_string(), Value::S(self.pk.clone()));
        item.insert(range.to_string(), sort);
        item
    }

    /// `item` with this key's attributes added, as it is stored.
    pub fn stored_item(&self, item: &Item) -> Item {
        let mut stored = item.clone();
        stored.extend(self.attributes().into_inner());
        stored
    }
}

/// Largest item DynamoDB stores (attribute names and values together).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

fn value_size(value: &Value) -> usize {
    match value {
        Value::S(s) | Value::N(s) => s.len(),
        Value::B(b) => b.len(),
        Value::Bool(_) | Value::Null(_) => 1,
        Value::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        Value::L(l) => 3 + l.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        Value::Ss(l) | Value::Ns(l) => l.iter().map(String::len).sum(),
        Value::Bs(l) => l.iter().map(Vec::len).sum(),
    }
}

/// The size DynamoDB counts against [`MAX_ITEM_BYTES`], approximately.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// The attribute every mutable record carries; [`Condition::VersionIs`] tests it.
pub const VERSION_ATTR: &str = "ver";

/// What must hold of the stored item for a write to happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Write unconditionally.
    None,
    /// The item must not exist (exclusive create).
    Absent,
    /// The item must exist.
    Present,
    /// The item must exist with [`VERSION_ATTR`] equal to this value.
    VersionIs(u64),
    /// The item must exist with this numeric attribute equal to this value.
    NumberIs(&'static str, u64),
    /// The item must exist with this numeric attribute below this value.
    NumberBelow(&'static str, u64),
    /// The item must exist with this numeric attribute above this value.
    NumberAbove(&'static str, u64),
    /// The item must exist with this string attribute equal to this value.
    StringIs(&'static str, String),
    /// The attribute must be missing (as it is from an item that does not exist).
    Lacks(&'static str),
    /// Every one of these must hold.
    All(Vec<Condition>),
    /// At least one of these must hold.
    Any(Vec<Condition>),
}

/// One write, alone or inside a transaction.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Replace the whole item at `key` with `item` (the key attributes are added by the store).
    Put {
        /// Where to write.
        key: Key,
        /// The attributes, without the key attributes.
        item: Item,
        /// What must hold first.
        cond: Condition,
    },
    /// Change some attributes of the item at `key` in place, atomically: `set` replaces
    /// attributes, `add` adds to numeric ones (created at 0). The untouched attributes stay.
    Update {
        /// What to change.
        key: Key,
        /// Attributes to set to these values.
        set: Item,
        /// Numeric attributes to add these amounts to.
        add: Vec<(String, i64)>,
        /// What must hold first.
        cond: Condition,
    },
    /// Delete the item at `key`.
    Delete {
        /// What to delete.
        key: Key,
        /// What must hold first.
        cond: Condition,
    },
    /// Write nothing, but fail the transaction unless `cond` holds at `key`.
    Check {
        /// What to test.
        key: Key,
        /// What must hold.
        cond: Condition,
    },
}

impl WriteOp {
    /// The key this operation addresses.
    pub fn key(&self) -> &Key {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. }
            | WriteOp::Check { key, .. } => key,
        }
    }
}

/// One page of a partition query.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Items in ascending sort-key order, each with its sort key.
    pub items: Vec<(SortKey, Item)>,
    /// True when more items may follow the last one returned.
    pub more: bool,
}

/// Errors every backend speaks.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A condition did not hold.
    #[error("conditional write failed")]
    Conflict,
    /// A transaction collided with another transaction or write on one of its items
    /// (DynamoDB's `TransactionConflict`): nothing was wrong with its conditions.
    #[error("transaction collided with a concurrent write")]
    Contended,
    /// The table (or the whole store) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend asked us to slow down.
    #[error("throttled by the backend: {0}")]
    Throttled(String),
    /// Any other failure; `transient` ones (timeouts, 5xx, dropped connections) may be retried.
    #[error("backend error: {message}")]
    Backend {
        /// What went wrong, as the backend said it.
        message: String,
        /// Whether the same request may succeed if sent again.
        transient: bool,
    },
}

impl StoreError {
    /// A permanent backend error.
    pub fn fatal(message: impl Into<String>) -> Self {
        StoreError::Backend {
            message: message.into(),
            transient: false,
        }
    }

    /// A backend error worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        StoreError::Backend {
            message: message.into(),
            transient: true,
        }
    }

    /// Whether sending the same request again may succeed (throttling and transient faults).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled(_)
                | StoreError::Backend {
                    transient: true,
                    ..
                }
        )
    }
}

/// Largest number of writes one [`Store::transact`] call may carry (DynamoDB's limit).
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// The storage interface. Every method is one logical request; backends may split
/// a large batch get into several requests of their own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Read one item (strongly consistent).
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError>;

    /// Read many items; the answer is in the order of `keys`.
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError>;

    /// Items of partition `pk` with sort key strictly after `after`, ascending, at most `limit`.
    async fn query(
        &self,
        table: Table,
        pk: &str,
        after: Option<&SortKey>,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// One conditional put, update or delete ([`WriteOp::Check`] is only meaningful in a transaction).
    async fn write(&self, op: WriteOp) -> Result<(), StoreError>;

    /// All of `ops` or none of them; [`StoreError::Conflict`] if any condition fails.
    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError>;

    /// The keys of a whole table, a page at a time, in no particular order: for the
    /// consistency checker, never for the filesystem's own operations.
    async fn scan_keys(
        &self,
        table: Table,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<Key>, bool), StoreError>;

    /// Atomically add `delta` to the numeric attribute `attr` (created at 0) and return the new value.
    async fn add(&self, key: &Key, attr: &str, delta: u64) -> Result<u64, StoreError>;

    /// Make every write that has returned durable (what `fsync` asks for). DynamoDB's
    /// writes are durable when they return, so by default there is nothing to do.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The space the store takes where that is known (a local file); None for a
    /// service that bills by use and has no capacity.
    fn space(&self) -> Result<Option<StoreSpace>, StoreError> {
        Ok(None)
    }
}

/// The space a local store takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreSpace {
    /// Bytes its files take on the disk.
    pub file_bytes: u64,
    /// Bytes of those that hold live data (the rest is free space it reuses).
    pub used_bytes: u64,
    /// Bytes still free on the disk that holds it.
    pub available_bytes: u64,
}

/// Reject a transaction DynamoDB would reject, so every backend has the same limits:
/// at most [`MAX_TRANSACTION_ITEMS`] operations, no key twice.
pub fn check_transaction(ops: &[WriteOp]) -> Result<(), StoreError> {
    if ops.len() > MAX_TRANSACTION_ITEMS {
        return Err(StoreError::fatal(format!(
            "transaction of {} items exceeds {MAX_TRANSACTION_ITEMS}",
            ops.len()
        )));
    }
    for op in ops {
        check_write(op)?;
    }
    let mut keys: Vec<&Key> = ops.iter().map(WriteOp::key).collect();
    keys.sort();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(StoreError::fatal("transaction names one item twice"));
    }
    Ok(())
}

/// Reject a write DynamoDB would reject: an item over [`MAX_ITEM_BYTES`].
pub fn check_write(op: &WriteOp) -> Result<(), StoreError> {
    if let WriteOp::Put { key, item, .. } = op {
        let size = item_size(&key.stored_item(item));
        if size > MAX_ITEM_BYTES {
            return Err(StoreError::fatal(format!(
                "item of {size} bytes exceeds the {MAX_ITEM_BYTES}-byte item limit"
            )));
        }
    }
    Ok(())
}
