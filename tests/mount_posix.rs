//! Mounted: the POSIX surface of a real FUSE mount on DynamoDB Local, driven by
//! ordinary syscalls, with the errno of every refusal.

mod common;

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{mount_table, unique_table, Mounted};

fn errno<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    result
        .expect_err("the call should have failed")
        .raw_os_error()
        .expect("an OS error")
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno(rc: i32) -> i32 {
    assert_eq!(rc, -1, "the call should have failed");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn mounted() -> Mounted {
    mount_table(&unique_table("Posix"), "allow_other")
}

#[test]
fn files_directories_and_their_errnos() {
    let m = mounted();
    let f = m.join("a.txt");
    fs::write(&f, b"hello").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello");
    assert_eq!(
        errno(OpenOptions::new().write(true).create_new(true).open(&f)),
        libc::EEXIST
    );
    assert_eq!(errno(fs::read(m.join("missing"))), libc::ENOENT);
    fs::create_dir(m.join("d")).unwrap();
    assert_eq!(errno(fs::create_dir(m.join("d"))), libc::EEXIST);
    assert_eq!(errno(fs::create_dir(m.join("a.txt"))), libc::EEXIST);
    assert_eq!(errno(fs::write(m.join("a.txt/x"), b"")), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(m.join("d"))), libc::EISDIR);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(m.join("d"))),
        libc::EISDIR
    );
    assert_eq!(errno(fs::remove_dir(m.join("a.txt"))), libc::ENOTDIR);
    fs::write(m.join("d/inner"), b"x").unwrap();
    assert_eq!(errno(fs::remove_dir(m.join("d"))), libc::ENOTEMPTY);
    fs::remove_file(m.join("d/inner")).unwrap();
    fs::remove_dir(m.join("d")).unwrap();
    assert_eq!(errno(fs::metadata(m.join("d"))), libc::ENOENT);

    // Names: 255 bytes is fine, 256 is ENAMETOOLONG; any bytes but '/' and NUL round-trip.
    fs::write(m.join(&"n".repeat(255)), b"long").unwrap();
    assert_eq!(
        errno(fs::write(m.join(&"n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs::create_dir(m.join(&"n".repeat(256)))),
        libc::ENAMETOOLONG
    );
    let odd: &[u8] = b"caf\xe9 \x01\xff\\name";
    fs::write(m.path().join(OsStr::from_bytes(odd)), b"latin1").unwrap();
    let names: Vec<Vec<u8>> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert!(
        names.iter().any(|n| n == odd),
        "non-UTF-8 name listed exactly: {names:?}"
    );
    assert_eq!(
        fs::read(m.path().join(OsStr::from_bytes(odd))).unwrap(),
        b"latin1"
    );

    // Directory link counts: 2 + subdirectories.
    fs::create_dir_all(m.join("p/c1")).unwrap();
    fs::create_dir(m.join("p/c2")).unwrap();
    assert_eq!(fs::metadata(m.join("p")).unwrap().nlink(), 4);
    fs::remove_dir(m.join("p/c2")).unwrap();
    assert_eq!(fs::metadata(m.join("p")).unwrap().nlink(), 3);
}

#[test]
fn links_symlinks_fifos_and_attributes() {
    let m = mounted();
    let f = m.join("f");
    fs::write(&f, b"data").unwrap();
    fs::hard_link(&f, m.join("g")).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(&f).unwrap().ino(),
        fs::metadata(m.join("g")).unwrap().ino()
    );
    assert_eq!(errno(fs::hard_link(&f, m.join("g"))), libc::EEXIST);
    fs::create_dir(m.join("dir")).unwrap();
    assert_eq!(
        errno(fs::hard_link(m.join("dir"), m.join("dir2"))),
        libc::EPERM
    );
    fs::remove_file(&f).unwrap();
    assert_eq!(fs::metadata(m.join("g")).unwrap().nlink(), 1);
    assert_eq!(fs::read(m.join("g")).unwrap(), b"data");

    std::os::unix::fs::symlink("g", m.join("s")).unwrap();
    assert_eq!(fs::read_link(m.join("s")).unwrap(), Path::new("g"));
    assert_eq!(fs::read(m.join("s")).unwrap(), b"data");
    assert!(fs::symlink_metadata(m.join("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(errno(fs::read_link(m.join("g"))), libc::EINVAL);

    // SAFETY: valid path string.
    assert_eq!(
        unsafe { libc::mkfifo(cpath(&m.join("fifo")).as_ptr(), 0o640) },
        0
    );
    let meta = fs::metadata(m.join("fifo")).unwrap();
    assert_eq!(meta.mode() & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!(meta.mode() & 0o777, 0o640);

    fs::set_permissions(m.join("g"), fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(fs::metadata(m.join("g")).unwrap().mode() & 0o7777, 0o604);
    std::os::unix::fs::chown(m.join("g"), Some(1234), Some(4321)).unwrap();
    let meta = fs::metadata(m.join("g")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));

    // utimens with nanoseconds.
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    // SAFETY: valid path and two timespecs.
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(&m.join("g")).as_ptr(),
                times.as_ptr(),
                0,
            )
        },
        0
    );
    let meta = fs::metadata(m.join("g")).unwrap();
    assert_eq!(
        (meta.atime(), meta.atime_nsec()),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_500_000_000, 987_654_321)
    );

    // statfs
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(cpath(m.path()).as_ptr(), &mut st) },
        0
    );
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_blocks > 0 && st.f_bavail > 0);
}

