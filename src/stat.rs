//! `dynamofs stat`: what a filesystem holds (inodes, directories, files, symlinks,
//! the bytes of its files), from the usage totals it keeps (see `fs/usage.rs`), with
//! the clients that have it mounted and what its storage costs a month; `--scan`
//! recounts from the inodes and reports how far the totals drifted.

use serde::Serialize;

use crate::cli::StatArgs;
use crate::fs::Fs;
use crate::records::Usage;
use crate::source::Source;

/// DynamoDB Standard storage, in US dollars per GB-month (us-east-1, on-demand and
/// provisioned alike).
const USD_PER_GB_MONTH: f64 = 0.25;
/// Bytes DynamoDB adds to every item when it bills storage.
const ITEM_OVERHEAD_BYTES: u64 = 100;

/// Everything `dynamofs stat` reports.
#[derive(Debug, Serialize)]
pub struct Stat {
    /// The source, as given.
    pub source: String,
    /// Inode records (None: the filesystem keeps no totals yet; `fsck --repair` counts them).
    pub inodes: Option<i64>,
    /// Directories, the root among them.
    pub directories: Option<i64>,
    /// Regular files.
    pub files: Option<i64>,
    /// Symbolic links.
    pub symlinks: Option<i64>,
    /// The sum of the regular files' lengths.
    pub logical_bytes: Option<i64>,
    /// The bytes the data takes as stored, after compression: not kept yet (always
    /// null; README's limits).
    pub stored_bytes: Option<u64>,
    /// Bytes per data block.
    pub block_size: u64,
    /// The live clients, as `host:mountpoint`: each may have up to a heartbeat of
    /// changes not yet added to the totals.
    pub mounted_on: Vec<String>,
    /// What DynamoDB storage of this much data costs a month, estimated from the
    /// logical bytes (an upper bound: compression stores less) and an item per inode,
    /// entry and block. None for a local file.
    pub estimated_monthly_storage_usd: Option<f64>,
    /// The recount, with `--scan`.
    pub scan: Option<Scan>,
}

/// What `--scan` counted.
#[derive(Debug, Serialize)]
pub struct Scan {
    /// The totals counted from every inode record.
    pub counted: Usage,
    /// Block records in the blocks table.
    pub blocks: usize,
    /// Counted minus recorded (all zero when the totals are right; None when none are kept).
    pub drift: Option<Usage>,
}

/// Gather what `stat` reports of `fs`.
async fn gather(fs: &Fs, source: &Source, scan: bool) -> Result<Stat, crate::fs::FsError> {
    let usage = fs.usage().await?;
    let block_size = fs.format_record().block_size;
    let scan = match scan {
        true => {
            let report = fs.check(&|_| {}).await?;
            Some(Scan {
                counted: report.usage,
                blocks: report.blocks,
                drift: usage.map(|recorded| {
                    let mut drift = report.usage;
                    drift -= recorded;
                    drift
                }),
            })
        }
        false => None,
    };
    let estimated_monthly_storage_usd = match source {
        Source::Aws { .. } => usage.map(|u| monthly_cost(&u, block_size)),
        Source::Local { .. } => None,
    };
    Ok(Stat {
        source: source.to_string(),
        inodes: usage.map(|u| u.inodes),
        directories: usage.map(|u| u.directories),
        files: usage.map(|u| u.files),
        symlinks: usage.map(|u| u.symlinks),
        logical_bytes: usage.map(|u| u.logical_bytes),
        stored_bytes: None,
        block_size,
        mounted_on: fs.live_mounts().await?,
        estimated_monthly_storage_usd,
        scan,
    })
}

/// The storage bill of `usage` a month: its bytes, and the overhead of an inode
/// item and an entry per inode and an item per block.
fn monthly_cost(usage: &Usage, block_size: u64) -> f64 {
    let bytes = usage.logical_bytes.max(0) as u64;
    let items = 2 * usage.inodes.max(0) as u64 + bytes.div_ceil(block_size);
    let billed = bytes + items * ITEM_OVERHEAD_BYTES;
    billed as f64 / 1e9 * USD_PER_GB_MONTH
}

fn print_human(stat: &Stat) {
    println!("filesystem {}", stat.source);
    match (stat.inodes, stat.logical_bytes) {
        (Some(inodes), Some(bytes)) => {
            println!(
                "  {inodes} inodes: {} directories, {} files, {} symlinks, {} other",
                stat.directories.unwrap_or(0),
                stat.files.unwrap_or(0),
                stat.symlinks.unwrap_or(0),
                inodes
                    - stat.directories.unwrap_or(0)
                    - stat.files.unwrap_or(0)
                    - stat.symlinks.unwrap_or(0)
            );
            println!("  {bytes} bytes in files ({})", human_bytes(bytes));
        }
        _ => println!(
            "  no usage totals kept yet (the filesystem was made before they were): \
             `dynamofs fsck --repair` counts them"
        ),
    }
    if let Some(usd) = stat.estimated_monthly_storage_usd {
        println!(
            "  storage about ${usd:.2} a month at ${USD_PER_GB_MONTH}/GB-month \
             (from the bytes in files; compression stores less)"
        );
    }
    match stat.mounted_on.len() {
        0 => println!("  not mounted"),
        n => println!(
            "  mounted by {n} client(s): {} (each adds its changes to the totals every heartbeat)",
            stat.mounted_on.join(", ")
        ),
    }
    if let Some(scan) = &stat.scan {
        let c = &scan.counted;
        println!(
            "scan: {} inodes, {} directories, {} files, {} symlinks, {} bytes in files, {} blocks",
            c.inodes, c.directories, c.files, c.symlinks, c.logical_bytes, scan.blocks
        );
        match &scan.drift {
            Some(drift) if drift.is_zero() => println!("  the totals are exact"),
            Some(drift) => println!(
                "  the totals drifted by {} inodes, {} directories, {} files, {} symlinks, {} bytes{}",
                drift.inodes,
                drift.directories,
                drift.files,
                drift.symlinks,
                drift.logical_bytes,
                match stat.mounted_on.is_empty() {
                    true => ": `dynamofs fsck --repair` writes the recount",
                    false => " (mounted clients' latest changes are not added yet)",
                }
            ),
            None => {}
        }
    }
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Run `dynamofs stat`; returns the exit code.
pub fn run(args: StatArgs) -> i32 {
    let source = args.common.source.clone();
    match crate::status::with_fs(&args.common, false, async |fs| {
        gather(&fs, &source, args.scan)
            .await
            .map_err(|e| e.to_string())
    }) {
        Ok(stat) if args.common.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&stat).expect("stat serializes")
            );
            0
        }
        Ok(stat) => {
            print_human(&stat);
            0
        }
        Err(e) => {
            eprintln!("dynamofs: cannot read {source}: {e}");
            1
        }
    }
}
