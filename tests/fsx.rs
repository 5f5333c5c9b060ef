//! Random-operation integrity (in the manner of fsx): one file driven through a real
//! mount by a seeded sequence of writes, reads, truncations (holes included), mmap
//! reads and writes, fsyncs, close and reopen, renames, hard links and remounts, each
//! step applied to a model file on local disk too and checked against it at once.
//!
//! - On the embedded store (`local:`), 100,000 operations by default
//!   (`DYNAMOFS_FSX_OPS`).
//! - On two mounts of DynamoDB Local tables, fewer (`DYNAMOFS_FSX_SHARED_OPS`, default
//!   3,000): after every close on the first mount, the second opens the file and must
//!   read the model's content whole (close-to-open).
//!
//! Every run prints its seed; `DYNAMOFS_FSX_SEED=N` replays one, and
//! `DYNAMOFS_FSX_TRACE=1` prints each operation as it goes.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{mount_local_with, mount_table, unique_table, Mounted};

/// Largest file size the operations reach: 4 blocks of 256 KiB, enough for holes,
/// partial and whole blocks, inline data and its moves to blocks and back.
const MAX_SIZE: u64 = 1 << 20;
/// Small write buffers, so that writes past them go behind (in the background) while
/// reads, truncations and more writes of the same blocks follow.
const WRITE_BUFFER: &str = "write_buffer=300k";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    env_or(
        "DYNAMOFS_FSX_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    )
}

/// xorshift64*: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An offset, mostly near block boundaries and the end of the file.
    fn offset(&mut self, size: u64) -> u64 {
        let block = 256 * 1024;
        match self.below(4) {
            0 => (self.below(MAX_SIZE / block) * block).saturating_sub(self.below(3)),
            1 => size.saturating_sub(self.below(4096)),
            _ => self.below(MAX_SIZE),
        }
    }

    fn len(&mut self) -> u64 {
        match self.below(8) {
            0..=2 => 1 + self.below(16),
            3..=6 => 1 + self.below(8192),
            _ => 1 + self.below(300 * 1024),
        }
    }
}

/// The file under test and its model, kept in step.
struct Pair {
    dir: PathBuf,
    name: String,
    file: File,
    model: File,
    ops: u64,
}

impl Pair {
    fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    fn size(&self) -> u64 {
        self.model.metadata().unwrap().len()
    }

    fn check_range(&self, offset: u64, len: u64, what: &str) {
        let size = self.size();
        assert_eq!(
            self.file.metadata().unwrap().len(),
            size,
            "op {} ({what}): size differs",
            self.ops
        );
        let end = (offset + len).min(size);
        if end <= offset {
            return;
        }
        let mut got = vec![0u8; (end - offset) as usize];
        let mut want = got.clone();
        self.file.read_exact_at(&mut got, offset).unwrap();
        self.model.read_exact_at(&mut want, offset).unwrap();
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "op {} ({what}): byte {} differs: {} instead of {}",
                self.ops,
                offset + at as u64,
                got[at],
                want[at]
            );
        }
    }

    fn check_all(&self, what: &str) {
        self.check_range(0, self.size(), what);
    }
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Map `[0, len)` of `file` shared, run `f` on the bytes, unmap (after msync).
fn with_map(file: &File, len: u64, f: impl FnOnce(&mut [u8])) {
    // SAFETY: a fresh shared mapping of a file at least `len` long, used only inside
    // this function and unmapped before it returns.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        f(std::slice::from_raw_parts_mut(
            ptr.cast::<u8>(),
            len as usize,
        ));
        assert_eq!(libc::msync(ptr, len as usize, libc::MS_SYNC), 0);
        libc::munmap(ptr, len as usize);
    }
}

