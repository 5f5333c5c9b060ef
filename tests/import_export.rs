//! `dynamofs import` and `dynamofs export`, without a mount: a tree of about 2,700
//! nodes (tokio's source and 2,000 small files in 20 directories, with hard links,
//! symlinks, a fifo, extended attributes, owners, modes and old times) is imported
//! through the simulator with a fault injected every 7 requests (throttling errors,
//! HTTP 500s and a load balancer's error page in turn); a mount then shows
//! it identical, byte for byte and attribute for attribute. A second import with
//! `--skip-existing` sends no write at all (the simulator counts them), and `export`
//! gives the same tree back.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{mount_table, unique_table};
use filetime::FileTime;

/// What the comparison looks at of one node.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    /// A file's bytes (hashed), a symlink's target.
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in order) of the names sharing this node's inode.
    first_name: PathBuf,
}

/// Every node below `top` by its relative path.
fn snapshot(top: &Path) -> BTreeMap<PathBuf, Node> {
    let mut nodes = BTreeMap::new();
    let mut first_names: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut dirs = vec![PathBuf::new()];
    let mut paths = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(top.join(&dir)).unwrap() {
            let rel = dir.join(entry.unwrap().file_name());
            if std::fs::symlink_metadata(top.join(&rel)).unwrap().is_dir() {
                dirs.push(rel.clone());
            }
            paths.push(rel);
        }
    }
    paths.sort();
    for rel in paths {
        let path = top.join(&rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let t = meta.file_type();
        let (kind, content) = if t.is_dir() {
            ("dir", Vec::new())
        } else if t.is_symlink() {
            (
                "symlink",
                std::fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if t.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let digest = bytes.chunks(4096).fold(bytes.len() as u64, |h, c| {
                c.iter()
                    .fold(h, |h, b| h.wrapping_mul(1_099_511_628_211) ^ *b as u64)
            });
            ("file", digest.to_le_bytes().to_vec())
        } else {
            ("other", Vec::new())
        };
        let xattrs = match t.is_symlink() {
            true => BTreeMap::new(),
            false => xattr::list(&path)
                .unwrap()
                .filter(|n| n.as_bytes().starts_with(b"user."))
                .map(|n| {
                    let value = xattr::get(&path, &n).unwrap().unwrap();
                    (n.to_string_lossy().into_owned(), value)
                })
                .collect(),
        };
        let first_name = first_names.entry(meta.ino()).or_insert(rel.clone()).clone();
        nodes.insert(
            rel,
            Node {
                kind,
                mode: if t.is_symlink() {
                    0
                } else {
                    meta.mode() & 0o7777
                },
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                content,
                xattrs,
                first_name,
            },
        );
    }
    nodes
}

/// The tree: tokio's source and 2,000 files of its own, with every kind of thing.
fn make_tree(top: &Path) {
    common::sh(&format!(
        "cp -a '{}' '{}/tokio'",
        common::tokio_source().display(),
        top.display()
    ));
    for d in 0..20 {
        let dir = top.join(format!("d{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            let path = dir.join(format!("f{f:03}"));
            std::fs::write(&path, format!("file {d}/{f}\n").repeat(f + 1)).unwrap();
            if f % 10 == 0 {
                xattr::set(&path, format!("user.n{f}"), format!("value {f}").as_bytes()).unwrap();
            }
            if f % 7 == 0 {
                std::os::unix::fs::chown(&path, Some(1000 + f as u32), Some(2000 + d)).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            }
            let t =
                FileTime::from_unix_time(1_000_000_000 + (d * 100) as i64 + f as i64, 123_456_789);
            filetime::set_file_mtime(&path, t).unwrap();
        }
        std::fs::hard_link(dir.join("f001"), dir.join("hard_f001")).unwrap();
        std::os::unix::fs::symlink(format!("f{d:03}"), dir.join("sym")).unwrap();
        std::os::unix::fs::symlink("../tokio/Cargo.toml", dir.join("up")).unwrap();
        filetime::set_symlink_file_times(
            dir.join("sym"),
            FileTime::from_unix_time(1_100_000_000, 0),
            FileTime::from_unix_time(1_100_000_000, 5),
        )
        .unwrap();
    }
    std::fs::hard_link(top.join("d00/f002"), top.join("d19/across")).unwrap();
    xattr::set(top.join("d03"), "user.dir", b"on a directory").unwrap();
    let fifo = std::ffi::CString::new(top.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for d in (0..20).step_by(5) {
        let dir = top.join(format!("d{d:02}"));
        filetime::set_file_mtime(&dir, FileTime::from_unix_time(1_200_000_000 + d, 0)).unwrap();
    }
}

/// Run `dynamofs` with `args`, asserting success; returns stdout.
fn dynamofs(args: &[&str]) -> String {
    let out = Command::new(common::dynamofs_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dynamofs {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number before `what` in a summary line.
fn figure(summary: &str, what: &str) -> u64 {
    let before = &summary[..summary
        .find(what)
        .unwrap_or_else(|| panic!("{what} in {summary}"))];
    before.split_whitespace().last().unwrap().parse().unwrap()
}

fn assert_same(want: &BTreeMap<PathBuf, Node>, got: &BTreeMap<PathBuf, Node>, what: &str) {
    for (path, node) in want {
        assert_eq!(got.get(path), Some(node), "{what}: {}", path.display());
    }
    let extra: Vec<_> = got.keys().filter(|p| !want.contains_key(*p)).collect();
    assert!(
        extra.is_empty(),
        "{what}: more than was imported: {extra:?}"
    );
}

#[test]
fn import_and_export_copy_a_tree_exactly_and_a_rerun_writes_nothing() {
    common::require_fuse();
    common::set_fake_credentials();
    let sim = common::simulator_without_latency();
    sim.configure(|c| c.fault_every = 7);
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    make_tree(&tree);
    let want = snapshot(&tree);
    assert!(want.len() > 2600, "the tree has {} nodes", want.len());

    let table = unique_table("Import");
    let target = format!("aws:us-east-1/{table}:/imported/here");
    let endpoint = format!("endpoint={}", sim.endpoint());
    let tree_arg = tree.to_str().unwrap();
    let before = sim.counts();
    let summary = dynamofs(&["import", "-j", "8", tree_arg, &target, "-o", &endpoint]);
    println!("{summary}");
    for (action, c) in &sim.counts().since(&before).by_action {
        println!(
            "  first run: {action}: {} requests, {} faults, {} throttles, {} conflicts",
            c.requests, c.faults, c.throttles, c.conflicts
        );
    }
    assert_eq!(figure(&summary, "failed"), 0);
    assert!(
        figure(&summary, "of them retries") > 0,
        "the faults were retried: {summary}"
    );

    let mount = mount_table(&table, "");
    assert_same(&want, &snapshot(&mount.join("imported/here")), "imported");

    sim.configure(|c| c.fault_every = 0);
    let before = sim.counts();
    let summary = dynamofs(&[
        "import",
        "--skip-existing",
        tree_arg,
        &target,
        "-o",
        &endpoint,
    ]);
    println!("{summary}");
    let rerun = sim.counts().since(&before);
    for (action, c) in &rerun.by_action {
        println!("  rerun: {action}: {} requests", c.requests);
    }
    let writes: u64 = [
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "TransactWriteItems",
        "BatchWriteItem",
    ]
    .iter()
    .map(|action| rerun.requests_of(action))
    .sum();
    assert_eq!(
        writes, 0,
        "a rerun over an unchanged tree writes nothing: {rerun:?}"
    );
    let non_dirs = want.values().filter(|n| n.kind != "dir").count() as u64;
    assert_eq!(
        figure(&summary, "unchanged and left alone"),
        non_dirs,
        "{summary}"
    );
    assert_eq!(figure(&summary, "files ("), 0, "{summary}");

    let back = work.path().join("back");
    let summary = dynamofs(&["export", &target, back.to_str().unwrap(), "-o", &endpoint]);
    println!("{summary}");
    assert_eq!(figure(&summary, "failed"), 0);
    assert_same(&want, &snapshot(&back), "exported");
    mount.unmount();
}
