//! The DynamoDB backend (also DynamoDB Local, ScyllaDB Alternator, LocalStack).
//!
//! Every request goes through [`crate::retry`] for throttling and transient faults
//! (the SDK's own retries are off, so there is one retry policy in the program), and
//! is counted, so tests and benchmarks can report requests per operation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, ConsumedCapacity, Delete,
    KeySchemaElement, KeyType, KeysAndAttributes, ProvisionedThroughput, Put,
    ReturnConsumedCapacity, ReturnValue, ScalarAttributeType, TableStatus, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use aws_smithy_types::retry::ErrorKind;

use super::{Condition, Item, Key, Page, SortKey, Store, StoreError, Table, WriteOp, VERSION_ATTR};
use crate::metrics::metrics;
use crate::retry::{retry, Patience, Policy};

type AttrMap = HashMap<String, AttributeValue>;

/// What every data request asks DynamoDB to report: the capacity it consumed, for
/// [`crate::metrics`] (`send` counts it).
const CAPACITY: ReturnConsumedCapacity = ReturnConsumedCapacity::Total;

/// The capacity units a DynamoDB output says its request consumed.
trait Consumed {
    fn consumed_units(&self) -> f64;
}

/// Outputs that carry a `consumed_capacity` (an option or a list of them).
macro_rules! consumed_from_output {
    ($($output:ty),* $(,)?) => {$(
        impl Consumed for $output {
            fn consumed_units(&self) -> f64 {
                self.consumed_capacity()
                    .into_iter()
                    .filter_map(ConsumedCapacity::capacity_units)
                    .sum()
            }
        }
    )*};
}

consumed_from_output!(
    aws_sdk_dynamodb::operation::get_item::GetItemOutput,
    aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput,
    aws_sdk_dynamodb::operation::query::QueryOutput,
    aws_sdk_dynamodb::operation::scan::ScanOutput,
    aws_sdk_dynamodb::operation::put_item::PutItemOutput,
    aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
    aws_sdk_dynamodb::operation::delete_item::DeleteItemOutput,
    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput,
);

/// The table operations consume no capacity.
impl Consumed for aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput {
    fn consumed_units(&self) -> f64 {
        0.0
    }
}

impl Consumed for aws_sdk_dynamodb::operation::create_table::CreateTableOutput {
    fn consumed_units(&self) -> f64 {
        0.0
    }
}

/// Where and how to reach DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoConfig {
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Name of the metadata table; the blocks table is this name plus `Blocks`.
    pub table: String,
    /// Endpoint override (otherwise the SDK's own, or `AWS_ENDPOINT_URL_DYNAMODB`).
    pub endpoint: Option<String>,
    /// How long one request may take, and how long its retries may go on.
    pub patience: Patience,
    /// Create missing tables, billed so (a mount and `mkfs` do; `dynamofs status`
    /// does not).
    pub create_tables: Option<Billing>,
}

/// How new tables are billed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Billing {
    /// On demand: by the request, nothing to plan (the default).
    #[default]
    OnDemand,
    /// Provisioned: these read and write capacity units per second, per table.
    Provisioned {
        /// Read capacity units.
        read_units: i64,
        /// Write capacity units.
        write_units: i64,
    },
}

impl std::fmt::Display for Billing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Billing::OnDemand => f.write_str("on-demand"),
            Billing::Provisioned {
                read_units,
                write_units,
            } => write!(f, "provisioned, {read_units} RCU and {write_units} WCU"),
        }
    }
}

/// How long a request retries quietly before a warning says what it is waiting for.
const SAY_WAITING_AFTER: Duration = Duration::from_secs(2);

/// A [`Store`] on two DynamoDB tables.
pub struct DynamoStore {
    client: Client,
    meta_table: String,
    blocks_table: String,
    requests: AtomicU64,
    create_tables: Option<Billing>,
    retries: Policy,
}

