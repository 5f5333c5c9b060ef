//! The key layout: where every record kind lives in the two tables.
//!
//! ```text
//! <TABLE>         path (S, hash)     name (S, range)    record
//! ------------------------------------------------------------------------------
//!                 f:                 format             Format: version, block size, stripes
//!                 f:                 inodes             inode counter: next (N), taken by ADD
//!                 f:                 usage              Usage totals (N): inodes, directories,
//!                                                       files, symlinks, logical_bytes, each
//!                                                       moved by ADD
//!                 i:<ino>            .                  Inode: kind, mode, owner, size, times,
//!                                                       nlink, parent, symlink target, xattrs,
//!                                                       inline flag, ver
//!                 i:<ino>            data               inline data (B): block 0 of a small file
//!                                                       (when the inode's inline flag is set),
//!                                                       read with the inode by one query
//!                 d:<dir ino>        <encoded name>     Entry: child ino, kind
//!                 g:                 <ino>              pending block cleanup (truncate, delete)
//!                 g:                 u<ino>             doomed file: no name left, deleted once
//!                                                       no live session holds it open
//!                 g:                 w<ino>             writers: the sessions that may be
//!                                                       writing blocks past the file's size
//!                 s:                 <session id>       Session: host, pid, mountpoint, lease,
//!                                                       the files it holds open
//!                 l:                 <ino>              Locks: every byte-range and flock lock
//!                                                       on the file, with its session and owner
//!
//! <TABLE>Blocks   blockId (S, hash)  blockNum (N, range)
//! ------------------------------------------------------------------------------
//!                 <ino>:<stripe>     <block index>      data (B): at most one block
//! ```
//!
//! Inode numbers are decimal. Block `n` of inode `i` lives in partition
//! `i:(n mod stripes)`, so a large file spreads over `stripes` partitions and every
//! block of one stripe can be found (for deletion) by a query of that partition.
//!
//! Names are bytes on Linux but strings in DynamoDB: a name that is valid UTF-8 and
//! does not begin with U+0001 is stored as it is; any other name is stored as U+0001
//! followed by the URL-safe base64 of its bytes, so every name round-trips exactly.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::store::Key;

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

const ESCAPE: char = '\u{1}';

/// Key of the format record.
pub fn format_key() -> Key {
    Key::meta("f:", "format")
}

/// Key of the global inode counter.
pub fn inode_counter_key() -> Key {
    Key::meta("f:", "inodes")
}

/// Key of the usage totals.
pub fn usage_key() -> Key {
    Key::meta("f:", "usage")
}

/// Sort key of the inode record in its partition.
pub const INODE_NAME: &str = ".";
/// Sort key of the inline data in the inode's partition.
pub const INLINE_NAME: &str = "data";

/// Partition holding inode `ino`'s record and inline data.
pub fn inode_partition(ino: u64) -> String {
    format!("i:{ino}")
}

/// Key of inode `ino`'s attribute record.
pub fn inode_key(ino: u64) -> Key {
    Key::meta(inode_partition(ino), INODE_NAME)
}

/// Key of inode `ino`'s inline data.
pub fn inline_key(ino: u64) -> Key {
    Key::meta(inode_partition(ino), INLINE_NAME)
}

/// Partition holding the entries of directory `dir`.
pub fn entries_partition(dir: u64) -> String {
    format!("d:{dir}")
}

/// Key of the entry `name` in directory `dir`.
pub fn entry_key(dir: u64, name: &[u8]) -> Key {
    Key::meta(entries_partition(dir), encode_name(name))
}

/// Partition of the garbage records: pending block cleanups and doomed files.
pub const GARBAGE_PARTITION: &str = "g:";

/// Key of the pending block cleanup of inode `ino`.
pub fn cleanup_key(ino: u64) -> Key {
    Key::meta(GARBAGE_PARTITION, ino.to_string())
}

/// Sort-key prefix of doomed files in the garbage partition.
pub const DOOMED_PREFIX: &str = "u";

/// Key of the record that regular file `ino` lost its last name.
pub fn doomed_key(ino: u64) -> Key {
    Key::meta(GARBAGE_PARTITION, format!("{DOOMED_PREFIX}{ino}"))
}

/// Sort-key prefix of writer records in the garbage partition.
pub const WRITERS_PREFIX: &str = "w";

/// Key of the record of the sessions that may be writing blocks past the size of `ino`.
pub fn writers_key(ino: u64) -> Key {
    Key::meta(GARBAGE_PARTITION, format!("{WRITERS_PREFIX}{ino}"))
}

/// Attribute of a writers record that says whether `session` is writing (1) or not (0).
pub fn writer_attr(session: &str) -> String {
    format!("w_{session}")
}

/// Partition of the client sessions.
pub const SESSION_PARTITION: &str = "s:";

/// Key of session `id`.
pub fn session_key(id: &str) -> Key {
    Key::meta(SESSION_PARTITION, id)
}

/// Partition of the lock records, one item per locked file.
pub const LOCK_PARTITION: &str = "l:";

/// Key of the lock record of inode `ino`.
pub fn lock_key(ino: u64) -> Key {
    Key::meta(LOCK_PARTITION, ino.to_string())
}

/// Partition (blockId) of stripe `stripe` of inode `ino`.
pub fn block_partition(ino: u64, stripe: u64) -> String {
    format!("{ino}:{stripe}")
}

/// Key of block `index` of inode `ino` when files are spread over `stripes` partitions.
pub fn block_key(ino: u64, index: u64, stripes: u64) -> Key {
    Key::block(block_partition(ino, index % stripes), index)
}

/// The stored form of a file name (see the module header).
pub fn encode_name(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) if !s.starts_with(ESCAPE) => s.to_owned(),
        _ => format!("{ESCAPE}{}", URL_SAFE_NO_PAD.encode(name)),
    }
}

/// The bytes of a stored name; `None` if it is not a valid encoding.
pub fn decode_name(stored: &str) -> Option<Vec<u8>> {
    match stored.strip_prefix(ESCAPE) {
        Some(b64) => URL_SAFE_NO_PAD.decode(b64).ok(),
        None => Some(stored.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn names_round_trip(name in proptest::collection::vec(1u8..=255, 1..255)) {
            prop_assert_eq!(decode_name(&encode_name(&name)), Some(name));
        }
    }

    #[test]
    fn plain_names_are_stored_readably() {
        assert_eq!(encode_name(b"hello.txt"), "hello.txt");
        assert!(encode_name(b"\xff\xfe").starts_with(ESCAPE));
        assert!(encode_name("\u{1}x".as_bytes()).starts_with(ESCAPE));
    }
}
