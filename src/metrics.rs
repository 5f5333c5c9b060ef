//! Prometheus metrics: what a mount counts, and the endpoint that serves them
//! (`-o metrics=HOST:PORT`, `GET /metrics`, in the OpenMetrics text format, which
//! Prometheus reads).
//!
//! The counters are the process's own: one mount per process, so one set. Every layer
//! adds to them where the thing happens (the FUSE adapter its operations and bytes,
//! the DynamoDB backend its requests, retries, conflicts and throttles, the filesystem
//! its cache lookups); nothing reads them but the endpoint and the tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One label, `name="value"`.
type Label = [(&'static str, &'static str); 1];
/// Two labels.
type Labels2 = [(&'static str, &'static str); 2];

/// Latency buckets of FUSE operations: 50 µs to about 13 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    operations: Family<Label, Counter>,
    errors: Family<Label, Counter>,
    latency: Family<Label, Histogram, fn() -> Histogram>,
    requests: Family<Label, Counter>,
    retries: Family<Label, Counter>,
    conflicts: Family<Label, Counter>,
    throttles: Family<Label, Counter>,
    capacity: Family<Label, Counter<f64, AtomicU64>>,
    cache: Family<Labels2, Counter>,
    bytes: Family<Label, Counter>,
    /// Requests and retries of every action, for the summaries of the tools.
    requests_total: AtomicU64,
    retries_total: AtomicU64,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dynamofs");
        let metrics = Metrics {
            registry: Registry::default(),
            operations: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            requests: Family::default(),
            retries: Family::default(),
            conflicts: Family::default(),
            throttles: Family::default(),
            capacity: Family::default(),
            cache: Family::default(),
            bytes: Family::default(),
            requests_total: Default::default(),
            retries_total: Default::default(),
        };
        registry.register(
            "fuse_operations",
            "FUSE operations answered, by kind",
            metrics.operations.clone(),
        );
        registry.register(
            "fuse_errors",
            "FUSE operations answered with an error, by kind",
            metrics.errors.clone(),
        );
        registry.register(
            "fuse_operation_seconds",
            "Time from a FUSE request to its answer, by kind",
            metrics.latency.clone(),
        );
        registry.register(
            "dynamodb_requests",
            "DynamoDB requests sent, retries included, by action",
            metrics.requests.clone(),
        );
        registry.register(
            "dynamodb_retries",
            "DynamoDB requests sent again after a transient failure or throttling, by action",
            metrics.retries.clone(),
        );
        registry.register(
            "dynamodb_conflicts",
            "DynamoDB requests refused by a condition or cancelled by a colliding transaction, by action",
            metrics.conflicts.clone(),
        );
        registry.register(
            "dynamodb_throttles",
            "DynamoDB requests throttled, by action",
            metrics.throttles.clone(),
        );
        registry.register(
            "dynamodb_capacity_units",
            "DynamoDB capacity units consumed, read and write, by action",
            metrics.capacity.clone(),
        );
        registry.register(
            "cache_lookups",
            "Metadata cache lookups, by cache (inode, entry) and result (hit, miss)",
            metrics.cache.clone(),
        );
        registry.register(
            "data_bytes",
            "File data read and written through the mount, by direction",
            metrics.bytes.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A FUSE operation of kind `op` answered after `took`, with an error or not.
    pub fn operation(&self, op: &'static str, took: Duration, failed: bool) {
        let label = [("op", op)];
        self.operations.get_or_create(&label).inc();
        self.latency
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&label).inc();
        }
    }

    /// A DynamoDB request of `action` sent (`retry`: sent again).
    pub fn request(&self, action: &'static str, retry: bool) {
        let label = [("action", action)];
        self.requests.get_or_create(&label).inc();
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.retries.get_or_create(&label).inc();
            self.retries_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// DynamoDB requests sent by this process, retries included.
    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// DynamoDB requests this process sent again after a transient failure or throttling.
    pub fn retries_total(&self) -> u64 {
        self.retries_total.load(Ordering::Relaxed)
    }

    /// A DynamoDB request of `action` failed on a condition or a colliding transaction.
    pub fn conflict(&self, action: &'static str) {
        self.conflicts.get_or_create(&[("action", action)]).inc();
    }

    /// A DynamoDB request of `action` was throttled.
    pub fn throttle(&self, action: &'static str) {
        self.throttles.get_or_create(&[("action", action)]).inc();
    }

    /// A DynamoDB request of `action` consumed `units` capacity units.
    pub fn capacity(&self, action: &'static str, units: f64) {
        self.capacity
            .get_or_create(&[("action", action)])
            .inc_by(units);
    }

    /// A lookup in the metadata cache `cache` ("inode" or "entry").
    pub fn cache_lookup(&self, cache: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&[("cache", cache), ("result", result)])
            .inc();
    }

    /// `n` bytes of file data read or written (`direction`: "read" or "written").
    pub fn data(&self, direction: &'static str, n: usize) {
        self.bytes
            .get_or_create(&[("direction", direction)])
            .inc_by(n as u64);
    }

    /// Everything, in the OpenMetrics text format.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Listen on `addr` (HOST:PORT) for scrapes: bound here, so that a taken port or a bad
/// address fails the mount with a clear message.
pub fn listen(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Answer scrapes on `listener`, one at a time, on a thread of its own: `GET /metrics`
/// gets the metrics, anything else 404.
pub fn serve(listener: TcpListener) {
    std::thread::Builder::new()
        .name("dynamofs-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream) {
                    tracing::debug!(error = %e, "metrics scrape failed");
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::warn!(error = %e, "cannot start the metrics thread"));
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, kind, body) =
        if line.starts_with("GET ") && path.split('?').next() == Some("/metrics") {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics().text(),
            )
        } else {
            (
                "404 Not Found",
                "text/plain",
                "only /metrics is here\n".to_string(),
            )
        };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.operation("lookup", Duration::from_millis(3), false);
        metrics.operation("lookup", Duration::from_millis(3), true);
        metrics.request("GetItem", false);
        metrics.request("GetItem", true);
        metrics.cache_lookup("inode", true);
        metrics.data("read", 4096);
        let text = metrics.text();
        for line in [
            "dynamofs_fuse_operations_total{op=\"lookup\"} 2",
            "dynamofs_fuse_errors_total{op=\"lookup\"} 1",
            "dynamofs_fuse_operation_seconds_count{op=\"lookup\"} 2",
            "dynamofs_dynamodb_requests_total{action=\"GetItem\"} 2",
            "dynamofs_dynamodb_retries_total{action=\"GetItem\"} 1",
            "dynamofs_cache_lookups_total{cache=\"inode\",result=\"hit\"} 1",
            "dynamofs_data_bytes_total{direction=\"read\"} 4096",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
