//! opendir, readdir and releasedir.
//!
//! A directory handle lists the directory once, when it is read from offset 0, and
//! serves later offsets from that snapshot: offsets stay stable however the directory
//! changes meanwhile (rewinddir takes a new snapshot). A complete listing this client
//! holds from within `entry_ttl` is served without a query, as lookups are. Listing
//! also reads the inodes of the entries not cached in batches, so the lookups of an
//! `ls -l` that follows hit the cache.

use std::collections::HashMap;
use std::sync::Arc;

use super::cache::INODE_BATCH_LIMIT;
use super::{DirEntry, Fs, FsError, FsResult, Handle};
use crate::keys::{self, decode_name, encode_name};
use crate::records::{from_item, Entry, FileKind, Inode};
use crate::store::{SortKey, Table};

/// A part of a directory handle's snapshot, without copying the rest.
struct SnapshotSlice {
    listing: Arc<Vec<DirEntry>>,
    range: std::ops::Range<usize>,
}

impl std::ops::Deref for SnapshotSlice {
    type Target = [DirEntry];

    fn deref(&self) -> &[DirEntry] {
        &self.listing[self.range.clone()]
    }
}

#[derive(Default)]
pub(super) struct DirHandle {
    snapshot: Option<Arc<Vec<DirEntry>>>,
}

impl Fs {
    /// Open directory `ino` for listing.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        self.load_dir(ino, false).await?;
        Ok(self.new_handle(Handle::Dir(DirHandle::default())))
    }

    /// Entries from position `offset` on; entry `i` of the answer has offset `offset + i + 1`.
    pub async fn readdir(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        Ok(self
            .snapshot_from(ino, fh, offset, usize::MAX)
            .await?
            .to_vec())
    }

    /// At most `max` entries from position `offset` on, as [`Fs::readdir`], each with its
    /// attributes, for the kernel's readdirplus. A listing long enough to take more than
    /// `attr_ttl` to hand out would otherwise give the kernel expired attributes (or
    /// none): the expired ones among these few are read again with one batch get.
    pub async fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> FsResult<Vec<(DirEntry, Option<Inode>)>> {
        let entries = self.snapshot_from(ino, fh, offset, max).await?;
        // What is fresh now, and what is read now: asking the cache again afterwards
        // could find an entry expired meanwhile and drop a file that exists.
        let mut attrs: Vec<Option<Inode>> =
            entries.iter().map(|e| self.cache.inode(e.ino)).collect();
        let expired: Vec<u64> = entries
            .iter()
            .zip(&attrs)
            .filter(|(e, a)| a.is_none() && e.name != b"." && e.name != b"..")
            .map(|(e, _)| e.ino)
            .collect();
        let mut read = HashMap::new();
        for batch in expired.chunks(INODE_BATCH_LIMIT) {
            read.extend(
                self.read_inodes(batch)
                    .await?
                    .into_iter()
                    .map(|i| (i.ino, i)),
            );
        }
        for (e, a) in entries.iter().zip(attrs.iter_mut()) {
            if a.is_none() {
                *a = read.get(&e.ino).cloned();
            }
        }
        Ok(entries
            .iter()
            .zip(attrs)
            .map(|(e, a)| (e.clone(), a.map(|i| self.present(i))))
            .collect())
    }

    /// Up to `max` entries of the handle's snapshot from `offset` on, listing the
    /// directory first when read from offset 0.
    async fn snapshot_from(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> FsResult<SnapshotSlice> {
        let cached = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::Dir(h)) if offset > 0 => h.snapshot.clone(),
            Some(Handle::Dir(_)) => None,
            _ => return Err(FsError::BadHandle),
        };
        let listing = match cached {
            Some(listing) => listing,
            None => {
                let listing = Arc::new(self.list_dir(ino).await?);
                if let Some(Handle::Dir(h)) = self.handles.lock().unwrap().get_mut(&fh) {
                    h.snapshot = Some(listing.clone());
                }
                listing
            }
        };
        let start = (offset as usize).min(listing.len());
        let end = start.saturating_add(max).min(listing.len());
        Ok(SnapshotSlice {
            listing,
            range: start..end,
        })
    }

    /// Close a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    async fn list_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        // A cached inode is good enough: its version was read before the listing, which
        // is all that rmdir's use of the listing needs, and `..` never changes under
        // an open directory that is not being renamed.
        let dir = self.load_dir(ino, false).await?;
        let mut listing = vec![
            DirEntry {
                ino,
                kind: FileKind::Dir,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: dir.parent,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
            },
        ];
        match self.cache.fresh_listing(ino) {
            Some(mut entries) => {
                // In the order the store lists them.
                entries.sort_by_cached_key(|(name, _)| encode_name(name));
                listing.extend(entries.into_iter().map(|(name, e)| DirEntry {
                    ino: e.ino,
                    kind: e.kind,
                    name,
                }));
            }
            None => listing.extend(self.list_entries(ino, Some(dir.ver)).await?),
        }
        let uncached: Vec<u64> = listing[2..]
            .iter()
            .filter(|e| self.cache.inode(e.ino).is_none())
            .map(|e| e.ino)
            .collect();
        for batch in uncached.chunks(INODE_BATCH_LIMIT) {
            self.read_inodes(batch).await?;
        }
        Ok(listing)
    }

    /// Every entry of directory `ino`, read from the store and remembered as its
    /// complete listing (`ver`: the directory's version, if read just before).
    pub(super) async fn list_entries(&self, ino: u64, ver: Option<u64>) -> FsResult<Vec<DirEntry>> {
        self.settle_creates_in(ino).await?;
        let mut listing = Vec::new();
        for (sk, item) in self
            .query_all(Table::Meta, &keys::entries_partition(ino), None)
            .await?
        {
            let SortKey::S(stored) = sk else { continue };
            let Some(name) = decode_name(&stored) else {
                tracing::warn!(dir = ino, name = %stored, "skipping an entry with an undecodable name");
                continue;
            };
            let entry: Entry = from_item(item)?;
            listing.push(DirEntry {
                ino: entry.ino,
                kind: entry.kind,
                name,
            });
        }
        self.cache.put_listing(
            ino,
            listing.iter().map(|e| {
                (
                    e.name.clone(),
                    Entry {
                        ino: e.ino,
                        kind: e.kind,
                    },
                )
            }),
            ver,
        );
        Ok(listing)
    }
}
