//! What `dynamofs import` and `dynamofs export` share: a place in a filesystem
//! (`SOURCE:/PATH`), the client they work through without a mount, their progress bar
//! and their summary.
//!
//! The client is an ordinary one, with the mount's caches, grouped commits and
//! directory leases, so a tree is written as `tar x` on a mount writes it (a
//! transaction for about 30 new files). It registers a session only before its first
//! write, so a run that finds nothing to do writes nothing at all.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::MountOptions;
use crate::fs::{Caller, Fs, FsConfig, FsError, FsResult};
use crate::keys::ROOT_INO;
use crate::metrics::metrics;
use crate::records::{FileKind, Inode, Timestamp};
use crate::source::Source;

/// Bytes moved per read or write call: what FUSE hands a mount at most.
pub const CHUNK: usize = 1024 * 1024;

/// The caller import and export act as: they copy owners and modes as they are, so
/// no permission check of the filesystem's stands in their way (their user already
/// has the tables).
pub const TOOL_CALLER: Caller = Caller { uid: 0, gid: 0 };

/// A directory in a filesystem: `SOURCE` (its root) or `SOURCE:/PATH`.
#[derive(Clone, Debug)]
pub struct Place {
    /// The filesystem.
    pub source: Source,
    /// The directory's path components below the root.
    pub path: Vec<String>,
}

impl FromStr for Place {
    type Err = String;

    /// The path follows the last `:/` after the source's scheme, so a `local:` file
    /// whose own path holds `:/` needs an explicit `:/` path after it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let scheme = match s.find(':') {
            Some(i) => i + 1,
            None => 0,
        };
        let (source, path) = match s[scheme..].rfind(":/") {
            Some(i) => (&s[..scheme + i], &s[scheme + i + 1..]),
            None => (s, "/"),
        };
        Ok(Place {
            source: source.parse()?,
            path: path
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect(),
        })
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:/{}", self.source, self.path.join("/"))
    }
}

/// A filesystem opened by import or export, without a mount.
pub struct Client {
    /// The filesystem.
    pub fs: Arc<Fs>,
    heartbeat: Duration,
    label: String,
    /// Set once the session is registered and its heartbeat started.
    session: tokio::sync::OnceCell<()>,
}

impl Client {
    /// Open `place`'s filesystem with `options` (endpoint, timeouts, caches);
    /// `label` names the session it registers once it writes.
    pub async fn open(
        place: &Place,
        options: &MountOptions,
        read_only: bool,
        label: String,
    ) -> Result<Client, String> {
        let billing = (!read_only).then_some(crate::store::dynamo::Billing::OnDemand);
        let store = place
            .source
            .open(options.endpoint.clone(), options.patience, billing)
            .await
            .map_err(|e| format!("cannot open {}: {e}", place.source))?;
        let config = FsConfig {
            read_only,
            ..crate::mount::fs_config(options)
        };
        let fs = Fs::new(store, config)
            .await
            .map_err(|e| format!("cannot open {}: {e}", place.source))?;
        let fs = Arc::new(fs);
        let rt = tokio::runtime::Handle::current();
        fs.spawn_flusher(&rt);
        fs.spawn_create_settler(&rt);
        Ok(Client {
            fs,
            heartbeat: options.heartbeat,
            label,
            session: tokio::sync::OnceCell::new(),
        })
    }

    /// The filesystem, with this client's session registered (the first call does it):
    /// what every write goes through.
    pub async fn writing(&self) -> FsResult<&Fs> {
        self.session
            .get_or_try_init(|| async {
                self.fs
                    .register_session(&self.label, self.heartbeat)
                    .await?;
                self.fs.start_heartbeat();
                Ok::<_, FsError>(())
            })
            .await?;
        Ok(&self.fs)
    }

    /// Commit what is still buffered and end the session, if one was registered.
    pub async fn finish(self) -> FsResult<()> {
        self.fs.end_client().await
    }

    /// The inode of `place`'s directory; with `create`, missing directories on the
    /// way are made (mode 0755, as `mkdir -p`).
    pub async fn directory(&self, place: &Place, create: bool) -> Result<u64, String> {
        let mut ino = ROOT_INO;
        let mut walked = String::new();
        for name in &place.path {
            walked.push('/');
            walked.push_str(name);
            let found = match self.fs.lookup(ino, name.as_bytes()).await {
                Ok(inode) => inode,
                Err(FsError::NotFound) if create => {
                    let fs = self.writing().await.map_err(|e| e.to_string())?;
                    fs.mkdir(TOOL_CALLER, ino, name.as_bytes(), 0o755)
                        .await
                        .map_err(|e| format!("cannot make {walked}: {e}"))?
                }
                Err(e) => return Err(format!("{walked}: {e}")),
            };
            if found.kind != FileKind::Dir {
                return Err(format!("{walked} is not a directory"));
            }
            ino = found.ino;
        }
        Ok(ino)
    }
}

/// Run `work` on a runtime like a mount's, and say what it did; the exit code.
pub fn run_tool(verb: &str, work: impl AsyncFnOnce(&Tally) -> Result<(), String>) -> i32 {
    crate::mount::init_logging(false);
    let Some(rt) = crate::mount::tool_runtime() else {
        return 1;
    };
    let tally = Tally::default();
    let started = Instant::now();
    let result = rt.block_on(work(&tally));
    rt.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => tally.report(verb, started.elapsed()),
        Err(e) => {
            eprintln!("dynamofs: {verb}: {e}");
            2
        }
    }
}

