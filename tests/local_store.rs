//! Mounted, `local:`: the embedded store's file stays compact — the space of
//! overwritten and deleted data is reused, and given back — and `dynamofs status` and
//! `df` report it. (The multi-client layers run on `local:` files too: see
//! `scripts/test.sh`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{dynamofs_bin, mount_local, sh};

const BIG_MIB: u64 = 128;

/// A crate's source tree from the cargo registry (tokio's when it is there).
fn source_tree() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let index = std::fs::read_dir(home.join("registry/src"))
        .expect("cargo registry sources")
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(&index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    crates.sort();
    let named = |prefix: &str| {
        crates
            .iter()
            .find(|c| c.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .cloned()
    };
    named("tokio-1.")
        .or_else(|| named("tokio-"))
        .expect("tokio's source in the cargo registry")
}

/// The bytes of every regular file under `dir`.
fn file_bytes(dir: &Path) -> u64 {
    sh(&format!(
        "find '{}' -type f -printf '%s\\n' | awk '{{s += $1}} END {{print s + 0}}'",
        dir.display()
    ))
    .trim()
    .parse()
    .unwrap()
}

/// The store's file and its write-ahead log, on the disk.
fn store_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_os_string();
    wal.push("-wal");
    std::fs::metadata(db).unwrap().len() + std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
}

fn status_json(db: &Path) -> serde_json::Value {
    let out = Command::new(dynamofs_bin())
        .args(["status", "--json"])
        .arg(format!("local:{}", db.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_local_file_reuses_the_space_of_overwritten_and_deleted_data() {
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("fs.db");
    let mount = mount_local(&db);
    let big = mount.join("big");
    for _ in 0..3 {
        sh(&format!(
            "head -c {} /dev/urandom > '{}'",
            BIG_MIB << 20,
            big.display()
        ));
    }
    let tree = source_tree();
    sh(&format!(
        "cp -a '{}' '{}'",
        tree.display(),
        mount.join("tree").display()
    ));
    let live = file_bytes(mount.path());
    assert!(live > BIG_MIB << 20);

    // Mounted: status (another process) and df see the file in use.
    let status = status_json(&db);
    let used = status["space"]["used_bytes"].as_u64().unwrap();
    let df_used: u64 = sh(&format!(
        "df -B1 --output=used '{}' | tail -1",
        mount.path().display()
    ))
    .trim()
    .parse()
    .unwrap();
    println!(
        "live data {live} B; status: {} B in the file, {used} B in use; df: {df_used} B used",
        status["space"]["file_bytes"]
    );
    // The random file does not compress (the tree does): at least it is in use.
    assert!(
        used >= BIG_MIB << 20,
        "status: {used} B in use for {live} B of data"
    );
    let mut file = status["space"]["file_bytes"].as_u64().unwrap();
    // Mounted, the write-ahead log comes on top: it is emptied once writes pause.
    for _ in 0..20 {
        if file as f64 <= 1.3 * live as f64 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        file = status_json(&db)["space"]["file_bytes"].as_u64().unwrap();
    }
    println!("mounted, idle: {file} B on disk");
    assert!(
        file as f64 <= 1.3 * live as f64,
        "{file} B on disk for {live} B of data, mounted and idle"
    );
    // df counts whole filesystem blocks (256 KiB).
    assert!(
        df_used.abs_diff(used) <= 256 * 1024,
        "df says {df_used} B used, status {used} B"
    );
    mount.unmount();
    let on_disk = store_bytes(&db);
    println!(
        "after three {BIG_MIB} MiB writes and {}: {on_disk} B on disk for {live} B of data ({:.2}x)",
        tree.display(),
        on_disk as f64 / live as f64
    );
    assert!(
        on_disk as f64 <= 1.3 * live as f64,
        "{on_disk} B on disk for {live} B of data"
    );

    // Deleted data's space goes back to the operating system.
    let mount = mount_local(&db);
    std::fs::remove_file(mount.join("big")).unwrap();
    let tree_bytes = file_bytes(mount.path());
    mount.unmount();
    let on_disk = store_bytes(&db);
    println!("after deleting the big file: {on_disk} B on disk for {tree_bytes} B of data");
    assert!(
        on_disk < tree_bytes * 3 + (32 << 20),
        "{on_disk} B on disk for {tree_bytes} B of data"
    );
}
