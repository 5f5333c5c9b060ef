//! What the simulator reads out of DynamoDB's JSON wire protocol: the items a request
//! touches, their sizes as DynamoDB bills them, and the error answers it fakes.

use serde_json::Value as Json;

/// One item, as the simulator tracks it: table, hash key and range key as wire JSON text.
pub type ItemId = (String, String, String);

/// A partition: table and hash key.
pub type PartitionId = (String, String);

/// Hash and range key attribute names of both dynamofs tables (`<T>` and `<T>Blocks`).
const KEY_NAMES: [(&str, &str); 2] = [("path", "name"), ("blockId", "blockNum")];

/// The identity of the item whose key (or whole item) is `attrs`, in `table`.
pub fn item_id(table: &str, attrs: &Json) -> Option<ItemId> {
    KEY_NAMES.iter().find_map(|(hash, range)| {
        let h = attrs.get(hash)?;
        let r = attrs.get(range)?;
        Some((table.to_string(), h.to_string(), r.to_string()))
    })
}

/// Size of one attribute value, by DynamoDB's rules (approximately, for numbers).
fn value_size(value: &Json) -> usize {
    let Some((kind, inner)) = value.as_object().and_then(|m| m.iter().next()) else {
        return 0;
    };
    match (kind.as_str(), inner) {
        ("S", Json::String(s)) => s.len(),
        ("N", Json::String(n)) => n.trim_start_matches('-').len().div_ceil(2) + 1,
        ("B", Json::String(b)) => b.len() / 4 * 3,
        ("BOOL" | "NULL", _) => 1,
        ("M", Json::Object(m)) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        ("L", Json::Array(l)) => 3 + l.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        ("SS" | "NS" | "BS", Json::Array(l)) => {
            l.iter().map(|v| v.as_str().map_or(0, str::len)).sum()
        }
        _ => 0,
    }
}

/// Size of a whole item (attribute names and values), as DynamoDB bills it.
pub fn item_size(item: &Json) -> usize {
    item.as_object()
        .map_or(0, |m| m.iter().map(|(k, v)| k.len() + value_size(v)).sum())
}

/// Write units of a write of an item of `bytes` (1 KB each, at least one).
pub fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// Read units of a strongly consistent read of `bytes` (4 KB each, at least one).
pub fn read_units(bytes: usize) -> f64 {
    bytes.div_ceil(4096).max(1) as f64
}

/// What a write request does to one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Replaces it with an item of this size.
    Put(usize),
    /// Sets attributes of about this size in it.
    Update(usize),
    /// Deletes it.
    Delete,
    /// Only tests a condition on it (inside a transaction).
    Check,
}

/// One item a write request touches.
pub struct Touched {
    /// Which item.
    pub id: ItemId,
    /// What happens to it.
    pub change: Change,
}

