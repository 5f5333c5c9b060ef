//! The DynamoDB-faithful simulator: a loopback HTTP proxy in front of DynamoDB Local
//! that adds what DynamoDB Local hides — latency, transaction conflicts, per-partition
//! throttling — and counts requests, capacity units and the time DynamoDB Local took
//! to answer, by action.
//!
//! A proxy rather than a [`crate::store::Store`] wrapper, because the things it must
//! see happen *between* clients: two mount processes whose transactions overlap on one
//! item, or many clients driving one partition past its limits. Every mount, test and
//! benchmark pointed at [`Simulator::endpoint`] shares one simulated service.
//!
//! The model, per request (all of it configurable through [`SimConfig`]):
//! - **Latency**: each request takes `latency` more than DynamoDB Local needs: half on
//!   the way in, half inside the simulated service, where writes hold their items.
//! - **Conflicts**: a `TransactWriteItems` that overlaps in time with another
//!   transaction or a single write on one of its items is cancelled with reason
//!   `TransactionConflict` for that item; a single write to an item an ongoing
//!   transaction holds fails with `TransactionConflictException`. Single writes do not
//!   conflict with each other (DynamoDB serializes them). Reads never conflict.
//! - **Throttling**: a partition key (table + hash key) takes at most 1,000 write units
//!   and 3,000 read units per one-second window; past that, requests to it fail with
//!   `ProvisionedThroughputExceededException` (cancellation reason `ThrottlingError`
//!   inside a transaction) until the window ends.
//! - **Capacity**: 1 write unit per KB written (the larger of the old and new item, as
//!   DynamoDB bills; the old size is what the simulator last saw of the item, and an
//!   update's new size is estimated from the values it sets), 1 read unit per 4 KB
//!   read strongly consistently (a query sums its items before rounding), twice both
//!   inside a transaction.
//! - **Faults** (optional): one request in `fault_every` is not forwarded but answered,
//!   in turn, with a throttling error, DynamoDB's own HTTP 500, a load balancer's HTML
//!   502, a plain-text 503, or a connection closed without an answer.

mod wire;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use wire::{Change, ItemId, PartitionId};

/// How the simulated service behaves. Changeable while it runs ([`Simulator::configure`]).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Added to every request (default 5 ms).
    pub latency: Duration,
    /// Cancel transactions that overlap on an item (default on).
    pub conflicts: bool,
    /// Throttle partitions driven past their limits (default on).
    pub throttling: bool,
    /// Write units one partition takes per second (DynamoDB: 1,000).
    pub partition_write_units: f64,
    /// Read units one partition takes per second (DynamoDB: 3,000).
    pub partition_read_units: f64,
    /// Answer one request in this many with a fault instead of forwarding it (0: never).
    pub fault_every: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(5),
            conflicts: true,
            throttling: true,
            partition_write_units: 1000.0,
            partition_read_units: 3000.0,
            fault_every: 0,
        }
    }
}

/// What happened to the requests of one action.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ActionCounts {
    /// Requests received (rejected ones included: each is a round trip).
    pub requests: u64,
    /// Read capacity units consumed.
    pub read_units: f64,
    /// Write capacity units consumed.
    pub write_units: f64,
    /// Requests rejected for a transaction conflict.
    pub conflicts: u64,
    /// Requests rejected for throttling.
    pub throttles: u64,
    /// Requests answered with an injected fault.
    pub faults: u64,
    /// Time DynamoDB Local took to answer the forwarded requests (not the added
    /// latency): what the service itself costs on this machine.
    pub upstream_seconds: f64,
}

impl ActionCounts {
    fn minus(&self, earlier: &ActionCounts) -> ActionCounts {
        ActionCounts {
            requests: self.requests - earlier.requests,
            read_units: self.read_units - earlier.read_units,
            write_units: self.write_units - earlier.write_units,
            conflicts: self.conflicts - earlier.conflicts,
            throttles: self.throttles - earlier.throttles,
            faults: self.faults - earlier.faults,
            upstream_seconds: self.upstream_seconds - earlier.upstream_seconds,
        }
    }
}

