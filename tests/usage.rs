//! Usage totals (`dynamofs stat`, `df`): two clients write known files into one
//! filesystem, one of them partly in a directory they share; `stat --json` and
//! `statvfs` on a mount then show exactly the inodes, directories, files, symlinks and
//! bytes written, and again after deletions. A third client is killed with SIGKILL
//! right after its writes, so that up to a heartbeat of its changes never reaches the
//! totals; once its lease has run out, `fsck --repair` makes them exact again and
//! `stat --scan` finds no drift.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{mount_table, unique_table};

/// What a `stat --json` of `table` says, as (inodes, directories, files, symlinks, bytes).
fn stat_totals(table: &str, args: &[&str]) -> (serde_json::Value, (i64, i64, i64, i64, i64)) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = common::dynamofs_on_table("stat", table, &all);
    assert!(out.status.success(), "stat: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |key: &str| {
        json[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key} in {json}"))
    };
    let totals = (
        n("inodes"),
        n("directories"),
        n("files"),
        n("symlinks"),
        n("logical_bytes"),
    );
    (json, totals)
}

/// Wait (a heartbeat or two: each client adds its changes then) until `stat` shows
/// `want`; fails with what it showed last.
fn wait_for_totals(table: &str, want: (i64, i64, i64, i64, i64)) {
    let started = Instant::now();
    loop {
        let (json, got) = stat_totals(table, &[]);
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stat shows (inodes, directories, files, symlinks, bytes) {got:?}, want {want:?}:\n{json:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` files of `dir`, file `i` `i * 1000 + 7` bytes long; returns their bytes.
fn write_files(dir: &Path, prefix: &str, n: u64) -> i64 {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let len = i * 1000 + 7;
            std::fs::write(dir.join(format!("{prefix}{i}")), vec![b'x'; len as usize]).unwrap();
            len as i64
        })
        .sum()
}

/// Inodes in use and bytes used, as `statvfs` on `mountpoint` reports them.
fn statvfs_used(mountpoint: &Path) -> (u64, u64) {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs(3) with a valid path and an out-parameter of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    (
        st.f_files - st.f_ffree,
        (st.f_blocks - st.f_bfree) * st.f_frsize,
    )
}

#[test]
fn stat_and_df_count_what_clients_wrote_and_fsck_mends_a_crash() {
    common::require_fuse();
    let table = unique_table("Usage");
    let a = mount_table(&table, "heartbeat=1");
    let b = mount_table(&table, "heartbeat=1");

    let (bytes_a, bytes_b, bytes_shared) = std::thread::scope(|s| {
        let from_a = s
            .spawn(|| write_files(&a.join("a"), "f", 30) + write_files(&a.join("shared"), "a", 20));
        let from_b = s.spawn(|| {
            let mut bytes = write_files(&b.join("b/deep"), "f", 25);
            for i in 0..5 {
                std::os::unix::fs::symlink("deep/f0", b.join(&format!("b/link{i}"))).unwrap();
            }
            // Grown past its written length, then cut below it: the size is what counts.
            let grown = b.join("b/deep/f3");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&grown)
                .unwrap()
                .set_len(500_000)
                .unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&grown)
                .unwrap()
                .set_len(10)
                .unwrap();
            bytes += 10 - (3 * 1000 + 7);
            let shared = (0..20)
                .map(|i| {
                    std::fs::write(b.join(&format!("shared/b{i}")), [b'y'; 100]).unwrap();
                    100
                })
                .sum::<i64>();
            (bytes, shared)
        });
        let from_a = from_a.join().unwrap();
        let (from_b, shared) = from_b.join().unwrap();
        (from_a, from_b, shared)
    });
    // The root, a, shared, b and b/deep; 30 + 20 + 25 + 20 files; 5 symlinks.
    let (dirs, files, links) = (5, 95, 5);
    let bytes = bytes_a + bytes_b + bytes_shared;
    wait_for_totals(&table, (dirs + files + links, dirs, files, links, bytes));
    let (json, _) = stat_totals(&table, &[]);
    assert_eq!(json["mounted_on"].as_array().unwrap().len(), 2, "{json:#}");

    let (inodes_used, bytes_used) = statvfs_used(a.path());
    assert_eq!(
        inodes_used,
        (dirs + files + links) as u64,
        "df -i on a mount"
    );
    let block = 256 * 1024;
    assert_eq!(
        bytes_used,
        (bytes as u64).div_ceil(block) * block,
        "df on a mount: the files' bytes, in whole blocks"
    );

    // Deletions, from the other client than the one that wrote: b is gone, and half
    // the shared files (a file's inode goes once no client holds it open).
    std::fs::remove_dir_all(a.join("b")).unwrap();
    for i in 0..10 {
        std::fs::remove_file(b.join(&format!("shared/a{i}"))).unwrap();
    }
    let shared_a_removed: i64 = (0..10).map(|i| i * 1000 + 7).sum();
    let (dirs, files, links) = (dirs - 2, files - 25 - 10, 0);
    let bytes = bytes - bytes_b - shared_a_removed;
    wait_for_totals(&table, (dirs + files + links, dirs, files, links, bytes));

    // A client killed right after its writes: what it had not added yet is lost.
    let victim = mount_table(&table, "heartbeat=1");
    let victim_bytes = write_files(&victim.join("victim"), "v", 12);
    // Committed (fsyncdir commits the creates a directory's lease let it defer).
    std::fs::File::open(victim.join("victim"))
        .unwrap()
        .sync_all()
        .unwrap();
    let pid = common::daemon_pid(victim.path()).expect("the victim's daemon");
    // SAFETY: plain kill(2) of the daemon the test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    drop(victim);
    let (dirs, files) = (dirs + 1, files + 12);
    let bytes = bytes + victim_bytes;
    let (json, _) = stat_totals(&table, &["--scan"]);
    println!("after the crash: {json:#}");
    assert_eq!(
        json["scan"]["counted"]["files"].as_i64(),
        Some(files),
        "the recount sees the victim's committed files: {json:#}"
    );
    a.unmount();
    b.unmount();

    // The victim's lease runs out after three heartbeats and a grace of one.
    let started = Instant::now();
    loop {
        let out = common::dynamofs_on_table("fsck", &table, &["--repair"]);
        if out.status.success() {
            println!("{}", String::from_utf8_lossy(&out.stdout));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "fsck --repair: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (json, totals) = stat_totals(&table, &["--scan"]);
    assert_eq!(totals, (dirs + files, dirs, files, 0, bytes), "{json:#}");
    assert_eq!(
        json["scan"]["drift"],
        serde_json::json!({"inodes": 0, "directories": 0, "files": 0, "symlinks": 0, "logical_bytes": 0}),
        "{json:#}"
    );
    let out = common::dynamofs_on_table("fsck", &table, &[]);
    assert!(out.status.success(), "fsck after the repair: {out:?}");
}
