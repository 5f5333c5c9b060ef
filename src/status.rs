//! `dynamofs status`: the sessions of a filesystem, live and expired, the locks each
//! holds, and the filesystem's format and size figures; and `dynamofs fsck`, the
//! consistency check. Both work without mounting and change nothing.

use std::time::Duration;

use serde::Serialize;

use crate::cli::{FsckArgs, MountOptions, StatusArgs};
use crate::fs::{Fs, FsConfig, SessionStatus};
use crate::records::{Format, Lock};

/// Everything `dynamofs status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The source, as given.
    pub source: String,
    /// The format record.
    pub format: Format,
    /// Inode numbers handed out so far.
    pub inodes_allocated: u64,
    /// Every session record.
    pub sessions: Vec<SessionReport>,
    /// Locks whose session record is gone (released by the next writer of their file).
    pub orphan_locks: Vec<LockReport>,
    /// The space a local store's file takes (none for DynamoDB).
    pub space: Option<crate::store::StoreSpace>,
}

/// One session and its locks.
#[derive(Debug, Serialize)]
pub struct SessionReport {
    /// The session and whether its lease holds.
    #[serde(flatten)]
    pub status: SessionStatus,
    /// The locks it holds.
    pub locks: Vec<LockReport>,
}

/// One lock, with the inode it is on.
#[derive(Debug, Serialize)]
pub struct LockReport {
    /// The locked file.
    pub ino: u64,
    /// A path of it, when a short walk of the tree found one.
    pub path: Option<String>,
    /// The lock.
    #[serde(flatten)]
    pub lock: Lock,
}

/// Directories `status` looks through for the paths of locked files.
const PATH_SEARCH_DIRS: usize = 2000;

/// Gather the status of the filesystem `fs`.
pub async fn gather(fs: &Fs, source: String) -> Result<Status, crate::fs::FsError> {
    let mut locks: Vec<LockReport> = fs
        .all_locks()
        .await?
        .into_iter()
        .map(|(ino, lock)| LockReport {
            ino,
            path: None,
            lock,
        })
        .collect();
    let locked: std::collections::BTreeSet<u64> = locks.iter().map(|l| l.ino).collect();
    if !locked.is_empty() {
        let paths = fs.paths_of(&locked, PATH_SEARCH_DIRS).await?;
        for lock in &mut locks {
            lock.path = paths.get(&lock.ino).cloned();
        }
    }
    let sessions = fs
        .sessions()
        .await?
        .into_iter()
        .map(|status| {
            let (mine, rest): (Vec<_>, Vec<_>) = locks
                .drain(..)
                .partition(|l| l.lock.session == status.session.id);
            locks = rest;
            SessionReport {
                status,
                locks: mine,
            }
        })
        .collect();
    Ok(Status {
        source,
        format: fs.format_record().clone(),
        inodes_allocated: fs.inodes_allocated().await?,
        sessions,
        orphan_locks: locks,
        space: fs.space()?,
    })
}

fn range(lock: &Lock) -> String {
    if lock.end >= i64::MAX as u64 {
        format!("{}-EOF", lock.start)
    } else {
        format!("{}-{}", lock.start, lock.end)
    }
}

/// The path of a locked file, or its inode number when none was found.
fn locked_file(lock: &LockReport) -> String {
    match &lock.path {
        Some(path) => format!("{path} (ino {})", lock.ino),
        None => format!("ino {}", lock.ino),
    }
}

fn print_human(status: &Status) {
    println!("filesystem {}", status.source);
    println!(
        "  format version {}, block size {} KiB, {} stripes per file, data compressed with {}, {} inode numbers allocated",
        status.format.version,
        status.format.block_size / 1024,
        status.format.stripes,
        status.format.compression,
        status.inodes_allocated
    );
    if let Some(space) = &status.space {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        println!(
            "  local file: {:.1} MiB, of which {:.1} MiB in use (the rest is reused for new data); {:.1} MiB free on its disk",
            mib(space.file_bytes),
            mib(space.used_bytes),
            mib(space.available_bytes)
        );
    }
    println!("sessions: {}", status.sessions.len());
    for s in &status.sessions {
        let session = &s.status.session;
        let state = if s.status.alive { "live" } else { "EXPIRED" };
        let started = std::time::SystemTime::from(session.started);
        let age = std::time::SystemTime::now()
            .duration_since(started)
            .unwrap_or_default()
            .as_secs();
        println!(
            "  {} {state:<7} host {} pid {} mountpoint {} version {} started {}h{:02}m ago, {} files open, locks {}",
            session.id,
            session.host,
            session.pid,
            session.mountpoint,
            session.version,
            age / 3600,
            age / 60 % 60,
            session.open.len(),
            s.locks.len()
        );
        for l in &s.locks {
            println!(
                "      {} {:?} bytes {} owner {:x} pid {}",
                locked_file(l),
                l.lock.kind,
                range(&l.lock),
                l.lock.owner,
                l.lock.pid
            );
        }
    }
    if !status.orphan_locks.is_empty() {
        println!(
            "locks of sessions that are gone: {}",
            status.orphan_locks.len()
        );
        for l in &status.orphan_locks {
            println!(
                "      {} {:?} bytes {} session {}",
                locked_file(l),
                l.lock.kind,
                range(&l.lock),
                l.lock.session
            );
        }
    }
}