/// A snapshot of the counts, by action (`GetItem`, `TransactWriteItems`, ...).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SimCounts {
    /// Counts per DynamoDB action.
    pub by_action: BTreeMap<String, ActionCounts>,
}

impl SimCounts {
    fn sum(&self, field: impl Fn(&ActionCounts) -> f64) -> f64 {
        self.by_action.values().map(field).sum()
    }

    /// Requests of every action.
    pub fn requests(&self) -> u64 {
        self.sum(|a| a.requests as f64) as u64
    }

    /// Requests of one action.
    pub fn requests_of(&self, action: &str) -> u64 {
        self.by_action.get(action).map_or(0, |a| a.requests)
    }

    /// Read units consumed.
    pub fn read_units(&self) -> f64 {
        self.sum(|a| a.read_units)
    }

    /// Write units consumed.
    pub fn write_units(&self) -> f64 {
        self.sum(|a| a.write_units)
    }

    /// Requests rejected for transaction conflicts.
    pub fn conflicts(&self) -> u64 {
        self.sum(|a| a.conflicts as f64) as u64
    }

    /// Requests rejected for throttling.
    pub fn throttles(&self) -> u64 {
        self.sum(|a| a.throttles as f64) as u64
    }

    /// Faults injected.
    pub fn faults(&self) -> u64 {
        self.sum(|a| a.faults as f64) as u64
    }

    /// Time DynamoDB Local spent answering, in seconds.
    pub fn upstream_seconds(&self) -> f64 {
        self.sum(|a| a.upstream_seconds)
    }

    /// What happened since `earlier` (a snapshot of the same simulator).
    pub fn since(&self, earlier: &SimCounts) -> SimCounts {
        let by_action = self
            .by_action
            .iter()
            .map(|(action, now)| {
                let before = earlier.by_action.get(action).cloned().unwrap_or_default();
                (action.clone(), now.minus(&before))
            })
            .filter(|(_, c)| c.requests > 0)
            .collect();
        SimCounts { by_action }
    }
}

impl std::fmt::Display for SimCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<20} {:>9} {:>10} {:>10} {:>9} {:>9} {:>7} {:>12}",
            "action",
            "requests",
            "read CU",
            "write CU",
            "conflicts",
            "throttles",
            "faults",
            "upstream ms"
        )?;
        for (action, c) in &self.by_action {
            writeln!(
                f,
                "{action:<20} {:>9} {:>10.0} {:>10.0} {:>9} {:>9} {:>7} {:>12.0}",
                c.requests,
                c.read_units,
                c.write_units,
                c.conflicts,
                c.throttles,
                c.faults,
                c.upstream_seconds * 1000.0
            )?;
        }
        Ok(())
    }
}

/// Who holds an item inside the simulated service right now.
#[derive(Default)]
struct Holders {
    transactions: u32,
    writes: u32,
}

/// Capacity a partition used in the current one-second window.
struct Usage {
    window: Instant,
    read: f64,
    write: f64,
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<SimConfig>,
    counts: Mutex<SimCounts>,
    held: Mutex<HashMap<ItemId, Holders>>,
    sizes: Mutex<HashMap<ItemId, usize>>,
    usage: Mutex<HashMap<PartitionId, Usage>>,
    sequence: AtomicU64,
}

/// A running simulator. It serves until the process exits.
pub struct Simulator {
    port: u16,
    shared: Arc<Shared>,
}

impl Simulator {
    /// Start a simulator on a free loopback port in front of the DynamoDB endpoint `upstream`.
    pub fn start(upstream: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        Self::listen("127.0.0.1:0".parse().expect("address"), upstream, config)
    }

    /// Start a simulator listening on `listen`.
    pub fn listen(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: SimConfig,
    ) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(listen)?;
        let shared = Arc::new(Shared {
            upstream,
            config: Mutex::new(config),
            counts: Mutex::default(),
            held: Mutex::default(),
            sizes: Mutex::default(),
            usage: Mutex::default(),
            sequence: AtomicU64::new(0),
        });
        let port = listener.local_addr()?.port();
        let serving = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let shared = serving.clone();
                std::thread::spawn(move || shared.serve(client));
            }
        });
        Ok(Simulator { port, shared })
    }

    /// The endpoint URL clients should use.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Change the behaviour from now on.
    pub fn configure(&self, change: impl FnOnce(&mut SimConfig)) {
        change(&mut self.shared.config.lock().unwrap());
    }

    /// The counts so far.
    pub fn counts(&self) -> SimCounts {
        self.shared.counts.lock().unwrap().clone()
    }
}