/// Run `ops` random operations on a file in `mount` (remounted through `remount`),
/// calling `after_close` with the file's path after every close.
fn run(
    seed: u64,
    ops: u64,
    mut mount: Mounted,
    remount: &dyn Fn() -> Mounted,
    after_close: &dyn Fn(&Path, &File, u64),
) {
    let mut rng = Rng(seed | 1);
    let model_dir = tempfile::tempdir().unwrap();
    let model_path = model_dir.path().join("model");
    let mut pair = Pair {
        dir: mount.path().to_path_buf(),
        name: "f0".into(),
        file: open_rw(&mount.join("f0")),
        model: open_rw(&model_path),
        ops: 0,
    };
    let mut renames = 0;
    let started = Instant::now();
    let mut spent: std::collections::BTreeMap<&str, (u64, std::time::Duration)> =
        Default::default();
    for op in 0..ops {
        pair.ops = op;
        let step = Instant::now();
        let size = pair.size();
        let what = match rng.below(100) {
            0..=29 => {
                let offset = rng.offset(size).min(MAX_SIZE - 1);
                let len = rng.len().min(MAX_SIZE - offset);
                let fill: Vec<u8> = (0..len).map(|i| (i ^ op ^ offset) as u8).collect();
                pair.file.write_all_at(&fill, offset).unwrap();
                pair.model.write_all_at(&fill, offset).unwrap();
                pair.check_range(offset, len, "write");
                "write"
            }
            30..=49 => {
                let offset = rng.offset(size);
                pair.check_range(offset, rng.len(), "read");
                "read"
            }
            50..=59 => {
                let new = match rng.below(3) {
                    0 => 0,
                    1 => rng.below(size + 1),
                    _ => rng.below(MAX_SIZE),
                };
                pair.file.set_len(new).unwrap();
                pair.model.set_len(new).unwrap();
                pair.check_range(new.saturating_sub(4096), 8192, "truncate");
                "truncate"
            }
            60..=64 if size > 0 => {
                let offset = rng.below(size);
                let len = rng.len().min(size - offset);
                let mut want = vec![0u8; len as usize];
                pair.model.read_exact_at(&mut want, offset).unwrap();
                with_map(&pair.file, size, |bytes| {
                    let got = &bytes[offset as usize..(offset + len) as usize];
                    assert!(got == want.as_slice(), "op {op}: mmap read differs");
                });
                "mmap read"
            }
            65..=69 if size > 0 => {
                let offset = rng.below(size);
                let len = rng.len().min(size - offset);
                let fill: Vec<u8> = (0..len).map(|i| ((i * 7) ^ op) as u8).collect();
                with_map(&pair.file, size, |bytes| {
                    bytes[offset as usize..(offset + len) as usize].copy_from_slice(&fill);
                });
                pair.model.write_all_at(&fill, offset).unwrap();
                pair.check_range(offset, len, "mmap write");
                "mmap write"
            }
            70..=72 => {
                pair.file.sync_all().unwrap();
                "fsync"
            }
            73..=89 => {
                // Closed before the other mount looks: a stand-in holds the place.
                drop(std::mem::replace(&mut pair.file, open_rw(&model_path)));
                after_close(&pair.path(), &pair.model, op);
                pair.file = open_rw(&pair.path());
                let offset = rng.offset(size);
                pair.check_range(offset, rng.len(), "reopen");
                "close and reopen"
            }
            90..=94 => {
                renames += 1;
                let to = format!("f{renames}");
                fs::rename(pair.path(), pair.dir.join(&to)).unwrap();
                pair.name = to;
                pair.check_range(rng.offset(size), 4096, "rename");
                "rename"
            }
            95..=98 => {
                renames += 1;
                let to = format!("f{renames}");
                fs::hard_link(pair.path(), pair.dir.join(&to)).unwrap();
                fs::remove_file(pair.path()).unwrap();
                pair.name = to;
                pair.check_range(rng.offset(size), 4096, "link and unlink");
                "link"
            }
            99 if op % 40 == 0 => {
                pair.file.sync_all().unwrap();
                drop(std::mem::replace(&mut pair.file, open_rw(&model_path)));
                mount.unmount();
                mount = remount();
                pair.dir = mount.path().to_path_buf();
                pair.file = open_rw(&pair.path());
                pair.check_all("remount");
                "remount"
            }
            _ => "nothing",
        };
        if op % 1000 == 0 {
            pair.check_all(what);
        }
        if std::env::var("DYNAMOFS_FSX_TRACE").is_ok() {
            eprintln!("TRACE op {op}: {what}, size {}", pair.size());
        }
        let entry = spent.entry(what).or_default();
        entry.0 += 1;
        entry.1 += step.elapsed();
    }
    for (what, (count, time)) in &spent {
        println!(
            "  {what:<18} {count:>7} ops  {:>8.2} ms each",
            time.as_secs_f64() * 1e3 / *count as f64
        );
    }
    pair.check_all("the end");
    println!(
        "seed {seed}: {ops} operations in {:?}, final size {}",
        started.elapsed(),
        pair.size()
    );
}

#[test]
fn random_operations_on_the_embedded_store_match_a_local_file() {
    let seed = seed();
    println!("seed {seed} (replay with DYNAMOFS_FSX_SEED={seed})");
    // In memory: this test is about what the filesystem makes of the operations, and
    // a disk flush per close or fsync would make 100,000 of them take a quarter hour.
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let db = store.path().join("fsx.db");
    let remount = || mount_local_with(&db, WRITE_BUFFER);
    run(
        seed,
        env_or("DYNAMOFS_FSX_OPS", 100_000),
        remount(),
        &remount,
        &|_, _, _| {},
    );
}

#[test]
fn random_operations_on_one_mount_are_what_another_mount_opens() {
    let seed = seed();
    println!("seed {seed} (replay with DYNAMOFS_FSX_SEED={seed})");
    let table = unique_table("Fsx");
    let checker = mount_table(&table, "");
    let remount = || mount_table(&table, WRITE_BUFFER);
    let checker_dir = checker.path().to_path_buf();
    run(
        seed,
        env_or("DYNAMOFS_FSX_SHARED_OPS", 3_000),
        remount(),
        &remount,
        &|path, model, op| {
            let name = path.file_name().unwrap();
            let got = fs::read(checker_dir.join(name)).unwrap();
            let mut want = vec![0u8; model.metadata().unwrap().len() as usize];
            model.read_exact_at(&mut want, 0).unwrap();
            assert!(
                got == want,
                "op {op}: the other mount opened {} bytes, not the {} just closed",
                got.len(),
                want.len()
            );
        },
    );
}
