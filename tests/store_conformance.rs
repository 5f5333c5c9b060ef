//! Store conformance: one suite, run against every backend, on the semantics the
//! filesystem relies on: conditions, transactions, pagination, ordering, limits.

mod common;

use std::sync::Arc;

use dynamofs::store::embedded::EmbeddedStore;
use dynamofs::store::{
    Condition, Item, Key, SortKey, Store, StoreError, Table, Value, WriteOp, VERSION_ATTR,
};

fn item(pairs: &[(&str, Value)]) -> Item {
    let mut item = Item::default();
    for (k, v) in pairs {
        item.insert(k.to_string(), v.clone());
    }
    item
}

fn versioned(ver: u64, data: &str) -> Item {
    item(&[
        (VERSION_ATTR, Value::N(ver.to_string())),
        ("data", Value::S(data.into())),
    ])
}

fn put(key: &Key, item: Item, cond: Condition) -> WriteOp {
    WriteOp::Put {
        key: key.clone(),
        item,
        cond,
    }
}

fn data_of(item: &Item) -> String {
    match item.get("data") {
        Some(Value::S(s)) => s.clone(),
        other => panic!("no data attribute: {other:?}"),
    }
}

async fn conditions(store: &dyn Store) {
    let key = Key::meta("c:1", "a");
    assert_eq!(store.get(&key).await.unwrap(), None);
    store
        .write(put(&key, versioned(1, "one"), Condition::Absent))
        .await
        .unwrap();
    let got = store.get(&key).await.unwrap().expect("written item");
    assert_eq!(data_of(&got), "one");
    assert_eq!(
        got.get("path"),
        Some(&Value::S("c:1".into())),
        "items carry their key attributes"
    );
    // An item read at one key and put at another is stored under the new key's names.
    let moved = Key::meta("c:2", "b");
    store
        .write(put(&moved, got.clone(), Condition::None))
        .await
        .unwrap();
    let at_moved = store.get(&moved).await.unwrap().expect("moved item");
    assert_eq!(
        (at_moved.get("path"), at_moved.get("name")),
        (Some(&Value::S("c:2".into())), Some(&Value::S("b".into()))),
        "the key's attributes win over the item's"
    );
    assert_eq!(
        store
            .write(put(&key, versioned(1, "x"), Condition::Absent))
            .await,
        Err(StoreError::Conflict)
    );
    assert_eq!(
        store
            .write(put(&key, versioned(9, "x"), Condition::VersionIs(7)))
            .await,
        Err(StoreError::Conflict)
    );
    store
        .write(put(&key, versioned(2, "two"), Condition::VersionIs(1)))
        .await
        .unwrap();
    assert_eq!(data_of(&store.get(&key).await.unwrap().unwrap()), "two");
    let missing = Key::meta("c:1", "b");
    assert_eq!(
        store
            .write(put(&missing, versioned(1, "x"), Condition::Present))
            .await,
        Err(StoreError::Conflict)
    );
    assert_eq!(
        store
            .write(put(&missing, versioned(1, "x"), Condition::VersionIs(0)))
            .await,
        Err(StoreError::Conflict)
    );
    assert_eq!(
        store
            .write(WriteOp::Delete {
                key: key.clone(),
                cond: Condition::VersionIs(1)
            })
            .await,
        Err(StoreError::Conflict)
    );
    store
        .write(WriteOp::Delete {
            key: key.clone(),
            cond: Condition::VersionIs(2),
        })
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(
        store
            .write(WriteOp::Delete {
                key: key.clone(),
                cond: Condition::Present
            })
            .await,
        Err(StoreError::Conflict)
    );
    store
        .write(WriteOp::Delete {
            key,
            cond: Condition::None,
        })
        .await
        .unwrap();
}

