//! The records stored under the keys of [`crate::keys`], and their conversion to items.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::compression::Compression;
use crate::store::{Item, StoreError};

/// The on-disk format this build reads and writes. Format 3 added doomed inodes and
/// the open files listed in session records (see `fs/gc.rs`); format 4, compressed
/// blocks and inline data (see [`crate::compression`]); format 5, directory leases
/// (see `fs/lease.rs`).
pub const FORMAT_VERSION: u32 = 5;

/// The filesystem-wide record written once, when the tables are first formatted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    /// On-disk format version; a mount of another version stops.
    pub version: u32,
    /// Bytes per data block.
    pub block_size: u64,
    /// How many partitions (blockIds) the blocks of one file are spread over.
    pub stripes: u64,
    /// The codec mounts write data with unless told otherwise (each item names the
    /// codec it was written with). Formats before 4 stored everything raw.
    #[serde(default = "no_compression")]
    pub compression: Compression,
}

fn no_compression() -> Compression {
    Compression::None
}

/// The filesystem's usage totals (key `f:` / `usage`): what it holds, kept without
/// scans. Each client adds what its committed transactions changed with atomic adds
/// (see `fs/usage.rs`), so many clients never overwrite each other's counts; a crash
/// loses at most one heartbeat of one client's changes, which `fsck --repair` recounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Inode records: every file, directory, symlink and other node, with files whose
    /// last name went away but whose data is not deleted yet.
    pub inodes: i64,
    /// Directories, the root among them.
    pub directories: i64,
    /// Regular files.
    pub files: i64,
    /// Symbolic links.
    pub symlinks: i64,
    /// The sum of the regular files' lengths.
    pub logical_bytes: i64,
}

impl Usage {
    /// What one inode of `kind` and `size` bytes adds to the totals.
    pub fn of(kind: FileKind, size: u64) -> Usage {
        Usage {
            inodes: 1,
            directories: i64::from(kind == FileKind::Dir),
            files: i64::from(kind == FileKind::File),
            symlinks: i64::from(kind == FileKind::Symlink),
            logical_bytes: if kind == FileKind::File {
                size as i64
            } else {
                0
            },
        }
    }

    /// Every total, by its attribute name.
    pub fn fields(&self) -> [(&'static str, i64); 5] {
        [
            ("inodes", self.inodes),
            ("directories", self.directories),
            ("files", self.files),
            ("symlinks", self.symlinks),
            ("logical_bytes", self.logical_bytes),
        ]
    }

    /// Whether every total is zero (nothing changed).
    pub fn is_zero(&self) -> bool {
        self.fields().iter().all(|(_, n)| *n == 0)
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.inodes += other.inodes;
        self.directories += other.directories;
        self.files += other.files;
        self.symlinks += other.symlinks;
        self.logical_bytes += other.logical_bytes;
    }
}

impl std::ops::SubAssign for Usage {
    fn sub_assign(&mut self, other: Usage) {
        *self += Usage {
            inodes: -other.inodes,
            directories: -other.directories,
            files: -other.files,
            symlinks: -other.symlinks,
            logical_bytes: -other.logical_bytes,
        };
    }
}

/// The type of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device node.
    Char,
    /// A block device node.
    Block,
    /// A UNIX socket node.
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Char => libc::S_IFCHR,
            FileKind::Block => libc::S_IFBLK,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFCHR => FileKind::Char,
            libc::S_IFBLK => FileKind::Block,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// A point in time with nanoseconds, as POSIX timestamps need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub s: i64,
    /// Nanoseconds within the second.
    pub n: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        SystemTime::now().into()
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                s: d.as_secs() as i64,
                n: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
                if n == 0 {
                    Timestamp { s: -s, n: 0 }
                } else {
                    Timestamp {
                        s: -s - 1,
                        n: 1_000_000_000 - n,
                    }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.s >= 0 {
            UNIX_EPOCH + Duration::new(t.s as u64, t.n)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.s.unsigned_abs()) + Duration::from_nanos(t.n as u64)
        }
    }
}

/// The attributes of one file, directory or other node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Inode number.
    pub ino: u64,
    /// Type of node.
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes (regular files and symlinks).
    pub size: u64,
    /// Number of directory entries naming it (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last change of content.
    pub mtime: Timestamp,
    /// Last change of attributes.
    pub ctime: Timestamp,
    /// Device number of device nodes.
    #[serde(default)]
    pub rdev: u32,
    /// Parent directory (directories only; 0 for other kinds).
    #[serde(default)]
    pub parent: u64,
    /// Target of a symlink.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<u8>,
    /// Extended attributes, by encoded name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, ByteBuf>,
    /// Block 0 lives in the inline item beside the inode, not in the blocks table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
    /// Directories: the session that holds the directory's lease, if one ever did
    /// (see `fs/lease.rs`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease_by: String,
    /// Directories: when that lease ends, in milliseconds since the epoch (0: ended).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_until: u64,
    /// Directories: another client asked the holder to give the lease up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lease_recall: bool,
    /// Version for optimistic locking; bumped by every write of this record.
    pub ver: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Inode {
    /// A new, empty directory `ino` in `parent`, owned by `owner` (uid, gid), mode 0755,
    /// made at `now`, at version 1.
    pub fn empty_dir(ino: u64, parent: u64, owner: (u32, u32), now: Timestamp) -> Inode {
        Inode {
            ino,
            kind: FileKind::Dir,
            mode: 0o755,
            uid: owner.0,
            gid: owner.1,
            size: 0,
            nlink: 2,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            parent,
            target: Vec::new(),
            xattrs: Default::default(),
            inline: false,
            lease_by: String::new(),
            lease_until: 0,
            lease_recall: false,
            ver: 1,
        }
    }

    /// A regular file whose last name went away, kept only for open descriptors.
    pub fn is_nameless(&self) -> bool {
        self.kind == FileKind::File && self.nlink == 0
    }

    /// A directory gained or lost names at `now` (and `nlink_delta` subdirectories).
    pub fn touch(&mut self, now: Timestamp, nlink_delta: i64) {
        self.mtime = now;
        self.ctime = now;
        self.nlink = (self.nlink as i64 + nlink_delta).max(0) as u32;
    }
}

