//! The mount daemon's memory stays bounded: copying a 1 GiB file in and out
//! (`DYNAMOFS_RSS_MIB`) through a mount keeps its peak resident size under 300 MiB,
//! whatever the file's size (write buffers and block caches are bounded per file).

mod common;

use std::process::Command;

use common::{mount_table, sh, unique_table};

const LIMIT_MIB: u64 = 300;

/// Peak resident size of process `pid`, in MiB (`VmHWM`).
fn peak_rss_mib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[test]
fn copying_a_big_file_in_and_out_keeps_the_daemon_small() {
    let mib: u64 = std::env::var("DYNAMOFS_RSS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let table = unique_table("Memory");
    let m = mount_table(&table, "");
    let out = Command::new("pgrep")
        .args(["-f", &format!("dynamofs mount aws:us-east-1/{table} ")])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid = pids
        .lines()
        .next()
        .expect("the mount daemon's pid")
        .to_string();
    let source = tempfile::NamedTempFile::new().unwrap();
    sh(&format!(
        "head -c {mib}M /dev/urandom > '{}'",
        source.path().display()
    ));
    let inside = m.join("big");
    sh(&format!(
        "cp '{}' '{}'",
        source.path().display(),
        inside.display()
    ));
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let copied_out = tempfile::NamedTempFile::new().unwrap();
    sh(&format!(
        "cp '{}' '{}' && cmp '{}' '{}'",
        inside.display(),
        copied_out.path().display(),
        source.path().display(),
        copied_out.path().display()
    ));
    let peak = peak_rss_mib(&pid);
    println!("memory: the mount daemon peaked at {peak} MiB copying {mib} MiB in and out");
    assert!(
        peak < LIMIT_MIB,
        "the mount daemon peaked at {peak} MiB (limit {LIMIT_MIB} MiB)"
    );
}