async fn transactions(store: &dyn Store) {
    let (a, b, c) = (
        Key::meta("t:1", "a"),
        Key::meta("t:1", "b"),
        Key::meta("t:2", "c"),
    );
    store
        .write(put(&a, versioned(1, "a1"), Condition::Absent))
        .await
        .unwrap();
    // One failing condition: nothing happens.
    let failing = vec![
        put(&a, versioned(2, "a2"), Condition::VersionIs(1)),
        put(&b, versioned(1, "b1"), Condition::Present),
    ];
    assert_eq!(store.transact(failing).await, Err(StoreError::Conflict));
    assert_eq!(data_of(&store.get(&a).await.unwrap().unwrap()), "a1");
    assert_eq!(store.get(&b).await.unwrap(), None);
    // A failing check alone also cancels.
    let checked = vec![
        put(&b, versioned(1, "b1"), Condition::Absent),
        WriteOp::Check {
            key: c.clone(),
            cond: Condition::Present,
        },
    ];
    assert_eq!(store.transact(checked).await, Err(StoreError::Conflict));
    assert_eq!(store.get(&b).await.unwrap(), None);
    // All conditions hold: everything happens.
    let ok = vec![
        put(&a, versioned(2, "a2"), Condition::VersionIs(1)),
        put(&b, versioned(1, "b1"), Condition::Absent),
        WriteOp::Check {
            key: a.clone(),
            cond: Condition::Present,
        }
        .clone(),
    ];
    assert!(
        store.transact(ok).await.is_err(),
        "one item twice in a transaction is rejected"
    );
    let ok = vec![
        put(&a, versioned(2, "a2"), Condition::VersionIs(1)),
        put(&b, versioned(1, "b1"), Condition::Absent),
        put(
            &Key::block("t:3", 7),
            item(&[("d", Value::B(vec![1, 2, 3]))]),
            Condition::None,
        ),
    ];
    store.transact(ok).await.unwrap();
    assert_eq!(data_of(&store.get(&a).await.unwrap().unwrap()), "a2");
    assert_eq!(data_of(&store.get(&b).await.unwrap().unwrap()), "b1");
    let block = store.get(&Key::block("t:3", 7)).await.unwrap().unwrap();
    assert_eq!(block.get("d"), Some(&Value::B(vec![1, 2, 3])));
    store
        .transact(vec![
            WriteOp::Delete {
                key: a.clone(),
                cond: Condition::VersionIs(2),
            },
            WriteOp::Delete {
                key: b.clone(),
                cond: Condition::Present,
            },
        ])
        .await
        .unwrap();
    assert_eq!(store.batch_get(&[a, b]).await.unwrap(), vec![None, None]);
    // DynamoDB's limit of 100 items per transaction holds for every backend.
    let too_many: Vec<WriteOp> = (0..101)
        .map(|i| {
            put(
                &Key::meta("t:4", format!("{i}")),
                versioned(1, "x"),
                Condition::None,
            )
        })
        .collect();
    assert!(matches!(
        store.transact(too_many).await,
        Err(StoreError::Backend {
            transient: false,
            ..
        })
    ));
    let hundred: Vec<WriteOp> = (0..100)
        .map(|i| {
            put(
                &Key::meta("t:4", format!("{i:03}")),
                versioned(1, "x"),
                Condition::None,
            )
        })
        .collect();
    store.transact(hundred).await.unwrap();
}

async fn queries(store: &dyn Store) {
    for i in (0..250).rev() {
        store
            .write(put(
                &Key::meta("q:1", format!("n{i:04}")),
                versioned(1, &i.to_string()),
                Condition::None,
            ))
            .await
            .unwrap();
    }
    store
        .write(put(
            &Key::meta("q:2", "other"),
            versioned(1, "x"),
            Condition::None,
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .query(Table::Meta, "q:1", after.as_ref(), 100)
            .await
            .unwrap();
        assert!(page.items.len() <= 100);
        after = page.items.last().map(|(sk, _)| sk.clone());
        seen.extend(
            page.items
                .into_iter()
                .map(|(sk, item)| (sk, data_of(&item))),
        );
        if !page.more {
            break;
        }
    }
    let expected: Vec<(SortKey, String)> = (0..250)
        .map(|i| (SortKey::S(format!("n{i:04}")), i.to_string()))
        .collect();
    assert_eq!(seen, expected, "all items, in order, once");
    assert!(store
        .query(Table::Meta, "q:none", None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
    let one = store.query(Table::Meta, "q:1", None, 1).await.unwrap();
    assert_eq!(one.items.len(), 1);
    assert!(one.more);
    // Numeric range keys sort as numbers, not strings.
    for n in [10u64, 2, 300, 1] {
        store
            .write(put(
                &Key::block("q:b", n),
                item(&[("d", Value::B(vec![n as u8]))]),
                Condition::None,
            ))
            .await
            .unwrap();
    }
    let page = store
        .query(Table::Blocks, "q:b", Some(&SortKey::N(1)), 10)
        .await
        .unwrap();
    let nums: Vec<SortKey> = page.items.into_iter().map(|(sk, _)| sk).collect();
    assert_eq!(nums, vec![SortKey::N(2), SortKey::N(10), SortKey::N(300)]);
}

async fn batch_gets(store: &dyn Store) {
    for i in (0..150).step_by(2) {
        store
            .write(put(
                &Key::meta(format!("b:{i}"), "x"),
                versioned(1, &i.to_string()),
                Condition::None,
            ))
            .await
            .unwrap();
    }
    let keys: Vec<Key> = (0..150)
        .rev()
        .map(|i| Key::meta(format!("b:{i}"), "x"))
        .collect();
    let got = store.batch_get(&keys).await.unwrap();
    assert_eq!(got.len(), 150);
    for (i, item) in (0..150).rev().zip(got) {
        assert_eq!(
            item.map(|it| data_of(&it)),
            (i % 2 == 0).then(|| i.to_string()),
            "key b:{i}"
        );
    }
    assert!(store.batch_get(&[]).await.unwrap().is_empty());
}

async fn counters(store: Arc<dyn Store>) {
    let key = Key::meta("f:", "counter-test");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move { store.add(&key, "next", 1024).await.unwrap() })
        })
        .collect();
    let mut ends = Vec::new();
    for t in tasks {
        ends.push(t.await.unwrap());
    }
    ends.sort();
    assert_eq!(
        ends,
        (1..=20).map(|i| i * 1024).collect::<Vec<u64>>(),
        "every add sees its own range"
    );
}

