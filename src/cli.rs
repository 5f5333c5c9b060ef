//! Command line: `dynamofs mount`, and the `-o` mount options shared with
//! `mount -t fuse.dynamo` and `/etc/fstab`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::retry::Patience;
use crate::source::Source;

const MOUNT_OPTIONS_HELP: &str = "\
Mount options (-o, comma separated; the same in /etc/fstab):
  endpoint=URL          DynamoDB endpoint (default: AWS_ENDPOINT_URL_DYNAMODB,
                        AWS_ENDPOINT_URL, or the region's public endpoint)
  ro | rw               mount read-only or read-write (default rw)
  allow_other           let users other than the mounting one use the mount
  default_permissions   let the kernel check file modes (default on;
                        nodefault_permissions turns it off)
  uid=N, gid=N          report every file as owned by this user / group
  umask=OOO             clear these permission bits in every reported mode
  attr_ttl=SECS         how long attributes are cached (default 1)
  entry_ttl=SECS        how long directory entries are cached (default 1)
  timeout=SECS          give up on one attempt of a DynamoDB request after this
                        long (default 20)
  retry_budget=SECS     retry a throttled or failed request (5xx, timeout, dropped
                        connection) for this long in all, then fail the system call
                        with EIO and log a warning (default 30)
  threads=N             FUSE worker threads (default 4)
  write_buffer=SIZE     unflushed data per open file (bytes, or with k, m, g) past
                        which its full blocks are written in the background while
                        writing goes on (default 16m)
  compression=CODEC     how this mount compresses the data it writes: zstd, lz4
                        or none (default: what the filesystem was made with; a
                        new one gets zstd); every block records its codec, so
                        mounts with different settings read each other's data
  heartbeat=SECS        how often the session lease is renewed (default 10); a
                        client that stops renewing for 3 heartbeats loses its locks
  metrics=HOST:PORT     serve Prometheus metrics at http://HOST:PORT/metrics (FUSE
                        operations and their latency, DynamoDB requests, retries,
                        conflicts and throttles, cache hits, bytes read and written)
  logfile=PATH          where a daemonized mount logs (default /var/log/dynamofs.log
                        when writable, else /tmp/dynamofs-UID.log)
  Ignored for fstab: _netdev, nofail, auto, noauto, defaults, user, nouser, users,
  exec, noexec, suid, nosuid, dev, nodev, atime, noatime, relatime, async.

Sources:
  aws:REGION/TABLE      DynamoDB tables TABLE and TABLEBlocks (created on first mount)
  local:PATH            the embedded store: one local file, shared by the mounts of
                        this machine

Credentials and region come from the standard AWS chain (environment, profile,
SSO, instance role). Logs honour RUST_LOG (e.g. RUST_LOG=dynamofs=debug).

Examples:
  dynamofs mount aws:us-east-1/Shared /mnt/shared
  dynamofs mount aws:us-east-1/Shared /mnt/shared -o endpoint=http://127.0.0.1:8000 -f
  mount -t fuse.dynamo aws:us-east-1/Shared /mnt/shared
  fstab: aws:us-east-1/Shared /mnt/shared fuse.dynamo _netdev,allow_other 0 0";

/// dynamofs: a shared POSIX filesystem on DynamoDB.
#[derive(Debug, Parser)]
#[command(name = "dynamofs", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a dynamofs filesystem (daemonizes unless -f; returns once the mount is live).
    #[command(after_long_help = MOUNT_OPTIONS_HELP)]
    Mount(MountArgs),
    /// Make a new filesystem, with the settings fixed at creation (block size, the
    /// tables' billing mode, the default codec); refuses one that exists unless --force.
    #[command(after_long_help = MKFS_OPTIONS_HELP)]
    Mkfs(MkfsArgs),
    /// Show the sessions (live and expired), their locks, and the format of a filesystem.
    Status(StatusArgs),
    /// Show what a filesystem holds (inodes, directories, files, symlinks, bytes), who
    /// has it mounted and what its storage costs; --scan recounts and reports drift.
    Stat(StatArgs),
    /// Copy a local directory's tree into a filesystem, without mounting it: modes,
    /// owners, times, symlinks, hard links and extended attributes, with -j workers.
    Import(ImportArgs),
    /// Copy a tree out of a filesystem into a local directory, without mounting it.
    Export(ExportArgs),
    /// Check the consistency of a filesystem: entries, inodes, link counts, blocks
    /// (read-only unless --repair). Exit status: 0 clean, 1 problems found or left,
    /// 2 could not check.
    Fsck(FsckArgs),
    /// Run the DynamoDB-faithful simulator: a proxy in front of DynamoDB Local that adds
    /// latency, transaction conflicts and throttling, and counts requests and capacity.
    Simulate(SimulateArgs),
}