/// A directory entry: a name in a directory pointing at an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The inode the name points at.
    pub ino: u64,
    /// Its kind, so readdir needs no inode reads.
    pub kind: FileKind,
}

/// A pending cleanup: the blocks of `ino` holding bytes from `keep` up to `stored`
/// are to be deleted (the block holding byte `keep` is trimmed). Written in the same
/// transaction that made them garbage, deleted once they are gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    /// The inode whose blocks are to be trimmed.
    pub ino: u64,
    /// Bytes to keep.
    pub keep: u64,
    /// Bytes that may be stored (the size before the change).
    pub stored: u64,
    /// The session that committed it and deletes the blocks at once; if it dies first,
    /// any live client finishes the job. (None: written before format 3.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// A regular file whose last name went away. It may still be open on any client, so
/// it is deleted with its data only once every live session has renewed its lease
/// since `at_ms` without listing it among its open files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doomed {
    /// The inode.
    pub ino: u64,
    /// Milliseconds since the epoch when its last name went away.
    pub at_ms: u64,
    /// The inode as the unlink left it, so that a collector can delete it without
    /// reading it first (on the condition that its version has not moved since).
    /// Absent in the records of older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<FileRemains>,
}

/// What deleting a regular file needs to know of its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRemains {
    /// The inode's version.
    pub ver: u64,
    /// Its size.
    pub size: u64,
    /// Whether its first block is inline.
    pub inline: bool,
}

impl FileRemains {
    /// What `inode` holds of them.
    pub fn of(inode: &Inode) -> Self {
        FileRemains {
            ver: inode.ver,
            size: inode.size,
            inline: inode.inline,
        }
    }
}

/// A mounted client. Its lease is renewed on every heartbeat; once `expires` has
/// passed (by more than a grace period), the client counts as dead and any other
/// client may release its locks and delete the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random identifier of this mount.
    pub id: String,
    /// Host name of the client.
    pub host: String,
    /// Process id of the mount process.
    pub pid: u32,
    /// Where it is mounted.
    pub mountpoint: String,
    /// dynamofs version of the client.
    pub version: String,
    /// When the mount started.
    pub started: Timestamp,
    /// Milliseconds since the epoch when the lease runs out.
    pub expires_ms: u64,
    /// Heartbeat interval in milliseconds (the lease is several of them).
    pub heartbeat_ms: u64,
    /// The regular files this client held open when it last renewed its lease: their
    /// data outlives the loss of their last name until it closes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<u64>,
}

/// Whether a lock is shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Shared (F_RDLCK, LOCK_SH).
    Read,
    /// Exclusive (F_WRLCK, LOCK_EX).
    Write,
}

/// One held byte-range lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The session holding it.
    pub session: String,
    /// The lock owner within that session (the kernel's lock owner id).
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (`u64::MAX` for "to the end of file").
    pub end: u64,
    /// Shared or exclusive.
    pub kind: LockKind,
    /// Process id of the holder, on its host, for F_GETLK.
    pub pid: u32,
}

/// Every lock held on one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSet {
    /// The locks, in no particular order.
    #[serde(default)]
    pub locks: Vec<Lock>,
    /// Version for optimistic locking.
    pub ver: u64,
}

/// Serialize a record into an item.
pub fn to_item<T: Serialize>(record: &T) -> Item {
    serde_dynamo::to_item(record).expect("records always serialize to an item")
}

/// Deserialize an item into a record; a malformed item is reported, not trusted.
pub fn from_item<T: DeserializeOwned>(item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::fatal(format!("malformed record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_before_and_after_the_epoch() {
        for t in [
            Timestamp { s: 5, n: 7 },
            Timestamp { s: -3, n: 250 },
            Timestamp { s: -1, n: 0 },
        ] {
            assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        }
    }

    #[test]
    fn inode_round_trips_through_an_item() {
        let now = Timestamp::now();
        let inode = Inode {
            ino: 9,
            kind: FileKind::Symlink,
            mode: 0o777,
            uid: 1,
            gid: 2,
            size: 3,
            nlink: 1,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            parent: 0,
            target: b"a\xffb".to_vec(),
            xattrs: [("user.k".to_string(), ByteBuf::from(vec![0u8, 1]))].into(),
            inline: true,
            lease_by: "session".into(),
            lease_until: 5,
            lease_recall: true,
            ver: 4,
        };
        assert_eq!(from_item::<Inode>(to_item(&inode)).unwrap(), inode);
    }
}
