//! Many clients, one directory: workers that create (O_EXCL, 64 bytes) and unlink
//! small files, spread over several mounts of one filesystem, either all in one shared
//! directory or each in a directory of its own. `tests/hot_dir.rs` checks what it
//! costs in requests and conflicts; the benchmark measures how fast it runs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamofs::keys::{DOOMED_PREFIX, GARBAGE_PARTITION};
use dynamofs::store::{SortKey, Store, Table};

/// The failures of every worker of a run.
pub type Errors = Arc<Mutex<Vec<String>>>;

/// What the workers of one phase did.
pub struct Phase {
    /// Creates and unlinks that succeeded.
    pub ops: usize,
    /// How long the phase took.
    pub secs: f64,
}

impl Phase {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// Create (O_EXCL, 64 bytes) and unlink files in `dir` until `until`; every error is
/// kept. Each file is unlinked two creates later.
fn churn(dir: PathBuf, worker: usize, until: Instant, errors: Errors) -> usize {
    let mut ops = 0;
    let mut n = 0u64;
    let path = |n: u64| dir.join(format!("w{worker}-{n}"));
    let fail = |what: &str, n: u64, e: std::io::Error| {
        let path = path(n);
        errors
            .lock()
            .unwrap()
            .push(format!("{what} {}: {e}", path.display()))
    };
    while Instant::now() < until {
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path(n))
            .and_then(|mut f| f.write_all(&[b'x'; 64]));
        match created {
            Ok(()) => ops += 1,
            Err(e) => fail("create", n, e),
        }
        if n >= 2 {
            match fs::remove_file(path(n - 2)) {
                Ok(()) => ops += 1,
                Err(e) => fail("unlink", n - 2, e),
            }
        }
        n += 1;
    }
    ops
}

/// The directories `dir/w<worker>` the workers of separate-directory phases use.
pub fn make_worker_dirs(root: &Path, dir: &str, workers: usize) {
    fs::create_dir(root.join(dir)).unwrap();
    for w in 0..workers {
        fs::create_dir(root.join(format!("{dir}/w{w}"))).unwrap();
    }
}

/// Run `workers` workers for `secs`, worker `w` on mount `roots[w % roots.len()]` in
/// its directory `dir_of(w)` there.
pub fn phase(
    roots: &[PathBuf],
    workers: usize,
    secs: u64,
    dir_of: impl Fn(usize) -> String,
    errors: &Errors,
) -> Phase {
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let dir = roots[w % roots.len()].join(dir_of(w));
            let errors = errors.clone();
            std::thread::spawn(move || churn(dir, w, until, errors))
        })
        .collect();
    let ops = handles.into_iter().map(|h| h.join().unwrap()).sum();
    Phase {
        ops,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// How many files whose last name went away are waiting for the garbage collectors.
pub async fn doomed_files(store: &dyn Store) -> usize {
    let mut count = 0;
    let mut after = None;
    loop {
        let page = store
            .query(Table::Meta, GARBAGE_PARTITION, after.as_ref(), 1000)
            .await
            .unwrap();
        count += page
            .items
            .iter()
            .filter(|(sk, _)| matches!(sk, SortKey::S(name) if name.starts_with(DOOMED_PREFIX)))
            .count();
        match (page.more, page.items.last()) {
            (true, Some((sk, _))) => after = Some(sk.clone()),
            _ => return count,
        }
    }
}

/// Wait (at most `limit`) until the collectors have deleted every doomed file, so that
/// one phase's garbage is not collected during the next one. Panics past the limit.
pub async fn wait_for_collectors(store: &dyn Store, limit: Duration) {
    let started = Instant::now();
    loop {
        let left = doomed_files(store).await;
        if left == 0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{left} doomed files still not collected after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