/// What to say when clients (`live`, as `host:mountpoint`) still have it mounted.
pub(crate) fn still_mounted(live: &[String]) -> String {
    format!(
        "{} client(s) still mounted ({}): unmount them first",
        live.len(),
        live.join(", ")
    )
}

/// Open the filesystem of `args` without creating tables (read-only unless
/// `writable`), and run `work` on it.
pub(crate) fn with_fs<T>(
    args: &StatusArgs,
    writable: bool,
    work: impl AsyncFnOnce(Fs) -> Result<T, String>,
) -> Result<T, String> {
    let options = MountOptions::parse(&args.options)?;
    // Warnings (a backend that keeps failing, what it is waiting for) go to stderr.
    crate::mount::init_logging(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let store = args
            .source
            .open(options.endpoint.clone(), options.patience, None)
            .await
            .map_err(|e| e.to_string())?;
        let fs = Fs::new(store, FsConfig::for_tools(writable))
            .await
            .map_err(|e| e.to_string())?;
        work(fs).await
    })
}

/// Run `dynamofs status`; returns the exit code.
pub fn run(args: StatusArgs) -> i32 {
    let source = args.source.to_string();
    match with_fs(&args, false, async |fs| {
        gather(&fs, source).await.map_err(|e| e.to_string())
    }) {
        Ok(status) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("status serializes")
            );
            0
        }
        Ok(status) => {
            print_human(&status);
            0
        }
        Err(e) => {
            eprintln!("dynamofs: cannot read {}: {e}", args.source);
            1
        }
    }
}

/// Run `dynamofs fsck`; exits 0 when nothing is wrong (after a repair: nothing is
/// left), 1 when it found problems (or some are left), 2 when it could not check.
pub fn fsck(args: FsckArgs) -> i32 {
    // The phase and running counts on a terminal; nothing when stderr is a pipe or a file.
    let spinner =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let progress = |what: &str| spinner.set_message(what.to_string());
    let source = args.common.source.to_string();
    let checked = with_fs(&args.common, args.repair, async |fs| {
        if !args.repair {
            return Ok((fs.check(&progress).await.map_err(|e| e.to_string())?, None));
        }
        let live = fs.live_mounts().await.map_err(|e| e.to_string())?;
        if !live.is_empty() && !args.force {
            return Err(format!(
                "{}, or repair anyway with --force",
                still_mounted(&live)
            ));
        }
        let repaired = fs.repair(&progress).await.map_err(|e| e.to_string())?;
        Ok((repaired.after.clone(), Some(repaired)))
    });
    spinner.finish_and_clear();
    let (report, repaired) = match checked {
        Ok(done) => done,
        Err(e) => {
            eprintln!("dynamofs: cannot check {source}: {e}");
            return 2;
        }
    };
    if args.common.json {
        let json = match &repaired {
            Some(repaired) => serde_json::to_string_pretty(repaired),
            None => serde_json::to_string_pretty(&report),
        };
        println!("{}", json.expect("reports serialize"));
    } else {
        for fix in repaired.iter().flat_map(|r| &r.fixed) {
            println!("fixed: {fix}");
        }
        println!(
            "{source}: {} entries, {} inodes, {} blocks, {} pending cleanups, {} files pending deletion, {} problems{}",
            report.entries,
            report.inodes,
            report.blocks,
            report.pending_cleanups,
            report.pending_deletions,
            report.problems.len(),
            if repaired.is_some() { " left" } else { "" }
        );
        for problem in &report.problems {
            println!("  {problem}");
        }
    }
    i32::from(!report.problems.is_empty())
}
