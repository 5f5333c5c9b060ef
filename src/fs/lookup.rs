//! lookup, getattr, access, readlink and statfs: the read-only metadata operations.

use std::collections::{BTreeSet, HashMap};

use super::{check_name, mode_allows, Caller, Fs, FsError, FsResult, FsStats};
use crate::keys::{self, ROOT_INO};
use crate::records::{from_item, Entry, FileKind, Inode};
use crate::store::{SortKey, Table};

impl Fs {
    /// Find `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Inode> {
        if name.len() > super::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        check_name(name).map_err(|_| FsError::NotFound)?;
        let entry = match self.load_entry(parent, name, false).await? {
            Some(entry) => entry,
            None => {
                // Tell "no such name" from "no such directory" (or not a directory). A
                // directory this client knows needs no request: if another client
                // removed it meanwhile, ENOENT is what Linux answers in a removed
                // directory too.
                if self
                    .cache
                    .inode_any_age(parent)
                    .is_none_or(|dir| dir.kind != FileKind::Dir)
                {
                    self.load_dir(parent, false).await?;
                }
                self.entry_past_lease(parent, name)
                    .await?
                    .ok_or(FsError::NotFound)?
            }
        };
        match self.load_inode(entry.ino, false).await {
            Ok(inode) if !inode.is_nameless() => Ok(self.present(inode)),
            // A cached entry may be stale, or the file was replaced between our two
            // reads: read both fresh, again if needed, before answering.
            Ok(_) | Err(FsError::Stale) => {
                let inode = self
                    .optimistic(|_| async move {
                        let entry = self
                            .load_entry(parent, name, true)
                            .await?
                            .ok_or(FsError::NotFound)?;
                        self.load_entry_target(&entry, true).await
                    })
                    .await?;
                Ok(self.present(inode))
            }
            Err(e) => Err(e),
        }
    }

    /// A path of each of `wanted` found by walking the tree from the root, looking at
    /// no more than `max_dirs` directories (for `dynamofs status`: inodes have no
    /// path of their own, and a big tree is not worth a full walk).
    pub async fn paths_of(
        &self,
        wanted: &BTreeSet<u64>,
        max_dirs: usize,
    ) -> FsResult<HashMap<u64, String>> {
        let mut found = HashMap::new();
        let mut queue = std::collections::VecDeque::from([(ROOT_INO, String::new())]);
        let mut visited = 0;
        while let Some((dir, path)) = queue.pop_front() {
            if found.len() == wanted.len() || visited == max_dirs {
                break;
            }
            visited += 1;
            for (sk, item) in self
                .query_all(Table::Meta, &keys::entries_partition(dir), None)
                .await?
            {
                let SortKey::S(stored) = sk else { continue };
                let entry: Entry = from_item(item)?;
                let name = keys::decode_name(&stored).unwrap_or_default();
                let child = format!("{path}/{}", String::from_utf8_lossy(&name));
                if wanted.contains(&entry.ino) {
                    found.entry(entry.ino).or_insert_with(|| child.clone());
                }
                if entry.kind == FileKind::Dir {
                    queue.push_back((entry.ino, child));
                }
            }
        }
        Ok(found)
    }

    /// The attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> FsResult<Inode> {
        Ok(self.present(self.load_inode(ino, false).await?))
    }

    /// Check `mask` (`R_OK`, `W_OK`, `X_OK` bits, or `F_OK`) for `caller`.
    pub async fn access(&self, caller: Caller, ino: u64, mask: i32) -> FsResult<()> {
        let inode = self.present(self.load_inode(ino, false).await?);
        if mask & libc::W_OK != 0 && self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        if mode_allows(caller, &inode, mask as u32 & 0o7) {
            Ok(())
        } else {
            Err(FsError::AccessDenied)
        }
    }

    /// The target of symlink `ino`.
    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let inode = self.load_inode(ino, false).await?;
        if inode.kind != FileKind::Symlink {
            return Err(FsError::Invalid);
        }
        Ok(inode.target)
    }

    /// Capacity figures: what is used by the usage totals (see `usage.rs`), the
    /// bytes of the files and the inodes, read at most once a second. A local store
    /// reports instead the space its file takes and what is left on its disk.
    /// DynamoDB has no fixed capacity, so, like other network filesystems, dynamofs
    /// reports a large constant (1 PiB of blocks, 2^40 inodes) as the size, of which
    /// the used part is taken as used. A filesystem that keeps no totals yet (made
    /// before they were kept, until `fsck --repair`) reports nothing used.
    pub async fn statfs(&self) -> FsResult<FsStats> {
        const SIZE_BYTES: u64 = 1 << 50;
        const INODES: u64 = 1 << 40;
        let block_size = self.format.block_size;
        let usage = self.usage_for_statfs().await?.unwrap_or_default();
        let (blocks, free_blocks) = match self.store.space() {
            Ok(Some(space)) => (
                (space.used_bytes + space.available_bytes) / block_size,
                space.available_bytes / block_size,
            ),
            // A local file whose size cannot be read counts as the service does.
            Ok(None) | Err(_) => {
                let used = (usage.logical_bytes.max(0) as u64).div_ceil(block_size);
                let blocks = SIZE_BYTES / block_size;
                (blocks, blocks.saturating_sub(used))
            }
        };
        Ok(FsStats {
            block_size,
            blocks,
            free_blocks,
            files: INODES,
            free_files: INODES.saturating_sub(usage.inodes.max(0) as u64),
        })
    }

    /// The space the store takes, where it is a local file.
    pub fn space(&self) -> FsResult<Option<crate::store::StoreSpace>> {
        Ok(self.store.space()?)
    }

    /// Make everything written so far durable (`fsync` does this for one file; an
    /// unmount does it last).
    pub async fn sync(&self) -> FsResult<()> {
        self.settle_all_creates().await?;
        Ok(self.store.sync().await?)
    }
}
