//! lookup, getattr, access, readlink and statfs: the read-only metadata operations.

use super::{check_name, mode_allows, Caller, Fs, FsError, FsResult, FsStats};
use crate::records::{FileKind, Inode};

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
                // Tell "no such name" from "no such directory".
                self.load_dir(parent, false).await?;
                return Err(FsError::NotFound);
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

    /// Capacity figures. DynamoDB has no fixed capacity, so, like other network
    /// filesystems, dynamofs reports a large constant (1 PiB, 2^40 inodes) as free.
    pub fn statfs(&self) -> FsStats {
        let block_size = self.format.block_size;
        let blocks = (1u64 << 50) / block_size;
        FsStats {
            block_size,
            blocks,
            free_blocks: blocks,
            files: 1 << 40,
            free_files: 1 << 40,
        }
    }
}