/// The key schema each table must have: (hash, range) with their scalar types.
fn key_schema(table: Table) -> [(&'static str, ScalarAttributeType); 2] {
    let (hash, range) = table.key_names();
    let range_type = match table {
        Table::Meta => ScalarAttributeType::S,
        Table::Blocks => ScalarAttributeType::N,
    };
    [(hash, ScalarAttributeType::S), (range, range_type)]
}

/// An SDK error as one readable line: the service's code and message, or the chain of
/// causes of a failure to reach it (never the SDK's debug dump of the response).
fn one_line<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> String {
    if let SdkError::ServiceError(service) = err {
        let code = service.err().code().unwrap_or("no DynamoDB error code");
        let status = service.raw().status().as_u16();
        return match service.err().message() {
            Some(message) => format!("{code}: {message} (HTTP {status})"),
            None => format!("{code} (HTTP {status})"),
        };
    }
    // The SDK wraps the cause in layers that say nothing to a user.
    const WRAPPERS: &[&str] = &[
        "dispatch failure",
        "io error",
        "other",
        "client error (Connect)",
        "timeout",
    ];
    let mut causes: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !WRAPPERS.contains(&text.as_str()) && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        next = cause.source();
    }
    let causes = causes.join(": ");
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            format!("cannot reach DynamoDB ({causes}); check endpoint= and the network")
        }
        _ => causes,
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: SdkError<E, HttpResponse>,
) -> StoreError {
    let text = one_line(&err);
    if text.contains("loading credentials") || text.contains("no credentials") {
        return StoreError::fatal(format!(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with \
             AWS_PROFILE, or run where an instance role is available ({text})"
        ));
    }
    match &err {
        // Whatever the body says, or fails to say: a proxy or load balancer in front of
        // the service answers 502/503/504 with an HTML page, which carries no error code.
        SdkError::ServiceError(service) if service.raw().status().is_server_error() => {
            StoreError::transient(text)
        }
        SdkError::ServiceError(service) => match service.err().code().unwrap_or_default() {
            "ConditionalCheckFailedException" => StoreError::Conflict,
            // A single write met an ongoing transaction on its item: sending the same
            // write again once that transaction is done is right, conditional or not.
            "TransactionConflictException" => StoreError::transient(text),
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "LimitExceededException" => StoreError::Throttled(text),
            "ResourceNotFoundException" => StoreError::NotFound(text),
            "InternalServerError" | "ServiceUnavailable" | "InternalFailure" => {
                StoreError::transient(text)
            }
            _ => StoreError::fatal(text),
        },
        SdkError::ResponseError(_) | SdkError::TimeoutError(_) => StoreError::transient(text),
        // A connection dropped before the answer (an idle keep-alive closed by the
        // endpoint or a load balancer) is an "other" failure the SDK marks transient.
        SdkError::DispatchFailure(failure)
            if failure.is_io()
                || failure.is_timeout()
                || failure.as_other() == Some(ErrorKind::TransientError) =>
        {
            StoreError::transient(text)
        }
        _ => StoreError::fatal(text),
    }
}

fn key_attrs(key: &Key) -> AttrMap {
    let [(hash, _), (range, _)] = key_schema(key.table);
    let sort = match &key.sk {
        SortKey::S(s) => AttributeValue::S(s.clone()),
        SortKey::N(n) => AttributeValue::N(n.to_string()),
    };
    HashMap::from([
        (hash.to_string(), AttributeValue::S(key.pk.clone())),
        (range.to_string(), sort),
    ])
}

fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::fatal(format!("cannot build request: {e}"))
}

/// A condition as DynamoDB expression text, names and values.
#[derive(Clone)]
struct Expr {
    text: Option<String>,
    names: Option<HashMap<String, String>>,
    values: Option<AttrMap>,
}

fn condition_expr(table: Table, cond: &Condition) -> Expr {
    if *cond == Condition::None {
        return Expr {
            text: None,
            names: None,
            values: None,
        };
    }
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let text = condition_text(table, cond, &mut names, &mut values);
    Expr {
        text: Some(text),
        names: Some(names),
        values: (!values.is_empty()).then_some(values),
    }
}

/// Placeholders for the attribute names and values of one condition expression.
struct Placeholders<'a> {
    names: &'a mut HashMap<String, String>,
    values: &'a mut AttrMap,
}

impl Placeholders<'_> {
    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#c{}", self.names.len());
        self.names.insert(placeholder.clone(), attr.to_string());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":c{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn compare(&mut self, attr: &str, op: &str, n: u64) -> String {
        format!(
            "{} {op} {}",
            self.name(attr),
            self.value(AttributeValue::N(n.to_string()))
        )
    }
}

