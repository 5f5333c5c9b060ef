//! Mounted: three mount processes of one table run a mixed storm of metadata and
//! data operations on shared names at once, through the simulator with DynamoDB's
//! transaction conflicts on (and 2 ms per request, so that transactions overlap);
//! afterwards the consistency checker finds nothing wrong and every O_EXCL name had
//! exactly one winner. With `DYNAMOFS_TEST_STORE=local`, the three mounts share one
//! `local:` file instead.

mod common;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{dynamo_local, mount_table, unique_table};
use dynamofs::simulator::{SimConfig, Simulator};

const DIRS: usize = 4;
const NAMES: usize = 8;
const EXCL_NAMES: usize = 150;

/// Errnos a racing operation may legitimately get. ESTALE is among them, as on NFS:
/// the kernel retries once, but a file can be deleted by another client twice in a row.
const EXPECTED: &[i32] = &[
    libc::ENOENT,
    libc::EEXIST,
    libc::ENOTEMPTY,
    libc::EISDIR,
    libc::ENOTDIR,
    libc::EPERM,
    libc::EINVAL,
    libc::ESTALE,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn storm_worker(
    root: PathBuf,
    seed: u64,
    until: Instant,
    errors: Arc<Mutex<HashMap<String, usize>>>,
) -> (usize, Vec<usize>) {
    let mut rng = Rng(seed);
    let mut ops = 0;
    let mut excl_won = Vec::new();
    let mut next_excl = 0;
    let name = |rng: &mut Rng| root.join(format!("d{}/n{}", rng.next(DIRS), rng.next(NAMES)));
    while Instant::now() < until {
        ops += 1;
        let op = rng.next(9);
        let result: std::io::Result<()> = match op {
            0 => {
                // Walk through the O_EXCL names; each worker tries every one of them.
                let path = root.join(format!("excl/x{next_excl}"));
                next_excl = (next_excl + 1) % EXCL_NAMES;
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut f) => {
                        excl_won.push((next_excl + EXCL_NAMES - 1) % EXCL_NAMES);
                        f.write_all(format!("{seed}").as_bytes())
                    }
                    Err(e) => Err(e),
                }
            }
            1 => fs::create_dir(name(&mut rng)),
            2 => fs::remove_dir(name(&mut rng)),
            3 => fs::rename(name(&mut rng), name(&mut rng)),
            4 => fs::hard_link(name(&mut rng), name(&mut rng)),
            5 => fs::remove_file(name(&mut rng)),
            6 | 7 => OpenOptions::new()
                .append(true)
                .create(true)
                .open(name(&mut rng))
                .and_then(|mut f| f.write_all(b"appended line\n")),
            _ => fs::metadata(name(&mut rng)).map(|_| ()),
        };
        if let Err(e) = result {
            let errno = e.raw_os_error().unwrap_or(0);
            if !EXPECTED.contains(&errno) {
                *errors
                    .lock()
                    .unwrap()
                    .entry(format!("operation {op}: {e}"))
                    .or_default() += 1;
            }
        }
    }
    (ops, excl_won)
}

#[test]
fn three_clients_storm_and_the_checker_finds_nothing_wrong() {
    let table = unique_table("Storm");
    let config = SimConfig {
        latency: Duration::from_millis(2),
        ..SimConfig::default()
    };
    // On local: files (DYNAMOFS_TEST_STORE=local) the mounts share one SQLite file, whose
    // writers take turns: there is no simulator, and no DynamoDB conflict to count.
    let sim = (!common::on_local_files())
        .then(|| Simulator::start(dynamo_local().addr(), config).unwrap());
    let options = match &sim {
        Some(sim) => format!("heartbeat=2,endpoint={}", sim.endpoint()),
        None => "heartbeat=2".to_string(),
    };
    let mounts: Vec<_> = (0..3).map(|_| mount_table(&table, &options)).collect();
    for d in 0..DIRS {
        fs::create_dir(mounts[0].join(&format!("d{d}"))).unwrap();
    }
    fs::create_dir(mounts[0].join("excl")).unwrap();
    let seconds: u64 = std::env::var("DYNAMOFS_STORM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let until = Instant::now() + Duration::from_secs(seconds);
    let errors = Arc::new(Mutex::new(HashMap::new()));
    let workers: Vec<_> = (0..9)
        .map(|w| {
            let root = mounts[w % 3].path().to_path_buf();
            let errors = errors.clone();
            std::thread::spawn(move || {
                storm_worker(
                    root,
                    0x9E3779B97F4A7C15 ^ ((w as u64 + 1) * 7919),
                    until,
                    errors,
                )
            })
        })
        .collect();
    let mut total = 0;
    let mut winners: HashMap<usize, usize> = HashMap::new();
    for w in workers {
        let (ops, won) = w.join().unwrap();
        total += ops;
        for x in won {
            *winners.entry(x).or_default() += 1;
        }
    }
    println!("storm: {total} operations by 9 workers on 3 mounts in {seconds} s");
    let unexpected = errors.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected errors: {unexpected:?}");
    if let Some(sim) = &sim {
        let counts = sim.counts();
        print!(
            "the simulator cancelled {} transactions for conflicts\n{counts}",
            counts.conflicts()
        );
        assert!(
            counts.conflicts() > 0,
            "no transaction conflict was simulated: the storm did not test that path"
        );
    }
    let tried: Vec<String> = fs::read_dir(mounts[1].join("excl"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for name in &tried {
        let x: usize = name[1..].parse().unwrap();
        assert_eq!(
            winners.get(&x),
            Some(&1),
            "{name} must have exactly one winner"
        );
    }
    assert_eq!(tried.len(), winners.len(), "every winner's file exists");

    for m in &mounts {
        m.unmount();
    }
    let out = common::dynamofs_on_table("fsck", &table, &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "fsck found problems:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(" 0 pending cleanups, 0 files pending deletion, 0 problems"),
        "{report}"
    );
}