/// Arguments of `dynamofs simulate`.
#[derive(Debug, Args, Clone)]
pub struct SimulateArgs {
    /// Address of DynamoDB Local (or any DynamoDB endpoint speaking plain HTTP)
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub upstream: std::net::SocketAddr,
    /// Address to listen on; point mounts at it with -o endpoint=http://ADDRESS
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub listen: std::net::SocketAddr,
    /// Milliseconds added to every request
    #[arg(long, default_value_t = 5.0)]
    pub latency_ms: f64,
    /// Never cancel overlapping transactions
    #[arg(long)]
    pub no_conflicts: bool,
    /// Never throttle a partition
    #[arg(long)]
    pub no_throttling: bool,
    /// Print the counts this often, in seconds, when they changed
    #[arg(long, default_value_t = 10)]
    pub report_every: u64,
}

/// The options of `dynamofs mkfs`, for `--help`.
const MKFS_OPTIONS_HELP: &str = "\
Options (-o, comma separated):
  block_size=SIZE       bytes per data block, 4k to 384k (default 256k)
  compression=CODEC     the codec mounts write data with unless told otherwise:
                        zstd, lz4 or none (default zstd)
  billing=MODE          how tables made now are billed: on-demand (default) or
                        provisioned, with rcu=N and wcu=N (capacity units per second
                        of each table); tables that exist keep theirs
  endpoint=URL, timeout=SECS, retry_budget=SECS   as for mount

Examples:
  dynamofs mkfs aws:us-east-1/Shared -o block_size=128k
  dynamofs mkfs aws:us-east-1/Shared -o billing=provisioned,rcu=100,wcu=50
  dynamofs mkfs local:/var/lib/dynamofs/fs.db --force";

/// Arguments of `dynamofs mkfs`.
#[derive(Debug, Args, Clone)]
pub struct MkfsArgs {
    /// aws:REGION/TABLE or local:PATH
    pub source: Source,
    /// Options, comma separated (see below)
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Erase the filesystem that is there (every file in it) and make a new one;
    /// refused while clients are mounted
    #[arg(long)]
    pub force: bool,
}

/// Parsed options of `dynamofs mkfs`.
#[derive(Clone, Debug, PartialEq)]
pub struct MkfsOptions {
    /// Endpoint override, request patience: as for mount.
    pub endpoint: Option<String>,
    /// Per-attempt timeout and total retry time of one request.
    pub patience: Patience,
    /// Bytes per data block.
    pub block_size: u64,
    /// The filesystem's default codec.
    pub compression: crate::compression::Compression,
    /// How tables made now are billed.
    pub billing: crate::store::dynamo::Billing,
}