/// The expression text of `cond`, adding the names and values it uses as `#cN`/`:cN`.
fn condition_text(
    table: Table,
    cond: &Condition,
    names: &mut HashMap<String, String>,
    values: &mut AttrMap,
) -> String {
    let hash = key_schema(table)[0].0;
    let mut p = Placeholders { names, values };
    match cond {
        // Only met inside a list (at the top, no condition is no expression): true.
        Condition::None => {
            let k = p.name(hash);
            format!("attribute_exists({k}) OR attribute_not_exists({k})")
        }
        Condition::Absent => format!("attribute_not_exists({})", p.name(hash)),
        Condition::Present => format!("attribute_exists({})", p.name(hash)),
        Condition::VersionIs(v) => p.compare(VERSION_ATTR, "=", *v),
        Condition::NumberIs(attr, v) => p.compare(attr, "=", *v),
        Condition::NumberBelow(attr, v) => p.compare(attr, "<", *v),
        Condition::NumberAbove(attr, v) => p.compare(attr, ">", *v),
        Condition::StringIs(attr, v) => {
            let name = p.name(attr);
            format!("{name} = {}", p.value(AttributeValue::S(v.clone())))
        }
        Condition::Lacks(attr) => format!("attribute_not_exists({})", p.name(attr)),
        Condition::All(parts) | Condition::Any(parts) => {
            let joint = if matches!(cond, Condition::All(_)) {
                " AND "
            } else {
                " OR "
            };
            parts
                .iter()
                .map(|c| format!("({})", condition_text(table, c, p.names, p.values)))
                .collect::<Vec<_>>()
                .join(joint)
        }
    }
}

/// The update expression of [`WriteOp::Update`], merged with its condition's names and values.
fn update_expr(
    table: Table,
    set: &Item,
    add: &[(String, i64)],
    cond: &Condition,
) -> (String, Expr) {
    let mut expr = condition_expr(table, cond);
    let names = expr.names.get_or_insert_with(HashMap::new);
    let values = expr.values.get_or_insert_with(HashMap::new);
    let set: AttrMap = set.clone().into();
    let mut sets = Vec::new();
    for (i, (attr, value)) in set.into_iter().enumerate() {
        names.insert(format!("#s{i}"), attr);
        values.insert(format!(":s{i}"), value);
        sets.push(format!("#s{i} = :s{i}"));
    }
    let mut adds = Vec::new();
    for (i, (attr, delta)) in add.iter().enumerate() {
        names.insert(format!("#a{i}"), attr.clone());
        values.insert(format!(":a{i}"), AttributeValue::N(delta.to_string()));
        adds.push(format!("#a{i} :a{i}"));
    }
    let mut text = Vec::new();
    if !sets.is_empty() {
        text.push(format!("SET {}", sets.join(", ")));
    }
    if !adds.is_empty() {
        text.push(format!("ADD {}", adds.join(", ")));
    }
    if expr.values.as_ref().is_some_and(HashMap::is_empty) {
        expr.values = None;
    }
    (text.join(" "), expr)
}

/// Apply a condition's expression, names and values to any request builder.
macro_rules! conditioned {
    ($builder:expr, $expr:expr) => {{
        let expr: Expr = $expr;
        $builder
            .set_condition_expression(expr.text)
            .set_expression_attribute_names(expr.names)
            .set_expression_attribute_values(expr.values)
    }};
}

/// The full key of an item as DynamoDB returned it.
fn key_of(table: Table, item: &AttrMap) -> Result<Key, StoreError> {
    let pk = match item.get(table.key_names().0) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => return Err(StoreError::fatal("item without its hash key")),
    };
    Ok(Key {
        table,
        pk,
        sk: sort_key_of(table, item)?,
    })
}

fn sort_key_of(table: Table, item: &AttrMap) -> Result<SortKey, StoreError> {
    let range = key_schema(table)[1].0;
    match item.get(range) {
        Some(AttributeValue::S(s)) => Ok(SortKey::S(s.clone())),
        Some(AttributeValue::N(n)) => n
            .parse()
            .map(SortKey::N)
            .map_err(|_| StoreError::fatal("bad blockNum")),
        _ => Err(StoreError::fatal(format!(
            "item without its range key {range}"
        ))),
    }
}

