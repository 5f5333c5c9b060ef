//! Mounted: the Prometheus endpoint (`-o metrics=HOST:PORT`) answers during a mount,
//! and its counters move with what the mount does: its DynamoDB requests and retries
//! agree with what the simulator in front of DynamoDB Local saw, with faults injected.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{dynamo_local, free_port, mount_command, mount_table, unique_table};
use dynamofs::simulator::{SimConfig, Simulator};

/// `GET path` on `port`: the status line and the body.
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Every sample of a scrape, by its name and labels.
fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// What the samples whose names start with `prefix` grew by between two scrapes.
fn grew(before: &HashMap<String, f64>, after: &HashMap<String, f64>, prefix: &str) -> f64 {
    after
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, value)| value - before.get(name).unwrap_or(&0.0))
        .sum()
}

#[test]
fn the_metrics_endpoint_counts_what_the_mount_does() {
    let config = SimConfig {
        latency: Duration::ZERO,
        conflicts: false,
        throttling: false,
        fault_every: 3,
        ..SimConfig::default()
    };
    let sim = Simulator::start(dynamo_local().addr(), config).unwrap();
    let port = free_port();
    let table = unique_table("Metrics");
    let m = mount_table(
        &table,
        &format!(
            "endpoint={},heartbeat=60,metrics=127.0.0.1:{port}",
            sim.endpoint()
        ),
    );
    assert_eq!(get(port, "/elsewhere").0, "HTTP/1.1 404 Not Found");

    let sim_before = sim.counts();
    let before = scrape(port);
    std::fs::create_dir(m.join("d")).unwrap();
    let content = vec![7u8; 10 * 1024];
    for i in 0..10 {
        std::fs::write(m.join(&format!("d/f{i}")), &content).unwrap();
    }
    assert_eq!(std::fs::read_dir(m.join("d")).unwrap().count(), 10);
    common::sh(&format!("sync '{}'", m.join("d/f0").display()));
    let after = scrape(port);
    let seen = sim.counts().since(&sim_before);

    let requests = grew(&before, &after, "dynamofs_dynamodb_requests_total");
    let retries = grew(&before, &after, "dynamofs_dynamodb_retries_total");
    let units = grew(&before, &after, "dynamofs_dynamodb_capacity_units_total");
    println!(
        "metrics: {requests} requests, {retries} retries, {units} capacity units; \
         simulator: {} requests, {} faults, {} units",
        seen.requests(),
        seen.faults(),
        seen.read_units() + seen.write_units()
    );
    // The simulator's window holds the metrics' one (its counts are read outside the
    // scrapes), so it may see a background request more, never one fewer.
    let in_window = |ours: f64, theirs: u64| ours <= theirs as f64 && theirs as f64 <= ours + 2.0;
    assert!(requests > 0.0 && in_window(requests, seen.requests()));
    assert!(seen.faults() > 0, "faults were injected");
    // As DynamoDB reports them: DynamoDB Local's are nominal (about one per request),
    // the simulator's own model of the bill is what the benchmark shows.
    assert!(units > 0.0, "consumed capacity reported");
    assert!(
        in_window(retries, seen.faults()),
        "each injected fault is retried once"
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "dynamofs_data_bytes_total{direction=\"written\"}"
        ),
        (10 * content.len()) as f64
    );
    let writes = grew(
        &before,
        &after,
        "dynamofs_fuse_operations_total{op=\"write\"}",
    );
    assert!(writes >= 10.0, "{writes} writes counted");
    assert_eq!(
        grew(
            &before,
            &after,
            "dynamofs_fuse_operation_seconds_count{op=\"write\"}"
        ),
        writes,
        "every write timed"
    );
    assert!(
        grew(
            &before,
            &after,
            "dynamofs_fuse_operations_total{op=\"lookup\"}"
        ) >= 10.0
    );
    assert!(grew(&before, &after, "dynamofs_cache_lookups_total") > 0.0);
    m.unmount();

    // A port already taken fails the mount, saying so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_command(
        &table,
        dir.path(),
        &format!(
            "endpoint={},metrics={}",
            sim.endpoint(),
            taken.local_addr().unwrap()
        ),
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("cannot serve metrics on"), "{message}");
}