/// Read one HTTP/1.1 message (head and Content-Length body); None at end of stream.
fn read_message(reader: &mut impl BufRead) -> Option<(Vec<u8>, String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut target = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            } else if name.eq_ignore_ascii_case("x-amz-target") {
                target = value.trim().to_string();
            }
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, target, body))
}

/// The simulated service's verdict on a request before it reaches DynamoDB Local.
enum Admission {
    /// Forward it; release these held items afterwards (true: held by a transaction).
    Forward(Vec<(ItemId, bool)>),
    /// Answer with this instead.
    Reject(Vec<u8>),
}

impl Shared {
    fn serve(&self, client: TcpStream) {
        let _ = client.set_nodelay(true);
        let Ok(read_half) = client.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let mut writer = client;
        let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
        while let Some((head, target, body)) = read_message(&mut reader) {
            let action = target.rsplit('.').next().unwrap_or_default().to_string();
            let Some(response) = self.handle(&action, &head, &body, &mut upstream) else {
                return;
            };
            if writer.write_all(&response).is_err() {
                return;
            }
        }
    }

    fn count(&self, action: &str, update: impl FnOnce(&mut ActionCounts)) {
        let mut counts = self.counts.lock().unwrap();
        update(counts.by_action.entry(action.to_string()).or_default());
    }

    /// One request: wait, admit or reject, forward, account, wait, answer.
    fn handle(
        &self,
        action: &str,
        head: &[u8],
        body: &[u8],
        upstream: &mut Option<(BufReader<TcpStream>, TcpStream)>,
    ) -> Option<Vec<u8>> {
        let config = self.config.lock().unwrap().clone();
        self.count(action, |c| c.requests += 1);
        let half = config.latency / 2;
        std::thread::sleep(half);
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        if config.fault_every > 0 && n % config.fault_every == 0 {
            self.count(action, |c| c.faults += 1);
            std::thread::sleep(half);
            return match (n / config.fault_every) % 5 {
                0 => Some(wire::error_response(
                    "400 Bad Request",
                    "ThrottlingException",
                    "injected by the simulator",
                    None,
                )),
                1 => Some(wire::error_response(
                    "500 Internal Server Error",
                    "InternalServerError",
                    "injected by the simulator",
                    None,
                )),
                2 => Some(wire::foreign_response(
                    "502 Bad Gateway",
                    "text/html",
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                )),
                3 => Some(wire::foreign_response(
                    "503 Service Unavailable",
                    "text/plain",
                    "upstream connect error or disconnect/reset before headers",
                )),
                _ => None,
            };
        }
        let request: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
        let touched = wire::touched_items(action, &request);
        let held = match self.admit(action, &request, &touched, &config) {
            Admission::Forward(held) => held,
            Admission::Reject(answer) => {
                std::thread::sleep(half);
                return Some(answer);
            }
        };
        let forwarded = Instant::now();
        let response = self.forward(head, body, upstream);
        let upstream_seconds = forwarded.elapsed().as_secs_f64();
        self.count(action, |c| c.upstream_seconds += upstream_seconds);
        // The rest of the latency is spent inside the service, still holding the items.
        std::thread::sleep(half);
        self.release(&held);
        let (status_ok, response) = response?;
        if status_ok {
            self.account(action, &request, &touched, &response);
        }
        Some(response)
    }