impl DynamoStore {
    /// Connect, create both tables if absent (on-demand billing, waiting until ACTIVE),
    /// and check that existing tables have the key schema dynamofs needs.
    pub async fn connect(config: &DynamoConfig) -> Result<Self, StoreError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(config.patience.request_timeout)
                    .operation_timeout(config.patience.request_timeout)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        let store = DynamoStore {
            client: Client::new(&sdk_config),
            meta_table: config.table.clone(),
            blocks_table: format!("{}Blocks", config.table),
            requests: AtomicU64::new(0),
            create_tables: config.create_tables,
            retries: Policy::transient(config.patience),
        };
        for table in [Table::Meta, Table::Blocks] {
            store.ensure_table(table).await?;
        }
        Ok(store)
    }

    /// DynamoDB requests sent so far, retries included.
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn table_name(&self, table: Table) -> &str {
        match table {
            Table::Meta => &self.meta_table,
            Table::Blocks => &self.blocks_table,
        }
    }

    /// Send one request of `action` through the retry helper, counting every attempt
    /// (here and in [`crate::metrics`]). A request still failing transiently when the
    /// retry budget is spent fails, with one warning.
    async fn send<T, F, Fut>(&self, action: &'static str, mut request: F) -> Result<T, StoreError>
    where
        T: Consumed,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let started = std::time::Instant::now();
        let attempts = AtomicU64::new(0);
        let said_waiting = std::sync::atomic::AtomicBool::new(false);
        let result = retry(
            self.retries,
            || {
                self.requests.fetch_add(1, Ordering::Relaxed);
                let retry = attempts.fetch_add(1, Ordering::Relaxed) > 0;
                metrics().request(action, retry);
                request()
            },
            |e: &StoreError| {
                match e {
                    StoreError::Conflict | StoreError::Contended => metrics().conflict(action),
                    StoreError::Throttled(_) => metrics().throttle(action),
                    _ => {}
                }
                let again = e.is_transient();
                if again
                    && started.elapsed() > SAY_WAITING_AFTER
                    && !said_waiting.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        "waiting for DynamoDB, retrying for up to {:.0} s (retry_budget): {e}",
                        self.retries.budget.unwrap_or_default().as_secs_f64()
                    );
                }
                again
            },
        )
        .await;
        if let Ok(out) = &result {
            let units = out.consumed_units();
            if units > 0.0 {
                metrics().capacity(action, units);
            }
        }
        if let Err(e) = &result {
            if e.is_transient() {
                tracing::warn!(
                    "DynamoDB request given up after {} attempts in {:.1} s (retry_budget): {e}",
                    attempts.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        result
    }

    async fn ensure_table(&self, table: Table) -> Result<(), StoreError> {
        let name = self.table_name(table).to_string();
        let described = self
            .send("DescribeTable", || async {
                self.client
                    .describe_table()
                    .table_name(&name)
                    .send()
                    .await
                    .map_err(classify)
            })
            .await;
        let description = match described {
            Ok(out) => out
                .table
                .ok_or_else(|| StoreError::fatal("DescribeTable returned no table"))?,
            Err(StoreError::NotFound(_)) => {
                let Some(billing) = self.create_tables else {
                    return Err(StoreError::NotFound(format!("table {name} does not exist")));
                };
                tracing::info!(table = %name, %billing, "creating table");
                self.create_table(table, &name, billing).await?;
                return self.wait_active(&name).await;
            }
            Err(e) => return Err(e),
        };
        let expected = key_schema(table);
        let types: HashMap<&str, &ScalarAttributeType> = description
            .attribute_definitions()
            .iter()
            .map(|d| (d.attribute_name(), d.attribute_type()))
            .collect();
        let actual: Vec<(&str, &KeyType, Option<&&ScalarAttributeType>)> = description
            .key_schema()
            .iter()
            .map(|k| {
                (
                    k.attribute_name(),
                    k.key_type(),
                    types.get(k.attribute_name()),
                )
            })
            .collect();
        let wanted = [
            (expected[0].0, &KeyType::Hash, &expected[0].1),
            (expected[1].0, &KeyType::Range, &expected[1].1),
        ];
        let matches = actual.len() == 2
            && wanted.iter().all(|(n, kt, st)| {
                actual
                    .iter()
                    .any(|(an, akt, ast)| an == n && akt == kt && ast.copied() == Some(*st))
            });
        if !matches {
            let found: Vec<String> = actual
                .iter()
                .map(|(n, kt, st)| format!("{n} {kt:?} {st:?}"))
                .collect();
            return Err(StoreError::fatal(format!(
                "table {name} exists with key schema [{}], but dynamofs needs hash key {} ({:?}) and range key {} ({:?})",
                found.join(", "),
                expected[0].0,
                expected[0].1,
                expected[1].0,
                expected[1].1
            )));
        }
        if description.table_status() != Some(&TableStatus::Active) {
            return self.wait_active(&name).await;
        }
        Ok(())
    }

    async fn create_table(
        &self,
        table: Table,
        name: &str,
        billing: Billing,
    ) -> Result<(), StoreError> {
        let [(hash, hash_type), (range, range_type)] = key_schema(table);
        let attr = |n: &str, t: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(t)
                .build()
        };
        let key = |n: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
        };
        let request = self
            .client
            .create_table()
            .table_name(name)
            .attribute_definitions(attr(hash, hash_type).map_err(build_err)?)
            .attribute_definitions(attr(range, range_type).map_err(build_err)?)
            .key_schema(key(hash, KeyType::Hash).map_err(build_err)?)
            .key_schema(key(range, KeyType::Range).map_err(build_err)?);
        let request = match billing {
            Billing::OnDemand => request.billing_mode(BillingMode::PayPerRequest),
            Billing::Provisioned {
                read_units,
                write_units,
            } => request
                .billing_mode(BillingMode::Provisioned)
                .provisioned_throughput(
                    ProvisionedThroughput::builder()
                        .read_capacity_units(read_units)
                        .write_capacity_units(write_units)
                        .build()
                        .map_err(build_err)?,
                ),
        };
        match self
            .send("CreateTable", || async {
                request.clone().send().await.map_err(classify)
            })
            .await
        {
            // Another client created it first: fine, we only need it to exist.
            Err(StoreError::Backend { message, .. })
                if message.contains("ResourceInUseException") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    async fn wait_active(&self, name: &str) -> Result<(), StoreError> {
        for _ in 0..600 {
            let out = self
                .send("DescribeTable", || async {
                    self.client
                        .describe_table()
                        .table_name(name)
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
            if out.table.as_ref().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(StoreError::fatal(format!(
            "table {name} did not become ACTIVE within 5 minutes"
        )))
    }

    fn transact_item(&self, op: &WriteOp) -> Result<TransactWriteItem, StoreError> {
        let key = op.key();
        let table = self.table_name(key.table);
        let builder = TransactWriteItem::builder();
        Ok(match op {
            WriteOp::Put { item, cond, .. } => {
                let expr = condition_expr(key.table, cond);
                let attrs: AttrMap = key.stored_item(item).into();
                builder.put(
                    conditioned!(Put::builder().table_name(table).set_item(Some(attrs)), expr)
                        .build()
                        .map_err(build_err)?,
                )
            }
            WriteOp::Update { set, add, cond, .. } => {
                let (update, expr) = update_expr(key.table, set, add, cond);
                let request = Update::builder()
                    .table_name(table)
                    .set_key(Some(key_attrs(key)))
                    .update_expression(update);
                builder.update(conditioned!(request, expr).build().map_err(build_err)?)
            }
            WriteOp::Delete { cond, .. } => {
                let expr = condition_expr(key.table, cond);
                builder.delete(
                    conditioned!(
                        Delete::builder()
                            .table_name(table)
                            .set_key(Some(key_attrs(key))),
                        expr
                    )
                    .build()
                    .map_err(build_err)?,
                )
            }
            WriteOp::Check { cond, .. } => {
                // A check needs some condition: "no condition" means "the item exists".
                let cond = if *cond == Condition::None {
                    &Condition::Present
                } else {
                    cond
                };
                let check = ConditionCheck::builder()
                    .table_name(table)
                    .set_key(Some(key_attrs(key)));
                builder.condition_check(
                    conditioned!(check, condition_expr(key.table, cond))
                        .build()
                        .map_err(build_err)?,
                )
            }
        }
        .build())
    }
}

/// A cancelled transaction is a conflict if any item failed its condition or collided,
/// throttled if any item was throttled, and a permanent error otherwise.
fn classify_transaction(err: SdkError<TransactWriteItemsError, HttpResponse>) -> StoreError {
    if let SdkError::ServiceError(service) = &err {
        if let TransactWriteItemsError::TransactionCanceledException(cancelled) = service.err() {
            let codes: Vec<&str> = cancelled
                .cancellation_reasons()
                .iter()
                .filter_map(|r| r.code())
                .collect();
            if codes.contains(&"ConditionalCheckFailed") {
                return StoreError::Conflict;
            }
            if codes.contains(&"TransactionConflict") {
                return StoreError::Contended;
            }
            if codes
                .iter()
                .any(|c| *c == "ThrottlingError" || *c == "ProvisionedThroughputExceeded")
            {
                return StoreError::Throttled(format!("transaction cancelled: {codes:?}"));
            }
            return StoreError::fatal(format!(
                "transaction cancelled: {codes:?}: {}",
                one_line(&err)
            ));
        }
    }
    classify(err)
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let table = self.table_name(key.table);
        let out = self
            .send("GetItem", || async {
                self.client
                    .get_item()
                    .table_name(table)
                    .set_key(Some(key_attrs(key)))
                    .consistent_read(true)
                    .return_consumed_capacity(CAPACITY)
                    .send()
                    .await
                    .map_err(classify)
            })
            .await?;
        Ok(out.item.map(Item::from))
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        let mut found: HashMap<Key, Item> = HashMap::new();
        for chunk in keys.chunks(100) {
            let mut by_table: HashMap<String, Vec<AttrMap>> = HashMap::new();
            for key in chunk {
                let keys = by_table
                    .entry(self.table_name(key.table).to_string())
                    .or_default();
                let attrs = key_attrs(key);
                // DynamoDB rejects a batch that names one key twice.
                if !keys.contains(&attrs) {
                    keys.push(attrs);
                }
            }
            let mut pending = by_table
                .into_iter()
                .map(|(table, keys)| {
                    let request = KeysAndAttributes::builder()
                        .set_keys(Some(keys))
                        .consistent_read(true)
                        .build();
                    Ok((table, request.map_err(build_err)?))
                })
                .collect::<Result<HashMap<String, KeysAndAttributes>, StoreError>>()?;
            // DynamoDB may leave keys unprocessed under load; ask again for those with backoff.
            let mut rounds = 0;
            while !pending.is_empty() {
                rounds += 1;
                if rounds > 1 {
                    tokio::time::sleep(Duration::from_millis(20 * rounds.min(50))).await;
                }
                if rounds > 200 {
                    return Err(StoreError::Throttled(
                        "BatchGetItem kept leaving keys unprocessed".into(),
                    ));
                }
                let request = pending.clone();
                let out = self
                    .send("BatchGetItem", || async {
                        self.client
                            .batch_get_item()
                            .set_request_items(Some(request.clone()))
                            .return_consumed_capacity(CAPACITY)
                            .send()
                            .await
                            .map_err(classify)
                    })
                    .await?;
                for (table_name, items) in out.responses.unwrap_or_default() {
                    let table = if table_name == self.meta_table {
                        Table::Meta
                    } else {
                        Table::Blocks
                    };
                    for attrs in items {
                        found.insert(key_of(table, &attrs)?, Item::from(attrs));
                    }
                }
                pending = out.unprocessed_keys.unwrap_or_default();
            }
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn query(
        &self,
        table: Table,
        pk: &str,
        after: Option<&SortKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let [(hash, _), (range, _)] = key_schema(table);
        let mut names = HashMap::from([("#h".to_string(), hash.to_string())]);
        let mut values = HashMap::from([(":h".to_string(), AttributeValue::S(pk.to_string()))]);
        let mut expression = "#h = :h".to_string();
        if let Some(after) = after {
            names.insert("#r".into(), range.into());
            values.insert(
                ":r".into(),
                match after {
                    SortKey::S(s) => AttributeValue::S(s.clone()),
                    SortKey::N(n) => AttributeValue::N(n.to_string()),
                },
            );
            expression.push_str(" AND #r > :r");
        }
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let out = self
            .send("Query", || async {
                self.client
                    .query()
                    .table_name(self.table_name(table))
                    .key_condition_expression(&expression)
                    .set_expression_attribute_names(Some(names.clone()))
                    .set_expression_attribute_values(Some(values.clone()))
                    .consistent_read(true)
                    .limit(limit)
                    .return_consumed_capacity(CAPACITY)
                    .send()
                    .await
                    .map_err(classify)
            })
            .await?;
        let more = out.last_evaluated_key.is_some();
        let items = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|attrs| Ok((sort_key_of(table, &attrs)?, Item::from(attrs))))
            .collect::<Result<_, StoreError>>()?;
        Ok(Page { items, more })
    }

    async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        let key = op.key();
        let table = self.table_name(key.table);
        match &op {
            WriteOp::Put { item, cond, .. } => {
                let expr = condition_expr(key.table, cond);
                let attrs: AttrMap = key.stored_item(item).into();
                self.send("PutItem", || async {
                    let request = self
                        .client
                        .put_item()
                        .table_name(table)
                        .set_item(Some(attrs.clone()))
                        .return_consumed_capacity(CAPACITY);
                    conditioned!(request, expr.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
            }
            WriteOp::Update { set, add, cond, .. } => {
                let (update, expr) = update_expr(key.table, set, add, cond);
                self.send("UpdateItem", || async {
                    let request = self
                        .client
                        .update_item()
                        .table_name(table)
                        .set_key(Some(key_attrs(key)))
                        .update_expression(&update)
                        .return_consumed_capacity(CAPACITY);
                    conditioned!(request, expr.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
            }
            WriteOp::Delete { cond, .. } => {
                let expr = condition_expr(key.table, cond);
                self.send("DeleteItem", || async {
                    let request = self
                        .client
                        .delete_item()
                        .table_name(table)
                        .set_key(Some(key_attrs(key)))
                        .return_consumed_capacity(CAPACITY);
                    conditioned!(request, expr.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
            }
            WriteOp::Check { .. } => {
                return Err(StoreError::fatal(
                    "a condition check is only valid inside a transaction",
                ))
            }
        }
        Ok(())
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        super::check_transaction(&ops)?;
        let items = ops
            .iter()
            .map(|op| self.transact_item(op))
            .collect::<Result<Vec<_>, _>>()?;
        // One token for every attempt: if an attempt was applied but its answer lost,
        // DynamoDB treats the retry as the same transaction instead of failing its
        // conditions against our own write.
        let token = uuid::Uuid::new_v4().to_string();
        self.send("TransactWriteItems", || async {
            self.client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(&token)
                .return_consumed_capacity(CAPACITY)
                .send()
                .await
                .map_err(classify_transaction)
        })
        .await?;
        Ok(())
    }

    async fn scan_keys(
        &self,
        table: Table,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<Key>, bool), StoreError> {
        let (hash, range) = table.key_names();
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let start = after.map(key_attrs);
        let out = self
            .send("Scan", || async {
                self.client
                    .scan()
                    .table_name(self.table_name(table))
                    .projection_expression("#h, #r")
                    .expression_attribute_names("#h", hash)
                    .expression_attribute_names("#r", range)
                    .set_exclusive_start_key(start.clone())
                    .consistent_read(true)
                    .limit(limit)
                    .return_consumed_capacity(CAPACITY)
                    .send()
                    .await
                    .map_err(classify)
            })
            .await?;
        let more = out.last_evaluated_key.is_some();
        let keys = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|attrs| key_of(table, &attrs))
            .collect::<Result<_, StoreError>>()?;
        Ok((keys, more))
    }

    async fn add(&self, key: &Key, attr: &str, delta: u64) -> Result<u64, StoreError> {
        let table = self.table_name(key.table);
        let out = self
            .send("UpdateItem", || async {
                self.client
                    .update_item()
                    .table_name(table)
                    .set_key(Some(key_attrs(key)))
                    .update_expression("ADD #a :d")
                    .expression_attribute_names("#a", attr)
                    .expression_attribute_values(":d", AttributeValue::N(delta.to_string()))
                    .return_values(ReturnValue::UpdatedNew)
                    .return_consumed_capacity(CAPACITY)
                    .send()
                    .await
                    .map_err(classify)
            })
            .await?;
        match out.attributes.as_ref().and_then(|a| a.get(attr)) {
            Some(AttributeValue::N(n)) => n
                .parse()
                .map_err(|_| StoreError::fatal("counter is not a number")),
            _ => Err(StoreError::fatal("UpdateItem returned no counter value")),
        }
    }
}