async fn limits(store: &dyn Store) {
    let fits = item(&[("d", Value::B(vec![7; 390 * 1024]))]);
    store
        .write(put(&Key::block("l:1", 0), fits, Condition::None))
        .await
        .unwrap();
    let too_big = item(&[("d", Value::B(vec![7; 401 * 1024]))]);
    let err = store
        .write(put(&Key::block("l:1", 1), too_big, Condition::None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Backend {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.get(&Key::block("l:1", 1)).await.unwrap(), None);
}

async fn scans(store: &dyn Store) {
    for i in 0..30u64 {
        store
            .write(put(
                &Key::block(format!("s:{}", i % 7), i),
                item(&[("d", Value::B(vec![1]))]),
                Condition::None,
            ))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<Key> = None;
    loop {
        let (keys, more) = store
            .scan_keys(Table::Blocks, after.as_ref(), 4)
            .await
            .unwrap();
        assert!(keys.len() <= 4);
        after = keys.last().cloned();
        seen.extend(keys.into_iter().filter(|k| k.pk.starts_with("s:")));
        if !more {
            break;
        }
    }
    seen.sort();
    let mut expected: Vec<Key> = (0..30u64)
        .map(|i| Key::block(format!("s:{}", i % 7), i))
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "every key once");
}

/// Atomic updates set and add in place, keep the other attributes, honour their
/// condition, and work inside transactions; `NumberIs` tests any numeric attribute.
async fn updates(store: &dyn Store) {
    let key = Key::meta("u:1", "dir");
    let update = |cond: Condition, delta: i64| WriteOp::Update {
        key: key.clone(),
        set: item(&[("data", Value::S(format!("set {delta}")))]),
        add: vec![(VERSION_ATTR.to_string(), 1), ("links".to_string(), delta)],
        cond,
    };
    assert_eq!(
        store.write(update(Condition::Present, 1)).await,
        Err(StoreError::Conflict),
        "an update conditioned on existence needs the item"
    );
    store
        .write(put(
            &key,
            item(&[("keep", Value::S("me".into()))]),
            Condition::Absent,
        ))
        .await
        .unwrap();
    store.write(update(Condition::Present, 3)).await.unwrap();
    store
        .transact(vec![
            update(Condition::VersionIs(1), -1),
            put(
                &Key::meta("u:1", "other"),
                Item::default(),
                Condition::Absent,
            ),
        ])
        .await
        .unwrap();
    let now = store.get(&key).await.unwrap().unwrap();
    assert_eq!(now.get("keep"), Some(&Value::S("me".into())));
    assert_eq!(now.get("links"), Some(&Value::N("2".into())));
    assert_eq!(now.get(VERSION_ATTR), Some(&Value::N("2".into())));
    assert_eq!(data_of(&now), "set -1");
    let delete = |links: u64| WriteOp::Delete {
        key: key.clone(),
        cond: Condition::NumberIs("links", links),
    };
    assert_eq!(store.write(delete(3)).await, Err(StoreError::Conflict));
    store.write(delete(2)).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);
}

/// The comparisons and combinations a directory lease is written with: a missing
/// attribute, numbers above and below, a string, all of and any of, and how each reads
/// on an item that does not exist.
async fn compound_conditions(store: &dyn Store) {
    let key = Key::meta("cc:1", "a");
    let leased = item(&[
        (VERSION_ATTR, Value::N("1".into())),
        ("until", Value::N("100".into())),
        ("by", Value::S("me".into())),
    ]);
    store
        .write(put(&key, leased.clone(), Condition::Absent))
        .await
        .unwrap();
    let holds = [
        Condition::NumberBelow("until", 101),
        Condition::NumberAbove("until", 99),
        Condition::StringIs("by", "me".into()),
        Condition::Lacks("recall"),
        Condition::All(vec![
            Condition::Present,
            Condition::Any(vec![
                Condition::Lacks("until"),
                Condition::StringIs("by", "me".into()),
            ]),
        ]),
        Condition::Any(vec![Condition::NumberBelow("until", 5), Condition::None]),
    ];
    for cond in holds {
        let write = put(&key, leased.clone(), cond.clone());
        assert_eq!(store.write(write).await, Ok(()), "{cond:?} holds for a put");
    }
    let fails = [
        Condition::NumberBelow("until", 100),
        Condition::NumberAbove("until", 100),
        Condition::StringIs("by", "you".into()),
        Condition::Lacks("until"),
        Condition::All(vec![Condition::Present, Condition::Lacks("by")]),
        Condition::Any(vec![
            Condition::NumberBelow("until", 5),
            Condition::StringIs("by", "you".into()),
        ]),
    ];
    for cond in fails {
        let write = put(&key, leased.clone(), cond.clone());
        assert_eq!(
            store.write(write).await,
            Err(StoreError::Conflict),
            "{cond:?} fails"
        );
    }
    // On a missing item, a missing attribute is missing and a comparison fails.
    let missing = Key::meta("cc:1", "b");
    let absent_ok = Condition::All(vec![Condition::Lacks("until"), Condition::Absent]);
    store
        .write(put(&missing, leased.clone(), absent_ok))
        .await
        .unwrap();
    let other = Key::meta("cc:1", "c");
    assert_eq!(
        store
            .write(put(&other, leased, Condition::NumberBelow("until", 1000)))
            .await,
        Err(StoreError::Conflict)
    );
}

async fn suite(store: Arc<dyn Store>) {
    compound_conditions(store.as_ref()).await;
    updates(store.as_ref()).await;
    scans(store.as_ref()).await;
    conditions(store.as_ref()).await;
    transactions(store.as_ref()).await;
    queries(store.as_ref()).await;
    batch_gets(store.as_ref()).await;
    limits(store.as_ref()).await;
    counters(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("fs.db")).unwrap();
    suite(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_store_conforms() {
    let store = common::dynamo_store("Conform").await;
    suite(store).await;
}

/// Two processes' worth of stores on one file: what one writes, the other reads at
/// once, and their conditional writes exclude each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_embedded_stores_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.db");
    let a = EmbeddedStore::open(&path).unwrap();
    let b = EmbeddedStore::open(&path).unwrap();
    let key = Key {
        table: Table::Meta,
        pk: "p".into(),
        sk: SortKey::S("s".into()),
    };
    let create = WriteOp::Put {
        key: key.clone(),
        item: Item::default(),
        cond: Condition::Absent,
    };
    a.write(create.clone()).await.unwrap();
    assert!(b.get(&key).await.unwrap().is_some());
    assert!(matches!(b.write(create).await, Err(StoreError::Conflict)));
    b.sync().await.unwrap();
    let space = a.space().unwrap().expect("a local file knows its space");
    assert!(space.used_bytes > 0 && space.used_bytes <= space.file_bytes);
}

/// A store file of dynamofs 0.1 (redb, items as JSON) is converted on first open, and
/// the original kept beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamofs_0_1_file_is_converted_on_open() {
    use redb::TableDefinition;
    const ITEMS: TableDefinition<(u8, &str, &[u8]), &[u8]> = TableDefinition::new("items");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let block = Key {
        table: Table::Blocks,
        pk: "7:0".into(),
        sk: SortKey::N(3),
    };
    let mut item = Item::default();
    item.insert("d".into(), Value::B(vec![1, 2, 3]));
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ITEMS).unwrap();
            let raw = serde_json::to_vec(&block.stored_item(&item)).unwrap();
            table
                .insert((1u8, "7:0", &3u64.to_be_bytes()[..]), raw.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let got = store.get(&block).await.unwrap().expect("converted item");
    assert_eq!(got.get("d"), Some(&Value::B(vec![1, 2, 3])));
    assert!(dir.path().join("old.db.redb-backup").exists());
}