    /// Decide on conflicts and throttling; hold the items of an admitted write.
    fn admit(
        &self,
        action: &str,
        request: &Json,
        touched: &[wire::Touched],
        config: &SimConfig,
    ) -> Admission {
        let transaction = action == "TransactWriteItems";
        if config.throttling {
            if let Some(answer) = self.throttled(action, request, touched, transaction, config) {
                self.count(action, |c| c.throttles += 1);
                return Admission::Reject(answer);
            }
        }
        if touched.is_empty() {
            return Admission::Forward(Vec::new());
        }
        let mut held = self.held.lock().unwrap();
        if config.conflicts {
            let busy = |id: &ItemId| {
                held.get(id)
                    .is_some_and(|h| h.transactions > 0 || (transaction && h.writes > 0))
            };
            if touched.iter().any(|t| busy(&t.id)) {
                let answer = if transaction {
                    let reasons: Vec<&str> = touched
                        .iter()
                        .map(|t| {
                            if busy(&t.id) {
                                "TransactionConflict"
                            } else {
                                "None"
                            }
                        })
                        .collect();
                    wire::cancelled_transaction(&reasons)
                } else {
                    wire::error_response(
                        "400 Bad Request",
                        "TransactionConflictException",
                        "Transaction is ongoing for the item",
                        None,
                    )
                };
                drop(held);
                self.count(action, |c| c.conflicts += 1);
                return Admission::Reject(answer);
            }
        }
        let ids: Vec<(ItemId, bool)> = touched
            .iter()
            .map(|t| (t.id.clone(), transaction))
            .collect();
        for (id, _) in &ids {
            let holders = held.entry(id.clone()).or_default();
            if transaction {
                holders.transactions += 1;
            } else {
                holders.writes += 1;
            }
        }
        Admission::Forward(ids)
    }

    fn release(&self, held_ids: &[(ItemId, bool)]) {
        let mut held = self.held.lock().unwrap();
        for (id, transaction) in held_ids {
            if let Some(holders) = held.get_mut(id) {
                if *transaction {
                    holders.transactions -= 1;
                } else {
                    holders.writes -= 1;
                }
                if holders.writes == 0 && holders.transactions == 0 {
                    held.remove(id);
                }
            }
        }
    }

    /// A throttling answer if a partition this request needs is past its limit.
    fn throttled(
        &self,
        action: &str,
        request: &Json,
        touched: &[wire::Touched],
        transaction: bool,
        config: &SimConfig,
    ) -> Option<Vec<u8>> {
        let mut usage = self.usage.lock().unwrap();
        let mut over = |partition: PartitionId, writes: bool| {
            let u = usage.entry(partition).or_insert_with(|| Usage {
                window: Instant::now(),
                read: 0.0,
                write: 0.0,
            });
            if u.window.elapsed() >= Duration::from_secs(1) {
                *u = Usage {
                    window: Instant::now(),
                    read: 0.0,
                    write: 0.0,
                };
            }
            if writes {
                u.write >= config.partition_write_units
            } else {
                u.read >= config.partition_read_units
            }
        };
        let write_over: Vec<bool> = touched
            .iter()
            .map(|t| over((t.id.0.clone(), t.id.1.clone()), true))
            .collect();
        let read_over = wire::read_partitions(action, request)
            .into_iter()
            .any(|p| over(p, false));
        if transaction && write_over.iter().any(|o| *o) {
            let reasons: Vec<&str> = write_over
                .iter()
                .map(|o| if *o { "ThrottlingError" } else { "None" })
                .collect();
            return Some(wire::cancelled_transaction(&reasons));
        }
        if read_over || write_over.iter().any(|o| *o) {
            return Some(wire::error_response(
                "400 Bad Request",
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for one or more partitions was exceeded",
                None,
            ));
        }
        None
    }

    /// Send the request to DynamoDB Local on this connection's own upstream connection,
    /// on a new one if DynamoDB Local closed the old one while it was idle.
    fn forward(
        &self,
        head: &[u8],
        body: &[u8],
        upstream: &mut Option<(BufReader<TcpStream>, TcpStream)>,
    ) -> Option<(bool, Vec<u8>)> {
        let mut request = head.to_vec();
        request.extend_from_slice(body);
        for _ in 0..2 {
            if upstream.is_none() {
                let stream = TcpStream::connect(self.upstream).ok()?;
                let _ = stream.set_nodelay(true);
                *upstream = Some((BufReader::new(stream.try_clone().ok()?), stream));
            }
            let (reader, writer) = upstream.as_mut()?;
            let answered = writer
                .write_all(&request)
                .ok()
                .and_then(|()| read_message(reader));
            let Some((head, _, body)) = answered else {
                *upstream = None;
                continue;
            };
            let ok = head.starts_with(b"HTTP/1.1 200");
            let mut response = head;
            response.extend_from_slice(&body);
            return Some((ok, response));
        }
        None
    }