#[test]
fn permissions_are_checked_for_other_users() {
    let m = mounted();
    fs::write(m.join("secret"), b"s").unwrap();
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.join("public"), b"p").unwrap();
    fs::set_permissions(m.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(m.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |script: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "sh",
                "-c",
                script,
            ])
            .current_dir(m.path())
            .output()
            .unwrap()
    };
    let out = as_nobody("cat public");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"p");
    let out = as_nobody("cat secret");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = as_nobody("chmod 777 public");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted"),
        "{out:?}"
    );
    let out = as_nobody("echo x > new");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert_eq!(
        fs::metadata(m.join("public")).unwrap().mode() & 0o777,
        0o644
    );
}

#[test]
fn a_write_by_another_user_clears_setuid_and_setgid() {
    let m = mounted();
    fs::set_permissions(m.path(), fs::Permissions::from_mode(0o777)).unwrap();
    for (name, mode, how) in [
        ("suid", 0o4777, "echo x >> suid"),
        ("sgid", 0o2777, "echo x >> sgid"),
        ("both", 0o6777, "truncate -s 1 both"),
    ] {
        fs::write(m.join(name), b"data").unwrap();
        fs::set_permissions(m.join(name), fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sh", "-c", how])
            .current_dir(m.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(
            fs::metadata(m.join(name)).unwrap().mode() & 0o7777,
            0o777,
            "{name}"
        );
    }
    // Setgid without group execute is mandatory locking, not a privilege: it stays.
    fs::write(m.join("lockish"), b"data").unwrap();
    fs::set_permissions(m.join("lockish"), fs::Permissions::from_mode(0o2767)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", "echo x >> lockish"])
        .current_dir(m.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::metadata(m.join("lockish")).unwrap().mode() & 0o7777,
        0o2767
    );
}

#[test]
fn reads_and_writes_random_sparse_append_truncate() {
    let m = mounted();
    let path = m.join("data");
    let mut model = vec![0u8; 0];
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..60 {
        let offset = next() % (3 * 1024 * 1024);
        let len = (next() % (300 * 1024)) as usize + 1;
        let fill: Vec<u8> = (0..len).map(|i| (i as u64 ^ offset) as u8).collect();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&fill).unwrap();
        let end = offset as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&fill);
    }
    drop(file);
    assert_eq!(fs::read(&path).unwrap(), model, "random writes read back");

    // Sparse: a hole reads back as zeros.
    let sparse = m.join("sparse");
    let mut file = File::create(&sparse).unwrap();
    file.seek(SeekFrom::Start(10 * 1024 * 1024)).unwrap();
    file.write_all(b"end").unwrap();
    drop(file);
    let content = fs::read(&sparse).unwrap();
    assert_eq!(content.len(), 10 * 1024 * 1024 + 3);
    assert!(content[..10 * 1024 * 1024].iter().all(|b| *b == 0));
    assert_eq!(&content[10 * 1024 * 1024..], b"end");

    // Append.
    let log = m.join("log");
    for line in ["one\n", "two\n", "three\n"] {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    }
    assert_eq!(fs::read_to_string(&log).unwrap(), "one\ntwo\nthree\n");

    // Truncate down then up: the cut bytes never come back.
    let t = m.join("trunc");
    fs::write(&t, vec![7u8; 600 * 1024]).unwrap();
    File::options()
        .write(true)
        .open(&t)
        .unwrap()
        .set_len(300 * 1024 + 5)
        .unwrap();
    File::options()
        .write(true)
        .open(&t)
        .unwrap()
        .set_len(700 * 1024)
        .unwrap();
    let content = fs::read(&t).unwrap();
    assert_eq!(content.len(), 700 * 1024);
    assert!(content[..300 * 1024 + 5].iter().all(|b| *b == 7));
    assert!(
        content[300 * 1024 + 5..].iter().all(|b| *b == 0),
        "truncated bytes reappeared"
    );
    // O_TRUNC
    fs::write(&t, b"short").unwrap();
    assert_eq!(fs::read(&t).unwrap(), b"short");
    assert_eq!(
        errno(
            File::options()
                .write(true)
                .open(m.path())
                .map(|f| f.set_len(0))
        ),
        libc::EISDIR
    );

    // An unlinked file stays readable through an open descriptor.
    let u = m.join("unlinked");
    fs::write(&u, b"still here").unwrap();
    let mut open = File::open(&u).unwrap();
    fs::remove_file(&u).unwrap();
    assert_eq!(errno(fs::metadata(&u)), libc::ENOENT);
    let mut buf = String::new();
    open.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "still here");
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    // SAFETY: valid paths; renameat2 reads them only.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cpath(from).as_ptr(),
            libc::AT_FDCWD,
            cpath(to).as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        0
    } else {
        last_errno(rc)
    }
}

