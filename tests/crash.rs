//! Crashes: a mount killed with SIGKILL at a random moment while files of up to a few
//! MiB are written, fsync'd, truncated, renamed and unlinked. Every fsync'd file must
//! survive byte for byte, and once the dead sessions' leases have run out the live
//! client's garbage collection must leave `dynamofs fsck` clean, with no repair.
//!
//! 20 rounds by default; `DYNAMOFS_CRASH_ROUNDS=200 cargo test --test crash` runs a
//! longer one. Each round's writer is seeded; the seeds are printed.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{mount_table, unique_table};

/// Writes `keep_*` files once each (fsync, then a manifest line: name and SHA-256) and
/// churns `scratch_*` files (appends, truncates, renames, unlinks) until killed.
const WRITER: &str = r#"
import hashlib, os, random, sys
root, manifest, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = random.Random(seed)
with open(manifest, "a") as m:
    for i in range(1_000_000):
        size = rnd.choice([0, 100, 70_000, rnd.randrange(1, 3 << 20)])
        data = rnd.randbytes(size)
        name = f"keep_{seed}_{i}"
        fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        m.write(f"{name} {hashlib.sha256(data).hexdigest()}\n")
        m.flush()
        scratch = os.path.join(root, f"scratch_{seed}_{i % 3}")
        with open(scratch, "ab") as f:
            f.write(rnd.randbytes(rnd.randrange(1, 2 << 20)))
        op = rnd.randrange(4)
        if op == 0:
            os.truncate(scratch, rnd.randrange(0, 1 << 20))
        elif op == 1:
            os.rename(scratch, os.path.join(root, f"scratch_{seed}_{(i + 1) % 3}"))
        elif op == 2:
            os.unlink(scratch)
"#;

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "sha256sum {}: {out:?}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn fsynced_files_survive_sigkill_and_fsck_is_clean_after_the_leases() {
    let rounds: u64 = std::env::var("DYNAMOFS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let table = unique_table("Crash");
    let survivor = mount_table(&table, "heartbeat=1");
    let work = tempfile::tempdir().unwrap();
    let manifest = work.path().join("manifest");
    let base_seed = std::process::id() as u64 * 1000;
    for round in 0..rounds {
        let seed = base_seed + round;
        let victim = mount_table(&table, "heartbeat=1");
        let pid = common::daemon_pid(victim.path()).expect("the victim's daemon");
        let mut writer = Command::new("python3")
            .args(["-c", WRITER])
            .arg(victim.path())
            .arg(&manifest)
            .arg(seed.to_string())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let alive_for = Duration::from_millis(300 + (seed * 7919) % 1700);
        std::thread::sleep(alive_for);
        // SAFETY: plain kill(2) of the daemon we started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let _ = writer.wait();
        println!("round {round}: seed {seed}, killed after {alive_for:?}");
        drop(victim);
    }

    let written: BTreeMap<String, String> = std::fs::read_to_string(&manifest)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (name, sum) = l.split_once(' ').unwrap();
            (name.to_string(), sum.to_string())
        })
        .collect();
    assert!(
        written.len() >= rounds as usize,
        "only {} files were fsync'd in {rounds} rounds",
        written.len()
    );
    let verifying = Instant::now();
    for (name, sum) in &written {
        assert_eq!(
            &sha256(&survivor.join(name)),
            sum,
            "{name} changed or was lost"
        );
    }
    println!("verified in {:?}", verifying.elapsed());

    let started = Instant::now();
    loop {
        let out = common::dynamofs_on_table("fsck", &table, &[]);
        if out.status.success() {
            println!(
                "{} fsync'd files intact; fsck clean {:?} after the last crash:\n{}",
                written.len(),
                started.elapsed(),
                String::from_utf8_lossy(&out.stdout)
            );
            break;
        }
        // fsck scans the blocks table, reading every block (DynamoDB pages a scan by
        // the data read, not returned): about half a minute for this test's data.
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "fsck still finds problems two minutes after the last crash:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "{:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
