//! Faults: throttling, server errors (DynamoDB's own and a proxy's HTML pages) and
//! dropped connections injected between the client and DynamoDB,
//! and DynamoDB Local stopped and restarted under a live mount.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{dynamo_local, mount_table, start_dynamo_local, unique_table};
use dynamofs::simulator::{SimConfig, Simulator};

fn content(i: usize) -> Vec<u8> {
    (0..i * 37_000 + 11).map(|b| (b * 131 + i) as u8).collect()
}

#[test]
fn throttling_and_server_errors_are_retried_invisibly() {
    let faults = SimConfig {
        latency: Duration::ZERO,
        conflicts: false,
        throttling: false,
        fault_every: 3,
        ..SimConfig::default()
    };
    let proxy = Simulator::start(dynamo_local().addr(), faults).unwrap();
    let table = unique_table("Faulty");
    let m = mount_table(&table, &format!("endpoint={}", proxy.endpoint()));
    fs::create_dir(m.join("dir")).unwrap();
    for i in 0..20 {
        fs::write(m.join(&format!("dir/f{i}")), content(i)).unwrap();
    }
    fs::rename(m.join("dir"), m.join("moved")).unwrap();
    fs::hard_link(m.join("moved/f3"), m.join("link")).unwrap();
    fs::remove_file(m.join("moved/f4")).unwrap();
    for i in (0..20).filter(|i| *i != 4) {
        assert_eq!(
            fs::read(m.join(&format!("moved/f{i}"))).unwrap(),
            content(i),
            "file {i}"
        );
    }
    assert_eq!(fs::read(m.join("link")).unwrap(), content(3));
    let counts = proxy.counts();
    let injected = counts.faults();
    println!(
        "faults: {injected} throttles, 500s, HTML 502s, 503s and dropped connections injected, {} requests in all",
        counts.requests()
    );
    assert!(injected >= 30, "only {injected} faults injected");
    m.unmount();

    // Nothing was lost or left half done, as a mount without faults sees it.
    let clean = mount_table(&table, "");
    assert_eq!(fs::read_dir(clean.join("moved")).unwrap().count(), 19);
    assert_eq!(fs::read(clean.join("moved/f19")).unwrap(), content(19));
}

#[test]
fn a_mount_rides_out_a_dynamodb_restart() {
    common::require_fuse();
    dynamo_local();
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut local = start_dynamo_local(port, Some(data.path()));
    let table = unique_table("Restart");
    let m = mount_table(&table, &format!("endpoint=http://127.0.0.1:{port}"));
    fs::write(m.join("before"), b"written before the outage").unwrap();
    // DynamoDB Local acknowledges a TransactWriteItems a moment before its -dbPath file
    // holds it (checked: a transaction answered just before a SIGKILL can be gone after
    // the restart, a single PutItem is not). The real service is durable on ack; this
    // test is about the mount riding out the outage, so let Local settle first.
    std::thread::sleep(Duration::from_millis(500));
    local.stop();
    let path = m.join("during");
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        fs::write(&path, b"written across the outage").map(|()| started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(2));
    let _restarted = start_dynamo_local(port, Some(data.path()));
    let took = writer
        .join()
        .unwrap()
        .expect("the write waits for DynamoDB to come back");
    println!("restart: a write issued during a 2 s outage completed after {took:?}");
    assert_eq!(
        fs::read(m.join("before")).unwrap(),
        b"written before the outage"
    );
    assert_eq!(
        fs::read(m.join("during")).unwrap(),
        b"written across the outage"
    );
}

#[test]
fn an_outage_past_the_retry_budget_is_eio_and_the_mount_recovers() {
    common::require_fuse();
    dynamo_local();
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut local = start_dynamo_local(port, Some(data.path()));
    let table = unique_table("Outage");
    let m = mount_table(
        &table,
        &format!("endpoint={endpoint},retry_budget=4,timeout=2"),
    );
    fs::write(m.join("before"), b"written before the outage").unwrap();
    // See the restart test: let DynamoDB Local's file catch up with its answers.
    std::thread::sleep(Duration::from_millis(500));
    local.stop();

    // A copy running into the outage fails with EIO once the budget is spent.
    let tree = tempfile::tempdir().unwrap();
    for i in 0..20 {
        fs::write(tree.path().join(format!("f{i}")), content(i)).unwrap();
    }
    let started = Instant::now();
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(tree.path())
        .arg(m.join("during"))
        .output()
        .unwrap();
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&copy.stderr);
    println!("outage: cp failed after {took:?}: {said}");
    assert!(!copy.status.success());
    assert!(said.contains("Input/output error"), "{said}");
    assert!(took < Duration::from_secs(20), "EIO only after {took:?}");
    let log = fs::read_to_string(&m.log).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("retry_budget"))
        .unwrap_or_else(|| panic!("no warning says why:\n{log}"));
    assert!(
        !warning.contains("DispatchFailure("),
        "a debug dump: {warning}"
    );

    let _restarted = start_dynamo_local(port, Some(data.path()));
    fs::write(m.join("after"), b"written after the outage").unwrap();
    assert_eq!(
        fs::read(m.join("before")).unwrap(),
        b"written before the outage"
    );
    assert_eq!(
        fs::read(m.join("after")).unwrap(),
        b"written after the outage"
    );
    let started = Instant::now();
    m.unmount();
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = std::process::Command::new(common::dynamofs_bin())
        .args(["fsck", &format!("aws:us-east-1/{table}"), "-o"])
        .arg(format!("endpoint={endpoint}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "fsck after the outage: {out:?}");
}