#[test]
fn renames_and_their_errnos() {
    let m = mounted();
    fs::create_dir_all(m.join("a/b/c")).unwrap();
    fs::write(m.join("a/b/c/file"), b"deep").unwrap();
    fs::rename(m.join("a/b"), m.join("moved")).unwrap();
    assert_eq!(fs::read(m.join("moved/c/file")).unwrap(), b"deep");
    assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 2);
    assert_eq!(
        errno(fs::rename(m.join("moved"), m.join("moved/c/inside"))),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs::rename(m.join("nothing"), m.join("x"))),
        libc::ENOENT
    );

    fs::write(m.join("f1"), b"one").unwrap();
    fs::write(m.join("f2"), b"two").unwrap();
    fs::rename(m.join("f1"), m.join("f2")).unwrap();
    assert_eq!(fs::read(m.join("f2")).unwrap(), b"one");
    assert_eq!(errno(fs::metadata(m.join("f1"))), libc::ENOENT);

    fs::create_dir(m.join("empty")).unwrap();
    fs::rename(m.join("a"), m.join("empty")).unwrap();
    assert_eq!(
        errno(fs::rename(m.join("empty"), m.join("moved"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(fs::rename(m.join("f2"), m.join("moved"))),
        libc::EISDIR
    );
    assert_eq!(
        errno(fs::rename(m.join("moved"), m.join("f2"))),
        libc::ENOTDIR
    );

    fs::write(m.join("x"), b"x").unwrap();
    fs::write(m.join("y"), b"y").unwrap();
    assert_eq!(
        renameat2(&m.join("x"), &m.join("y"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        renameat2(&m.join("x"), &m.join("y"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(m.join("x")).unwrap(), b"y");
    assert_eq!(fs::read(m.join("y")).unwrap(), b"x");
    assert_eq!(
        renameat2(&m.join("x"), &m.join("moved"), libc::RENAME_EXCHANGE),
        0
    );
    assert!(fs::metadata(m.join("x")).unwrap().is_dir());
    assert_eq!(fs::read(m.join("moved")).unwrap(), b"y");
    assert_eq!(
        renameat2(&m.join("y"), &m.join("none"), libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    assert_eq!(
        renameat2(&m.join("y"), &m.join("z"), libc::RENAME_NOREPLACE),
        0
    );

    // Across filesystems the kernel answers EXDEV.
    let outside = tempfile::tempdir().unwrap();
    assert_eq!(
        errno(fs::rename(m.join("z"), outside.path().join("z"))),
        libc::EXDEV
    );
}

fn xattr_set(path: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let n = CString::new(name).unwrap();
    // SAFETY: valid path, name and value buffer.
    let rc = unsafe {
        libc::setxattr(
            cpath(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 {
        0
    } else {
        last_errno(rc)
    }
}

fn xattr_get(path: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; size];
    // SAFETY: buf has `size` bytes.
    let rc = unsafe {
        libc::getxattr(
            cpath(path).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            size,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

#[test]
fn extended_attributes() {
    let m = mounted();
    let f = m.join("f");
    fs::write(&f, b"").unwrap();
    assert_eq!(xattr_set(&f, "user.color", b"blue", 0), 0);
    assert_eq!(xattr_get(&f, "user.color", 64), Ok(b"blue".to_vec()));
    assert_eq!(xattr_get(&f, "user.color", 2), Err(libc::ERANGE));
    assert_eq!(xattr_get(&f, "user.none", 64), Err(libc::ENODATA));
    assert_eq!(
        xattr_set(&f, "user.color", b"red", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(
        xattr_set(&f, "user.size", b"big", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(xattr_set(&f, "user.size", &[0, 1, 2, 255], 0), 0);
    let mut list = vec![0u8; 256];
    // SAFETY: list has 256 bytes.
    let n = unsafe { libc::listxattr(cpath(&f).as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    list.truncate(n as usize);
    assert_eq!(list, b"user.color\0user.size\0");
    let name = CString::new("user.color").unwrap();
    // SAFETY: valid strings.
    assert_eq!(
        unsafe { libc::removexattr(cpath(&f).as_ptr(), name.as_ptr()) },
        0
    );
    assert_eq!(xattr_get(&f, "user.color", 64), Err(libc::ENODATA));
    assert_eq!(xattr_get(&f, "user.size", 64), Ok(vec![0, 1, 2, 255]));
}

#[test]
fn readdir_offsets_stay_stable_while_entries_change() {
    let m = mounted();
    let dir = m.join("many");
    fs::create_dir(&dir).unwrap();
    let name = |i: usize| format!("{i:05}-{}", "x".repeat(120));
    for i in 0..600 {
        File::create(dir.join(name(i))).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut entries = fs::read_dir(&dir).unwrap();
    for _ in 0..100 {
        assert!(seen.insert(entries.next().unwrap().unwrap().file_name()));
    }
    // Change the directory under the open handle: remove some, add some.
    for i in (0..600).step_by(3) {
        fs::remove_file(dir.join(name(i))).unwrap();
    }
    for i in 600..700 {
        File::create(dir.join(name(i))).unwrap();
    }
    for entry in entries {
        assert!(
            seen.insert(entry.unwrap().file_name()),
            "an entry was listed twice"
        );
    }
    for i in (0..600).filter(|i| i % 3 != 0) {
        assert!(
            seen.contains(OsStr::new(&name(i))),
            "entry {i} that existed throughout was skipped"
        );
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 400 + 100);
}

#[test]
fn posix_acls_are_refused_so_cp_a_keeps_modes() {
    let m = mounted();
    let f = m.join("f");
    fs::write(&f, b"").unwrap();
    // The ACL `cp -a` writes for mode 0644: user::rw-, group::r--, other::r--.
    let acl = b"\x02\0\0\0\x01\0\x06\0\xff\xff\xff\xff\x04\0\x04\0\xff\xff\xff\xff\x20\0\x04\0\xff\xff\xff\xff";
    assert_eq!(
        xattr_set(&f, "system.posix_acl_access", acl, 0),
        libc::EOPNOTSUPP
    );
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/file"), b"x").unwrap();
    fs::set_permissions(src.path().join("d/file"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(src.path().join("d"), fs::Permissions::from_mode(0o751)).unwrap();
    common::sh(&format!(
        "cp -a '{}/d' '{}/d'",
        src.path().display(),
        m.path().display()
    ));
    assert_eq!(fs::metadata(m.join("d")).unwrap().mode() & 0o7777, 0o751);
    assert_eq!(
        fs::metadata(m.join("d/file")).unwrap().mode() & 0o7777,
        0o640
    );
}