/// What a run did, counted as it goes.
#[derive(Default)]
pub struct Tally {
    /// Regular files copied.
    pub files: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Directories made.
    pub directories: AtomicU64,
    /// Symlinks made.
    pub symlinks: AtomicU64,
    /// Names added for an inode copied under another name.
    pub hard_links: AtomicU64,
    /// Fifos, sockets and device nodes made.
    pub others: AtomicU64,
    /// Nodes left alone: the same file (size and modification time), symlink, node
    /// or hard link was there already.
    pub skipped: AtomicU64,
    failed: Mutex<Vec<(String, String)>>,
}

impl Tally {
    /// One more of `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `path` could not be copied, for `why`.
    pub fn failed(&self, path: &Path, why: impl std::fmt::Display) {
        tracing::warn!(path = %path.display(), error = %why, "cannot copy");
        self.failed
            .lock()
            .unwrap()
            .push((path.display().to_string(), why.to_string()));
    }

    /// Print the summary, and every failure; exit code 0 or, after failures, 1.
    fn report(&self, verb: &str, took: Duration) -> i32 {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let bytes = n(&self.bytes);
        let secs = took.as_secs_f64().max(0.001);
        let failed = self.failed.lock().unwrap();
        // Only DynamoDB's requests are counted: a local file has none.
        let requests = match metrics().requests_total() {
            0 => String::new(),
            sent => format!(
                "; {sent} DynamoDB requests, {} of them retries",
                metrics().retries_total()
            ),
        };
        println!(
            "{verb}: {} files ({:.1} MiB), {} directories, {} symlinks, {} hard links, {} other nodes; \
             {} unchanged and left alone; {} failed{requests}; {:.1} s, {:.1} files/s, {:.1} MiB/s",
            n(&self.files),
            bytes as f64 / (1024.0 * 1024.0),
            n(&self.directories),
            n(&self.symlinks),
            n(&self.hard_links),
            n(&self.others),
            n(&self.skipped),
            failed.len(),
            secs,
            n(&self.files) as f64 / secs,
            bytes as f64 / (1024.0 * 1024.0) / secs,
        );
        for (path, why) in failed.iter() {
            eprintln!("dynamofs: {verb}: {path}: {why}");
        }
        i32::from(!failed.is_empty())
    }
}

/// A progress bar of files and bytes, with rate and ETA, on a terminal; nothing when
/// stderr is a pipe or a file.
pub struct Progress {
    bar: indicatif::ProgressBar,
    files: AtomicU64,
    total_files: u64,
}

impl Progress {
    /// A bar for `total_files` files of `total_bytes` bytes.
    pub fn new(verb: &str, total_files: u64, total_bytes: u64) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total_bytes),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{verb} {{msg}} {{bytes}}/{{total_bytes}} {{wide_bar}} {{bytes_per_sec}}, ETA {{eta}}"
            ))
            .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar.set_message(format!("0/{total_files} files"));
        Progress {
            bar,
            files: AtomicU64::new(0),
            total_files,
        }
    }

    /// One more file done, of `bytes` bytes.
    pub fn file_done(&self, bytes: u64) {
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.inc(bytes);
        self.bar
            .set_message(format!("{files}/{} files", self.total_files));
    }

    /// Take the bar off the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Whether a file of `size` bytes modified at `mtime` is the one already there as
/// `inode` (rsync's quick check).
pub fn unchanged(inode: &Inode, kind: FileKind, size: u64, mtime: Timestamp) -> bool {
    inode.kind == kind && inode.size == size && inode.mtime == mtime
}

/// The modification time of local `meta`.
pub fn local_mtime(meta: &std::fs::Metadata) -> Timestamp {
    use std::os::unix::fs::MetadataExt;
    Timestamp {
        s: meta.mtime(),
        n: meta.mtime_nsec() as u32,
    }
}

/// The access time of local `meta`.
pub fn local_atime(meta: &std::fs::Metadata) -> Timestamp {
    use std::os::unix::fs::MetadataExt;
    Timestamp {
        s: meta.atime(),
        n: meta.atime_nsec() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_a_source_and_the_path_after_its_last_colon_slash() {
        let place: Place = "aws:us-east-1/Shared:/projects/data/".parse().unwrap();
        assert_eq!(place.source.to_string(), "aws:us-east-1/Shared");
        assert_eq!(place.path, ["projects", "data"]);
        let root: Place = "aws:us-east-1/Shared".parse().unwrap();
        assert!(root.path.is_empty());
        let local: Place = "local:/var/lib/fs.db:/a/./b".parse().unwrap();
        assert_eq!(local.source.to_string(), "local:/var/lib/fs.db");
        assert_eq!(local.path, ["a", "b"]);
        let whole: Place = "local:/var/lib/fs.db".parse().unwrap();
        assert_eq!(whole.source.to_string(), "local:/var/lib/fs.db");
        assert!(whole.path.is_empty());
        assert!("nowhere:/x".parse::<Place>().is_err());
    }
}