impl MkfsOptions {
    /// Parse `-o` groups.
    pub fn parse<S: AsRef<str>>(groups: &[S]) -> Result<Self, String> {
        let mut o = MkfsOptions {
            endpoint: None,
            patience: Patience::default(),
            block_size: crate::fs::FsConfig::default().block_size,
            compression: Default::default(),
            billing: Default::default(),
        };
        let (mut provisioned, mut rcu, mut wcu) = (false, None, None);
        for opt in groups
            .iter()
            .flat_map(|g| g.as_ref().split(','))
            .filter(|s| !s.is_empty())
        {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            match key {
                "endpoint" => o.endpoint = Some(endpoint(value)?),
                "timeout" => {
                    o.patience.request_timeout =
                        seconds(key, value)?.max(Duration::from_millis(100))
                }
                "retry_budget" => o.patience.retry_budget = seconds(key, value)?,
                "block_size" => {
                    let size = bytes(key, value)? as u64;
                    if !(4096..=crate::fs::MAX_BLOCK_SIZE).contains(&size) || size % 4096 != 0 {
                        return Err(format!(
                            "mkfs option {key}={value}: a block is 4k to 384k, in steps of 4k"
                        ));
                    }
                    o.block_size = size;
                }
                "compression" => {
                    o.compression = crate::compression::Compression::parse(value)
                        .map_err(|e| format!("mkfs option {key}={value}: {e}"))?
                }
                "billing" => match value {
                    "on-demand" => provisioned = false,
                    "provisioned" => provisioned = true,
                    _ => {
                        return Err(format!(
                            "mkfs option {key}={value}: use on-demand or provisioned"
                        ))
                    }
                },
                "rcu" => rcu = Some(number::<i64>(key, value, false)?.max(1)),
                "wcu" => wcu = Some(number::<i64>(key, value, false)?.max(1)),
                _ => {
                    return Err(format!(
                        "unknown mkfs option '{opt}' (see dynamofs mkfs --help)"
                    ))
                }
            }
        }
        o.billing = match (provisioned, rcu, wcu) {
            (false, None, None) => crate::store::dynamo::Billing::OnDemand,
            (true, Some(read_units), Some(write_units)) => {
                crate::store::dynamo::Billing::Provisioned {
                    read_units,
                    write_units,
                }
            }
            (true, _, _) => return Err("billing=provisioned needs rcu=N and wcu=N".into()),
            (false, _, _) => return Err("rcu= and wcu= go with billing=provisioned".into()),
        };
        Ok(o)
    }
}

/// Arguments of `dynamofs status` and `dynamofs fsck`.
#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// aws:REGION/TABLE or local:PATH
    pub source: Source,
    /// Options, as for mount (endpoint=, timeout=)
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `dynamofs stat`.
#[derive(Debug, Args, Clone)]
pub struct StatArgs {
    /// Source, options and output format, as for status.
    #[command(flatten)]
    pub common: StatusArgs,
    /// Recount from every inode record (reads the whole metadata table and the keys of
    /// the blocks table) and show how far the kept totals drifted
    #[arg(long)]
    pub scan: bool,
}

/// Arguments of `dynamofs import`.
#[derive(Debug, Args, Clone)]
pub struct ImportArgs {
    /// Leave files alone that are there already with the same size and modification
    /// time (rsync's quick check), and attributes that are already right
    #[arg(long)]
    pub skip_existing: bool,
    /// Files copied at once
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 16)]
    pub jobs: usize,
    /// The local directory whose contents are copied
    pub local: PathBuf,
    /// Where they go: aws:REGION/TABLE:/PATH or local:FILE:/PATH (made if missing;
    /// without :/PATH, the root)
    pub target: crate::bulk::Place,
    /// Options, as for mount (endpoint=, timeout=, compression=, ...)
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
}

/// Arguments of `dynamofs export`.
#[derive(Debug, Args, Clone)]
pub struct ExportArgs {
    /// Leave local files alone that have the same size and modification time already
    #[arg(long)]
    pub skip_existing: bool,
    /// Files copied at once
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 16)]
    pub jobs: usize,
    /// The directory copied: aws:REGION/TABLE:/PATH or local:FILE:/PATH (without
    /// :/PATH, the root)
    pub source: crate::bulk::Place,
    /// The local directory it is copied into (made if missing)
    pub local: PathBuf,
    /// Options, as for mount (endpoint=, timeout=, ...)
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
}

/// Arguments of `dynamofs fsck`.
#[derive(Debug, Args, Clone)]
pub struct FsckArgs {
    /// Source, options and output format, as for status.
    #[command(flatten)]
    pub common: StatusArgs,
    /// Fix what is found (dangling entries, unnamed inodes into /lost+found, link
    /// counts, stray inline data and blocks) and collect all garbage; lists each fix
    #[arg(long)]
    pub repair: bool,
    /// Repair even while clients are mounted (their work in flight may look broken)
    #[arg(long, requires = "repair")]
    pub force: bool,
}

/// Arguments of `dynamofs mount`.
#[derive(Debug, Args, Clone)]
pub struct MountArgs {
    /// aws:REGION/TABLE or local:PATH
    pub source: Source,
    /// Directory to mount on
    pub mountpoint: PathBuf,
    /// Mount options, comma separated (see below)
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Stay in the foreground
    #[arg(short = 'f', long = "foreground", help_heading = "Process")]
    pub foreground: bool,
    /// Log debug output (implies -f unless a logfile is given)
    #[arg(short = 'd', long = "debug", help_heading = "Process")]
    pub debug: bool,
}