    /// Charge the capacity a successful request consumed, to its action and its partitions.
    fn account(&self, action: &str, request: &Json, touched: &[wire::Touched], response: &[u8]) {
        let factor = if action == "TransactWriteItems" {
            2.0
        } else {
            1.0
        };
        let mut write_units = 0.0;
        let mut charges: Vec<(PartitionId, f64, f64)> = Vec::new();
        {
            let mut sizes = self.sizes.lock().unwrap();
            for t in touched {
                let old = sizes.get(&t.id).copied().unwrap_or(0);
                let new = match t.change {
                    Change::Put(size) => Some(size),
                    Change::Update(size) => Some(size.max(old)),
                    Change::Delete => None,
                    Change::Check => Some(old),
                };
                let units = factor * wire::write_units(old.max(new.unwrap_or(0)));
                write_units += units;
                charges.push(((t.id.0.clone(), t.id.1.clone()), 0.0, units));
                match new {
                    Some(size) => sizes.insert(t.id.clone(), size),
                    None => sizes.remove(&t.id),
                };
            }
        }
        let mut read_units = 0.0;
        let body_start = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |p| p + 4);
        if let Ok(answer) = serde_json::from_slice::<Json>(&response[body_start..]) {
            let items = wire::answered_items(action, &answer, request);
            let mut sizes = self.sizes.lock().unwrap();
            let mut per_partition: HashMap<PartitionId, usize> = HashMap::new();
            for (table, item) in &items {
                let size = wire::item_size(item);
                if let Some(id) = wire::item_id(table, item) {
                    sizes.insert(id.clone(), size);
                    *per_partition.entry((id.0, id.1)).or_default() += size;
                }
            }
            let reads = match action {
                "GetItem" => Some(wire::read_units(
                    items.first().map_or(0, |(_, i)| wire::item_size(i)),
                )),
                "Query" | "Scan" => Some(wire::read_units(
                    items.iter().map(|(_, i)| wire::item_size(i)).sum(),
                )),
                "BatchGetItem" => Some(
                    items
                        .iter()
                        .map(|(_, i)| wire::read_units(wire::item_size(i)))
                        .sum(),
                ),
                _ => None,
            };
            if let Some(units) = reads {
                read_units = units;
                let total: usize = per_partition.values().sum::<usize>().max(1);
                for (partition, bytes) in per_partition {
                    charges.push((partition, units * bytes as f64 / total as f64, 0.0));
                }
            }
        }
        {
            let mut usage = self.usage.lock().unwrap();
            for (partition, read, write) in charges {
                if let Some(u) = usage.get_mut(&partition) {
                    u.read += read;
                    u.write += write;
                }
            }
        }
        self.count(action, |c| {
            c.read_units += read_units;
            c.write_units += write_units;
        });
    }
}

/// `dynamofs simulate`: serve until killed, printing the counts when they change.
pub fn run(args: crate::cli::SimulateArgs) -> i32 {
    let config = SimConfig {
        latency: Duration::from_secs_f64(args.latency_ms.max(0.0) / 1000.0),
        conflicts: !args.no_conflicts,
        throttling: !args.no_throttling,
        ..SimConfig::default()
    };
    let simulator = match Simulator::listen(args.listen, args.upstream, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dynamofs simulate: cannot listen on {}: {e}", args.listen);
            return 1;
        }
    };
    println!(
        "simulating DynamoDB at {} in front of {} ({} ms per request)",
        simulator.endpoint(),
        args.upstream,
        args.latency_ms
    );
    let mut last = SimCounts::default();
    loop {
        std::thread::sleep(Duration::from_secs(args.report_every.max(1)));
        let now = simulator.counts();
        if now != last {
            println!("{now}");
            last = now;
        }
    }
}
