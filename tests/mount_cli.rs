//! Mounted: the ways Linux users mount things (`dynamofs mount`, `mount -t
//! fuse.dynamo`, an fstab line), unmounting with `umount` and `fusermount3 -u`, and
//! the messages a user gets for bad input.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    dynamo_local, dynamofs_bin, is_dynamofs_mount, mount_command, mount_table, unique_table,
};
use dynamofs::simulator::{SimConfig, Simulator};

const HELPER: &str = "/sbin/mount.fuse.dynamo";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `out` is a command that failed, saying `says` on stderr.
fn assert_refused(out: &Output, what: &str, says: &str) {
    assert!(!out.status.success(), "{what} must fail");
    assert!(stderr(out).contains(says), "{what}: {}", stderr(out));
}

fn findmnt_type(dir: &Path) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "--mountpoint"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Install the mount helper as the project's install step does (a symlink to the binary).
fn install_helper() {
    let _ = fs::remove_file(HELPER);
    std::os::unix::fs::symlink(dynamofs_bin(), HELPER).unwrap();
}

#[test]
fn mount_t_fuse_dynamo_fstab_and_both_unmounts() {
    common::require_fuse();
    install_helper();
    let table = unique_table("Helper");
    let dir = tempfile::tempdir().unwrap();
    // Something beneath the mountpoint that unmounting must leave alone.
    fs::write(dir.path().join("underneath"), b"keep me").unwrap();
    let log = dir.path().with_extension("log");
    let options = format!(
        "endpoint={},logfile={}",
        dynamo_local().endpoint(),
        log.display()
    );
    let source = format!("aws:us-east-1/{table}");

    let out = Command::new("mount")
        .args(["-t", "fuse.dynamo", &source])
        .arg(dir.path())
        .args(["-o", &options])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse.dynamo: {}",
        stderr(&out)
    );
    assert_eq!(findmnt_type(dir.path()), "fuse.dynamo");
    fs::write(dir.path().join("hello"), b"via mount -t").unwrap();
    let again = Command::new("mount")
        .args(["-t", "fuse.dynamo", &source])
        .arg(dir.path())
        .args(["-o", &options])
        .output()
        .unwrap();
    assert_refused(
        &again,
        "a second mount on the same mountpoint",
        "already a dynamofs mount",
    );
    let out = Command::new("umount").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "umount: {}", stderr(&out));
    assert!(!is_dynamofs_mount(dir.path()));
    assert_eq!(fs::read(dir.path().join("underneath")).unwrap(), b"keep me");

    let fstab = dir.path().with_extension("fstab");
    fs::write(
        &fstab,
        format!(
            "{source} {} fuse.dynamo noauto,_netdev,nofail,{options} 0 0\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "mount from fstab: {}", stderr(&out));
    assert_eq!(fs::read(dir.path().join("hello")).unwrap(), b"via mount -t");
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "fusermount3 -u: {}", stderr(&out));
    wait_until("still mounted", 10, || !is_dynamofs_mount(dir.path()));
    assert_eq!(fs::read(dir.path().join("underneath")).unwrap(), b"keep me");
    let _ = fs::remove_file(HELPER);
}

/// Wait until `done` holds, failing with `what` after `secs` seconds.
fn wait_until(what: &str, secs: u64, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait (at most 30 s) until a foreground mount started on `dir` is live.
fn wait_for_foreground_mount(dir: &Path) {
    wait_until("foreground mount did not come up", 30, || {
        is_dynamofs_mount(dir)
    });
}

#[test]
fn foreground_mount_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = mount_command(&unique_table("Fg"), dir.path(), "")
        .arg("-f")
        .spawn()
        .unwrap();
    wait_for_foreground_mount(dir.path());
    fs::write(dir.path().join("f"), b"x").unwrap();
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!is_dynamofs_mount(dir.path()));
}