/// Parsed mount options.
#[derive(Clone, Debug, PartialEq)]
pub struct MountOptions {
    /// Endpoint override.
    pub endpoint: Option<String>,
    /// Read-only mount.
    pub read_only: bool,
    /// Let other users in.
    pub allow_other: bool,
    /// Kernel permission checks.
    pub default_permissions: bool,
    /// Forced owner.
    pub uid: Option<u32>,
    /// Forced group.
    pub gid: Option<u32>,
    /// Mode bits to clear.
    pub umask: Option<u32>,
    /// Attribute cache TTL.
    pub attr_ttl: Duration,
    /// Entry cache TTL.
    pub entry_ttl: Duration,
    /// Per-attempt timeout and total retry time of one request.
    pub patience: Patience,
    /// FUSE worker threads.
    pub threads: usize,
    /// Log file of a daemonized mount.
    pub logfile: Option<PathBuf>,
    /// Session lease renewal interval.
    pub heartbeat: Duration,
    /// Unflushed bytes per open file before they are written behind.
    pub write_buffer: usize,
    /// The codec data is written with (None: the filesystem's own setting).
    pub compression: Option<crate::compression::Compression>,
    /// Where to serve Prometheus metrics (HOST:PORT).
    pub metrics: Option<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            endpoint: None,
            read_only: false,
            allow_other: false,
            default_permissions: true,
            uid: None,
            gid: None,
            umask: None,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            patience: Patience::default(),
            threads: 4,
            logfile: None,
            heartbeat: Duration::from_secs(10),
            write_buffer: crate::fs::FsConfig::default().dirty_limit,
            compression: None,
            metrics: None,
        }
    }
}

const IGNORED: &[&str] = &[
    "_netdev", "nofail", "auto", "noauto", "defaults", "user", "nouser", "users", "exec", "noexec",
    "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime", "async",
];

fn seconds(key: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("option {key}={value}: expected a number of seconds"))
}

fn number<T: TryFrom<u64>>(key: &str, value: &str, radix_octal: bool) -> Result<T, String> {
    let parsed = if radix_octal {
        u64::from_str_radix(value, 8).ok()
    } else {
        value.parse::<u64>().ok()
    };
    parsed.and_then(|n| T::try_from(n).ok()).ok_or_else(|| {
        format!(
            "option {key}={value}: expected a{} number",
            if radix_octal { "n octal" } else { "" }
        )
    })
}

/// A size in bytes, with an optional k, m or g suffix (powers of 1024).
fn bytes(key: &str, value: &str) -> Result<usize, String> {
    let lower = value.to_ascii_lowercase();
    let (digits, shift) = [('k', 10), ('m', 20), ('g', 30)]
        .into_iter()
        .find_map(|(suffix, shift)| lower.strip_suffix(suffix).map(|d| (d, shift)))
        .unwrap_or((lower.as_str(), 0));
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("option {key}={value}: expected a size such as 262144, 256k or 16m"))
}

/// A DynamoDB endpoint URL: http or https, with a host.
fn endpoint(value: &str) -> Result<String, String> {
    let host = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .map(|rest| rest.split(['/', ':']).next().unwrap_or_default());
    match host {
        Some(host) if !host.is_empty() => Ok(value.to_string()),
        _ => Err(format!(
            "option endpoint={value}: expected a URL such as http://127.0.0.1:8000 or https://dynamodb.us-east-1.amazonaws.com"
        )),
    }
}