/// The items a write action touches: PutItem, UpdateItem, DeleteItem, and every element
/// of TransactWriteItems. Empty for anything else.
pub fn touched_items(action: &str, body: &Json) -> Vec<Touched> {
    let single = |part: &Json, kind: &str| -> Option<Touched> {
        let table = part.get("TableName")?.as_str()?;
        let (id, change) = match kind {
            "Put" | "PutItem" => {
                let item = part.get("Item")?;
                (item_id(table, item)?, Change::Put(item_size(item)))
            }
            "Update" | "UpdateItem" => {
                let key = part.get("Key")?;
                let values = part
                    .get("ExpressionAttributeValues")
                    .and_then(Json::as_object)
                    .map_or(0, |m| m.values().map(value_size).sum());
                (
                    item_id(table, key)?,
                    Change::Update(item_size(key) + values),
                )
            }
            "Delete" | "DeleteItem" => (item_id(table, part.get("Key")?)?, Change::Delete),
            _ => (item_id(table, part.get("Key")?)?, Change::Check),
        };
        Some(Touched { id, change })
    };
    match action {
        "PutItem" | "UpdateItem" | "DeleteItem" => single(body, action).into_iter().collect(),
        "TransactWriteItems" => body
            .get("TransactItems")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|element| {
                let (kind, part) = element.as_object()?.iter().next()?;
                single(part, kind)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The partitions a read action asks for: GetItem, BatchGetItem, Query (Scan reads the
/// whole table and is not throttled per partition here).
pub fn read_partitions(action: &str, body: &Json) -> Vec<PartitionId> {
    let key_partition = |table: &str, key: &Json| -> Option<PartitionId> {
        let (id_table, hash, _) = item_id(table, key)?;
        Some((id_table, hash))
    };
    match action {
        "GetItem" => body
            .get("TableName")
            .and_then(Json::as_str)
            .zip(body.get("Key"))
            .and_then(|(t, k)| key_partition(t, k))
            .into_iter()
            .collect(),
        "BatchGetItem" => body
            .get("RequestItems")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
            .flat_map(|(table, request)| {
                request
                    .get("Keys")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(move |k| key_partition(table, k))
            })
            .collect(),
        "Query" => {
            let table = body.get("TableName").and_then(Json::as_str);
            let hash = body
                .get("ExpressionAttributeValues")
                .and_then(|v| v.get(":h"));
            table
                .zip(hash)
                .map(|(t, h)| (t.to_string(), h.to_string()))
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The items a read answer carries, with the table each came from.
pub fn answered_items<'a>(
    action: &str,
    body: &'a Json,
    request: &'a Json,
) -> Vec<(String, &'a Json)> {
    let table = || {
        request
            .get("TableName")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match action {
        "GetItem" => body.get("Item").map(|i| (table(), i)).into_iter().collect(),
        "Query" | "Scan" => body
            .get("Items")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .map(|i| (table(), i))
            .collect(),
        "BatchGetItem" => body
            .get("Responses")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
            .flat_map(|(t, items)| {
                items
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |i| (t.clone(), i))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A DynamoDB error answer with HTTP status `status`, error type `kind` and an optional
/// extra JSON field (the cancellation reasons of a cancelled transaction).
pub fn error_response(
    status: &str,
    kind: &str,
    message: &str,
    extra: Option<(&str, Json)>,
) -> Vec<u8> {
    let mut body = serde_json::json!({
        "__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"),
        "message": message,
    });
    if let Some((name, value)) = extra {
        body[name] = value;
    }
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: simulated\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An answer that is not DynamoDB's: what a proxy or load balancer in front of it sends.
pub fn foreign_response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A cancelled transaction: `reasons[i]` is the cancellation code of item `i` ("None" for
/// the items that were fine).
pub fn cancelled_transaction(reasons: &[&str]) -> Vec<u8> {
    let list: Vec<Json> = reasons
        .iter()
        .map(|code| serde_json::json!({ "Code": code }))
        .collect();
    error_response(
        "400 Bad Request",
        "TransactionCanceledException",
        &format!("Transaction cancelled, please refer cancellation reasons for specific reasons {reasons:?}"),
        Some(("CancellationReasons", Json::Array(list))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        let item = json!({"path": {"S": "i:7"}, "name": {"S": "."}, "d": {"B": "AAAAAA=="}});
        // names 4+4+1, values 3+1+6 (8 base64 chars = 6 bytes)
        assert_eq!(item_size(&item), 19);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(0), 1.0);
        assert_eq!(read_units(8193), 3.0);
    }

    #[test]
    fn transactions_touch_every_element() {
        let body = json!({"TransactItems": [
            {"Put": {"TableName": "T", "Item": {"path": {"S": "d:1"}, "name": {"S": "a"}}}},
            {"Update": {"TableName": "T", "Key": {"path": {"S": "i:1"}, "name": {"S": "."}}}},
            {"Delete": {"TableName": "TBlocks", "Key": {"blockId": {"S": "5:0"}, "blockNum": {"N": "0"}}}},
        ]});
        let touched = touched_items("TransactWriteItems", &body);
        assert_eq!(touched.len(), 3);
        assert_eq!(touched[2].id.0, "TBlocks");
        assert_eq!(touched[2].change, Change::Delete);
    }
}
