//! Mounted: fcntl and flock locks across two mounts of one table, waiting, EINTR,
//! lease expiry after a client is killed, `dynamofs status`, and SQLite on two mounts.

mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{mount_table, unique_table, Mounted};

const HEARTBEAT: &str = "heartbeat=1";

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// fcntl(F_SETLK / F_SETLKW); the errno on failure.
fn set_lock(file: &File, wait: bool, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock_struct(typ, start, len);
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: valid descriptor and flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// fcntl(F_GETLK): the lock that blocks `typ` over the range, if any.
fn get_lock(file: &File, typ: i32, start: i64, len: i64) -> Option<(i32, i64, i64, i32)> {
    let mut fl = flock_struct(typ, start, len);
    // SAFETY: valid descriptor and flock.
    assert_eq!(
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0
    );
    (fl.l_type as i32 != libc::F_UNLCK).then_some((
        fl.l_type as i32,
        fl.l_start,
        fl.l_len,
        fl.l_pid,
    ))
}

fn flock(file: &File, op: i32) -> Result<(), i32> {
    // SAFETY: valid descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn open_rw(path: &Path) -> File {
    File::options().read(true).write(true).open(path).unwrap()
}

fn status_json(table: &str) -> serde_json::Value {
    let out = common::dynamofs_on_table("status", table, &["--json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn two_mounts(prefix: &str) -> (String, Mounted, Mounted) {
    let table = unique_table(prefix);
    let a = mount_table(&table, HEARTBEAT);
    let b = mount_table(&table, HEARTBEAT);
    fs::write(a.join("f"), vec![0u8; 4096]).unwrap();
    (table, a, b)
}

#[test]
fn fcntl_locks_exclude_share_split_and_report_across_mounts() {
    let (table, a, b) = two_mounts("Fcntl");
    let (fa, fb) = (open_rw(&a.join("f")), open_rw(&b.join("f")));

    set_lock(&fa, false, libc::F_WRLCK, 0, 100).unwrap();
    assert_eq!(
        set_lock(&fb, false, libc::F_WRLCK, 0, 10),
        Err(libc::EAGAIN)
    );
    assert_eq!(
        set_lock(&fb, false, libc::F_RDLCK, 99, 1),
        Err(libc::EAGAIN)
    );
    let held =
        get_lock(&fb, libc::F_WRLCK, 0, 10).expect("F_GETLK reports the other client's lock");
    assert_eq!((held.0, held.1, held.2), (libc::F_WRLCK, 0, 100));
    assert_eq!(
        held.3,
        std::process::id() as i32,
        "F_GETLK names the holder's pid"
    );
    set_lock(&fb, false, libc::F_WRLCK, 100, 50).unwrap();

    // Unlocking the middle splits A's lock.
    set_lock(&fa, false, libc::F_UNLCK, 40, 20).unwrap();
    set_lock(&fb, false, libc::F_WRLCK, 40, 20).unwrap();
    assert_eq!(
        set_lock(&fb, false, libc::F_WRLCK, 0, 10),
        Err(libc::EAGAIN)
    );
    assert_eq!(
        set_lock(&fb, false, libc::F_WRLCK, 60, 10),
        Err(libc::EAGAIN)
    );

    // Shared read locks coexist; a write lock over them does not.
    set_lock(&fa, false, libc::F_RDLCK, 1000, 100).unwrap();
    set_lock(&fb, false, libc::F_RDLCK, 1050, 100).unwrap();
    assert_eq!(
        set_lock(&fa, false, libc::F_WRLCK, 1100, 10),
        Err(libc::EAGAIN)
    );
    assert_eq!(
        get_lock(&fa, libc::F_RDLCK, 1100, 10),
        None,
        "read locks do not block readers"
    );

    let status = status_json(&table);
    let sessions = status["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{status}");
    assert!(
        sessions
            .iter()
            .all(|s| s["alive"] == true && !s["locks"].as_array().unwrap().is_empty()),
        "{status}"
    );

    // Closing any descriptor of the file releases the process's locks on it (POSIX).
    drop(File::open(a.join("f")).unwrap());
    set_lock(&fb, false, libc::F_WRLCK, 0, 40).unwrap();
}

#[test]
fn flock_excludes_across_mounts_until_close() {
    let (_, a, b) = two_mounts("Flock");
    let fa = File::open(a.join("f")).unwrap();
    flock(&fa, libc::LOCK_EX).unwrap();
    let fb = File::open(b.join("f")).unwrap();
    assert_eq!(
        flock(&fb, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    assert_eq!(
        flock(&fb, libc::LOCK_SH | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    // The kernel sends the unlock of a closed file's flock lock after close() returns.
    drop(fa);
    let closed = Instant::now();
    while flock(&fb, libc::LOCK_EX | libc::LOCK_NB) == Err(libc::EWOULDBLOCK) {
        assert!(
            closed.elapsed() < Duration::from_secs(3),
            "the lock outlived its file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    flock(&fb, libc::LOCK_UN).unwrap();
    let fa = File::open(a.join("f")).unwrap();
    flock(&fa, libc::LOCK_SH | libc::LOCK_NB).unwrap();
    flock(&fb, libc::LOCK_SH | libc::LOCK_NB).unwrap();
}

#[test]
fn setlkw_wakes_after_release_and_stops_on_a_signal() {
    let (_, a, b) = two_mounts("Wait");
    let fa = open_rw(&a.join("f"));
    set_lock(&fa, false, libc::F_WRLCK, 0, 0).unwrap();

    let path = b.join("f");
    let waiter = std::thread::spawn(move || {
        let fb = open_rw(&path);
        let started = Instant::now();
        let result = set_lock(&fb, true, libc::F_WRLCK, 0, 0);
        (result, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !waiter.is_finished(),
        "F_SETLKW returned while the lock was held"
    );
    set_lock(&fa, false, libc::F_UNLCK, 0, 0).unwrap();
    let (result, waited) = waiter.join().unwrap();
    assert_eq!(result, Ok(()));
    assert!(
        waited < Duration::from_secs(6),
        "woke {waited:?} after starting to wait"
    );

    // A waiting process that gets a signal sees EINTR (here: another process, whose
    // alarm handler raises, so Python does not retry the call).
    let holder = open_rw(&b.join("f"));
    set_lock(&holder, false, libc::F_WRLCK, 0, 0).unwrap();
    let script = "import fcntl, signal, sys, time\n\
        def on_alarm(*_): raise TimeoutError()\n\
        signal.signal(signal.SIGALRM, on_alarm)\n\
        f = open(sys.argv[1], 'r+')\n\
        signal.alarm(1)\n\
        start = time.time()\n\
        try:\n    fcntl.lockf(f, fcntl.LOCK_EX)\n    print('locked')\n\
        except TimeoutError:\n    print('interrupted after %.1f s' % (time.time() - start))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(a.join("f"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("interrupted after 1."),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn locks_of_a_killed_client_are_released_after_its_lease() {
    let (table, a, b) = two_mounts("Kill");
    let victim = open_rw(&a.join("f"));
    set_lock(&victim, false, libc::F_WRLCK, 0, 0).unwrap();
    // An unlinked file the victim still has open: whoever cleans up after it deletes it.
    fs::write(a.join("kept-open"), vec![7u8; 300_000]).unwrap();
    let kept_open = File::open(a.join("kept-open")).unwrap();
    fs::remove_file(a.join("kept-open")).unwrap();
    let status = status_json(&table);
    let mountpoint = a.path().display().to_string();
    let session = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["mountpoint"] == mountpoint.as_str())
        .unwrap()
        .clone();
    assert_eq!(session["locks"].as_array().unwrap().len(), 1);
    assert_eq!(session["locks"][0]["path"], "/f", "{session}");
    let pid = session["pid"].as_i64().unwrap() as i32;
    // SAFETY: killing the mount daemon we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();

    let fb = open_rw(&b.join("f"));
    assert_eq!(
        set_lock(&fb, false, libc::F_WRLCK, 0, 0),
        Err(libc::EAGAIN),
        "the lease still holds at first"
    );
    set_lock(&fb, true, libc::F_WRLCK, 0, 0).unwrap();
    let took = killed.elapsed();
    println!("locks of a SIGKILLed client were taken over {took:?} after the kill (heartbeat 1 s, lease 3 heartbeats)");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );

    let status = status_json(&table);
    let dead = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == pid)
        .expect("the dead session is still listed")
        .clone();
    assert_eq!(dead["alive"], false, "{status}");
    assert!(
        dead["locks"].as_array().unwrap().is_empty(),
        "its locks were released: {status}"
    );
    drop((victim, kept_open));
    let _ = Command::new("umount").arg("-l").arg(a.path()).status();

    // B's heartbeat also deleted the file the dead client kept open: nothing is left over.
    let started = Instant::now();
    loop {
        let out = common::dynamofs_on_table("fsck", &table, &[]);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && report.contains(" 0 pending cleanups, 0 files pending deletion, 0 problems")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the dead client's open file was not cleaned up: {report}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

const SQLITE_WRITER: &str = r#"
import sqlite3, sys
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = sqlite3.connect(path, timeout=120, isolation_level=None)
for i in range(n):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (?, ?)", (who, i))
    conn.execute("COMMIT")
conn.close()
"#;

#[test]
fn sqlite_on_two_mounts_keeps_every_row() {
    let (_, a, b) = two_mounts("Sqlite");
    let rows: usize = std::env::var("DYNAMOFS_SQLITE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let db_a = a.join("test.db");
    let status = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE t(who TEXT, i INTEGER)'); c.commit()"])
        .arg(&db_a)
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let writers: Vec<_> = [(&db_a, "a"), (&b.join("test.db"), "b")]
        .into_iter()
        .map(|(db, who)| {
            Command::new("python3")
                .args(["-c", SQLITE_WRITER])
                .arg(db)
                .arg(who)
                .arg(rows.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in writers {
        assert!(w.wait().unwrap().success(), "a writer failed");
    }
    println!(
        "sqlite: {} transactions on two mounts in {:?}",
        2 * rows,
        started.elapsed()
    );
    for db in [&db_a, &b.join("test.db")] {
        let out = Command::new("python3")
            .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('PRAGMA integrity_check').fetchone()[0]); print(c.execute(\"SELECT count(*), count(DISTINCT who||'/'||i) FROM t\").fetchone())"])
            .arg(db)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            format!("ok\n({0}, {0})\n", 2 * rows),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