impl MountOptions {
    /// Parse `-o` strings (each comma separated); unknown options are an error.
    pub fn parse<S: AsRef<str>>(groups: &[S]) -> Result<Self, String> {
        let mut o = MountOptions::default();
        for opt in groups
            .iter()
            .flat_map(|g| g.as_ref().split(','))
            .filter(|s| !s.is_empty())
        {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, value) {
                ("endpoint", Some(v)) => o.endpoint = Some(endpoint(v)?),
                ("ro", None) => o.read_only = true,
                ("rw", None) => o.read_only = false,
                ("allow_other", None) => o.allow_other = true,
                ("default_permissions", None) => o.default_permissions = true,
                ("nodefault_permissions", None) => o.default_permissions = false,
                ("uid", Some(v)) => o.uid = Some(number(key, v, false)?),
                ("gid", Some(v)) => o.gid = Some(number(key, v, false)?),
                ("umask", Some(v)) => o.umask = Some(number::<u32>(key, v, true)? & 0o7777),
                ("attr_ttl", Some(v)) => o.attr_ttl = seconds(key, v)?,
                ("entry_ttl", Some(v)) => o.entry_ttl = seconds(key, v)?,
                ("timeout", Some(v)) => {
                    o.patience.request_timeout = seconds(key, v)?.max(Duration::from_millis(100))
                }
                ("retry_budget", Some(v)) => o.patience.retry_budget = seconds(key, v)?,
                ("threads", Some(v)) => o.threads = number::<usize>(key, v, false)?.clamp(1, 64),
                ("logfile", Some(v)) => o.logfile = Some(PathBuf::from(v)),
                ("write_buffer", Some(v)) => o.write_buffer = bytes(key, v)?,
                ("compression", Some(v)) => {
                    o.compression = Some(
                        crate::compression::Compression::parse(v)
                            .map_err(|e| format!("mount option {key}={v}: {e}"))?,
                    )
                }
                ("metrics", Some(v)) => {
                    if v.rsplit_once(':')
                        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
                    {
                        return Err(format!(
                            "mount option {key}={v}: want HOST:PORT, e.g. 127.0.0.1:9100"
                        ));
                    }
                    o.metrics = Some(v.to_string());
                }
                ("heartbeat", Some(v)) => {
                    o.heartbeat = seconds(key, v)?.max(Duration::from_millis(200))
                }
                (k, None) if IGNORED.contains(&k) => {}
                _ => {
                    return Err(format!(
                        "unknown mount option '{opt}' (see dynamofs mount --help)"
                    ))
                }
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_rejects_unknown_ones() {
        let o = MountOptions::parse(&[
            "ro,uid=5,umask=022",
            "endpoint=http://127.0.0.1:1,_netdev,attr_ttl=0.5",
        ])
        .unwrap();
        assert!(o.read_only);
        assert_eq!(o.uid, Some(5));
        assert_eq!(o.umask, Some(0o22));
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(o.attr_ttl, Duration::from_millis(500));
        assert!(MountOptions::parse(&["bogus"])
            .unwrap_err()
            .contains("unknown mount option"));
        assert!(MountOptions::parse(&["uid=x"]).is_err());
        assert!(MountOptions::parse(&["umask=9"]).is_err());
        let o = MountOptions::parse(&["timeout=2,retry_budget=7.5"]).unwrap();
        assert_eq!(o.patience.request_timeout, Duration::from_secs(2));
        assert_eq!(o.patience.retry_budget, Duration::from_millis(7500));
        let o = MountOptions::parse(&["compression=lz4"]).unwrap();
        assert_eq!(o.compression, Some(crate::compression::Compression::Lz4));
        assert!(MountOptions::parse(&["compression=gzip"])
            .unwrap_err()
            .contains("zstd, lz4 or none"));
        let o = MountOptions::parse(&["write_buffer=256k"]).unwrap();
        assert_eq!(o.write_buffer, 256 * 1024);
        let o = MountOptions::parse(&["write_buffer=1G"]).unwrap();
        assert_eq!(o.write_buffer, 1 << 30);
        assert!(MountOptions::parse(&["write_buffer=16q"]).is_err());
        let o = MountOptions::parse(&["metrics=localhost:9100"]).unwrap();
        assert_eq!(o.metrics.as_deref(), Some("localhost:9100"));
        for bad in ["metrics=9100", "metrics=host:port", "metrics=:99999"] {
            assert!(MountOptions::parse(&[bad])
                .unwrap_err()
                .contains("HOST:PORT"));
        }
    }

    #[test]
    fn endpoints_are_checked_when_parsed() {
        for good in [
            "http://127.0.0.1:8000",
            "https://dynamodb.eu-west-1.amazonaws.com/",
        ] {
            assert_eq!(
                MountOptions::parse(&[format!("endpoint={good}")])
                    .unwrap()
                    .endpoint
                    .as_deref(),
                Some(good)
            );
        }
        for bad in ["notaurl", "ftp://host", "http://", "http://:80", ""] {
            let err = MountOptions::parse(&[format!("endpoint={bad}")]).unwrap_err();
            assert!(err.contains("expected a URL such as"), "{bad}: {err}");
        }
    }
}