#[test]
fn a_signal_stops_a_mount_whose_dynamodb_stopped_answering() {
    let sim = common::simulator_without_latency();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(dynamofs_bin())
        .args(["mount", &format!("aws:us-east-1/{}", unique_table("Gone"))])
        .arg(dir.path())
        .args(["-f", "-o", &format!("endpoint={}", sim.endpoint())])
        .env("AWS_ACCESS_KEY_ID", "fake")
        .env("AWS_SECRET_ACCESS_KEY", "fake")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_foreground_mount(dir.path());
    fs::write(dir.path().join("f"), b"x").unwrap();
    // From now on every request fails, and each is retried for the default 30 s.
    sim.configure(|c| c.fault_every = 1);
    assert!(Command::new("umount")
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon should still be trying to end its session"
    );
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // The daemon gives the ending 10 s more, then exits.
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "SIGTERM did not stop the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("exiting before the session ended"), "{log}");
}

/// Messages are for people: no Rust debug dump of an SDK error in them.
fn assert_no_debug_dump(message: &str) {
    for dump in ["Error {", "Failure(", "Request {", "SdkBody"] {
        assert!(!message.contains(dump), "a debug dump ({dump}): {message}");
    }
}

fn failed_mount(source: &str, extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(dynamofs_bin());
    cmd.arg("mount").arg(source).arg(dir.path()).arg("-f");
    if !extra.is_empty() {
        cmd.args(["-o", extra]);
    }
    let out = cmd
        .env("AWS_ACCESS_KEY_ID", "fake")
        .env("AWS_SECRET_ACCESS_KEY", "fake")
        .output()
        .unwrap();
    assert!(!out.status.success(), "mount of {source} should fail");
    assert!(!is_dynamofs_mount(dir.path()));
    stderr(&out)
}

#[test]
fn bad_input_gets_clear_messages() {
    let local = dynamo_local();
    let endpoint = format!("endpoint={}", local.endpoint());
    assert!(failed_mount("s3:bucket", "").contains("malformed source"));
    assert!(failed_mount("aws:us-east-1", "").contains("expected aws:REGION/TABLE"));
    assert!(failed_mount("aws:us-east-1/ok", "").contains("table name"));
    assert!(failed_mount("aws:us-east-1/Fine", "colour=blue")
        .contains("unknown mount option 'colour=blue'"));

    // A table with another key schema is named, with what was expected.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let table = unique_table("Wrong");
    rt.block_on(async {
        let client = common::raw_client(&local.endpoint());
        use aws_sdk_dynamodb::types::*;
        client
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    });
    let message = failed_mount(&format!("aws:us-east-1/{table}"), &endpoint);
    assert!(
        message.contains(&format!("table {table} exists with key schema"))
            && message.contains("path"),
        "{message}"
    );

    // Nothing listening, or no such host: a clear line, after saying what it waits
    // for, within the retry budget.
    let refused = format!("http://127.0.0.1:{}", common::free_port());
    for (url, cause) in [
        (refused.as_str(), "Connection refused"),
        ("http://no-such-host.invalid:8000", "dns error"),
    ] {
        let started = Instant::now();
        let message = failed_mount(
            "aws:us-east-1/Nowhere",
            &format!("endpoint={url},timeout=2,retry_budget=3"),
        );
        assert!(
            message.contains("cannot reach DynamoDB") && message.contains(cause),
            "{message}"
        );
        assert!(message.contains("waiting for DynamoDB"), "{message}");
        assert_no_debug_dump(&message);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gave up after {:?}",
            started.elapsed()
        );
    }
    let out = Command::new(dynamofs_bin())
        .args(["status", "aws:us-east-1/Nowhere", "-o"])
        .arg(format!("endpoint={refused},retry_budget=1"))
        .env("AWS_ACCESS_KEY_ID", "fake")
        .env("AWS_SECRET_ACCESS_KEY", "fake")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach DynamoDB"),
        "{}",
        stderr(&out)
    );
    assert_no_debug_dump(&stderr(&out));
    // Throttled past the retry budget: said as such, in one line.
    let stingy = SimConfig {
        latency: Duration::ZERO,
        partition_write_units: 0.0,
        ..SimConfig::default()
    };
    let sim = Simulator::start(local.addr(), stingy).unwrap();
    let message = failed_mount(
        &format!("aws:us-east-1/{}", unique_table("Stingy")),
        &format!("endpoint={},retry_budget=2", sim.endpoint()),
    );
    assert!(message.contains("throttled"), "{message}");
    assert!(message.contains("given up after"), "{message}");
    assert_no_debug_dump(&message);
    for bad in ["notaurl", "ftp://host:1"] {
        let message = failed_mount("aws:us-east-1/Fine", &format!("endpoint={bad}"));
        assert!(message.contains("expected a URL such as"), "{message}");
    }

    // No credentials anywhere: the message says so.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(dynamofs_bin())
        .args(["mount", "aws:us-east-1/NoCreds"])
        .arg(dir.path())
        .args(["-f", "-o", &endpoint])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no usable AWS credentials"),
        "{}",
        stderr(&out)
    );
    assert_no_debug_dump(&stderr(&out));

    // local: paths: a directory that does not exist is not created; a file that is not
    // a store (junk, or another application's SQLite database) is named as such; a relative path is the caller's, not the daemon's `/`.
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no/such/dir/fs.db");
    let message = failed_mount(&format!("local:{}", missing.display()), "");
    assert!(message.contains("does not exist"), "{message}");
    assert!(!work.path().join("no").exists());
    std::fs::write(work.path().join("junk.db"), vec![7u8; 10_000]).unwrap();
    let message = failed_mount(
        &format!("local:{}", work.path().join("junk.db").display()),
        "",
    );
    assert!(message.contains("not a dynamofs store"), "{message}");
    assert_no_debug_dump(&message);
    let other = work.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let message = failed_mount(&format!("local:{}", other.display()), "");
    assert!(
        message.contains("another application's SQLite database"),
        "{message}"
    );
    let mnt = tempfile::tempdir().unwrap();
    let out = Command::new(dynamofs_bin())
        .args(["mount", "local:relative.db"])
        .arg(mnt.path())
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(mnt.path().join("f"), b"x").unwrap();
    let unmounted = Command::new("umount").arg(mnt.path()).status().unwrap();
    assert!(unmounted.success());
    assert!(work.path().join("relative.db").is_file());

    // The mountpoint itself.
    let out = Command::new(dynamofs_bin())
        .args(["mount", "aws:us-east-1/Fine", "/nonexistent/dir"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/dir"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn read_only_mounts_refuse_changes() {
    let table = unique_table("Ro");
    let rw = mount_table(&table, "");
    fs::write(rw.join("f"), b"x").unwrap();
    let ro = mount_table(&table, "ro");
    assert_eq!(fs::read(ro.join("f")).unwrap(), b"x");
    assert_eq!(
        fs::write(ro.join("g"), b"y").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        fs::remove_file(ro.join("f")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
}

#[test]
fn help_explains_the_options() {
    let out = Command::new(dynamofs_bin())
        .args(["mount", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "endpoint=URL",
        "allow_other",
        "attr_ttl",
        "fstab",
        "aws:REGION/TABLE",
        "local:PATH",
        "-f",
        "-d",
    ] {
        assert!(help.contains(word), "--help does not mention {word}");
    }
}

#[test]
fn owner_and_umask_options_shape_what_is_reported() {
    use std::os::unix::fs::MetadataExt;
    let m = mount_table(&unique_table("Owner"), "uid=1234,gid=4321,umask=027");
    fs::write(m.join("f"), b"x").unwrap();
    fs::create_dir(m.join("d")).unwrap();
    for name in ["f", "d"] {
        let meta = fs::metadata(m.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 4321), "{name}");
        assert_eq!(meta.mode() & 0o027, 0, "{name}: mode {:o}", meta.mode());
    }
}

#[test]
fn the_endpoint_can_come_from_the_aws_environment() {
    common::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(dynamofs_bin())
        .args([
            "mount",
            &format!("aws:us-east-1/{}", unique_table("EnvEndpoint")),
        ])
        .arg(dir.path())
        .env("AWS_ACCESS_KEY_ID", "fake")
        .env("AWS_SECRET_ACCESS_KEY", "fake")
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynamo_local().endpoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    fs::write(dir.path().join("f"), b"via AWS_ENDPOINT_URL_DYNAMODB").unwrap();
    assert!(Command::new("umount")
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
}

/// The user ordinary mounts run as in these tests: nobody.
const NOBODY: u32 = 65534;

/// `args` run as [`NOBODY`] (through `setpriv`, with no supplementary groups).
fn as_nobody(program: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .arg(program)
        .args(args)
        .env("HOME", "/tmp")
        .output()
        .unwrap()
}

#[test]
fn an_ordinary_user_mounts_through_fusermount3() {
    common::require_fuse();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata("/dev/fuse").unwrap().permissions());
    assert_eq!(
        mode & 0o666,
        0o666,
        "ordinary users cannot open /dev/fuse (mode {mode:o}); scripts/setup.sh sets 0666, as fuse3's udev rule does"
    );
    let home = tempfile::tempdir().unwrap();
    let chown = |path: &Path| std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    chown(home.path());
    let mnt = home.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    chown(&mnt);
    let source = format!("local:{}", home.path().join("fs.db").display());
    let bin = dynamofs_bin();
    let mount = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["mount".as_ref(), source.as_ref(), mnt.as_os_str()];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        as_nobody(&bin, &args)
    };
    let sh = |script: &str| as_nobody(Path::new("/bin/sh"), &["-c".as_ref(), script.as_ref()]);

    let refused = mount(&["-o", "allow_other"]);
    assert_refused(
        &refused,
        "allow_other without user_allow_other",
        "user_allow_other",
    );
    assert!(!is_dynamofs_mount(&mnt));

    let mounted = mount(&[]);
    assert!(mounted.status.success(), "mount: {}", stderr(&mounted));
    assert_eq!(findmnt_type(&mnt), "fuse.dynamo");
    let file = mnt.join("f");
    let wrote = sh(&format!("echo hello > '{0}' && cat '{0}'", file.display()));
    assert_eq!(
        String::from_utf8_lossy(&wrote.stdout),
        "hello\n",
        "{}",
        stderr(&wrote)
    );
    let owner = fs::metadata(&file).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    assert!(
        owner.is_err(),
        "without allow_other, other users (root too) are kept out: {owner:?}"
    );

    let unmounted = as_nobody(
        Path::new("/usr/bin/fusermount3"),
        &["-u".as_ref(), mnt.as_os_str()],
    );
    assert!(
        unmounted.status.success(),
        "fusermount3 -u: {}",
        stderr(&unmounted)
    );
    wait_until("the daemon did not exit", 20, || {
        common::daemon_pid(&mnt).is_none()
    });
    let again = mount(&[]);
    assert!(again.status.success(), "mount again: {}", stderr(&again));
    let read = sh(&format!("cat '{}'", file.display()));
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "hello\n",
        "kept across mounts"
    );
    // The daemon's own unmount, on SIGTERM, goes through fusermount3 too.
    let pid = common::daemon_pid(&mnt).expect("the second mount's daemon");
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("SIGTERM did not unmount", 20, || {
        !is_dynamofs_mount(&mnt) && common::daemon_pid(&mnt).is_none()
    });
}

#[test]
fn a_foreground_mount_tells_systemd_when_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut child = mount_command(&unique_table("Notify"), &mnt, "")
        .arg("-f")
        .env("NOTIFY_SOCKET", &socket_path)
        .spawn()
        .unwrap();
    let mut message = [0u8; 256];
    let n = socket.recv(&mut message).expect("a readiness message");
    assert_eq!(&message[..n], b"READY=1\n");
    assert!(is_dynamofs_mount(&mnt), "ready means mounted");
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut message).expect("a stopping message");
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert!(child.wait().unwrap().success());
}
