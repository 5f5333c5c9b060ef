//! unlink and rmdir: every operation that removes a name.

use super::tx::Tx;
use super::{check_name, Fs, FsError, FsResult};
use crate::keys;
use crate::records::FileKind;
use crate::store::Table;

impl Fs {
    /// Whether directory `dir` has no entries.
    pub(super) async fn dir_is_empty(&self, dir: u64) -> FsResult<bool> {
        self.settle_creates_in(dir).await?;
        let page = self
            .store
            .query(Table::Meta, &keys::entries_partition(dir), None, 1)
            .await?;
        Ok(page.items.is_empty())
    }

    /// Remove the name `parent/name` of a non-directory.
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, false).await
    }

    /// Remove the empty directory `parent/name`.
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, true).await
    }

    async fn remove(&self, parent: u64, name: &[u8], want_dir: bool) -> FsResult<()> {
        self.check_writable()?;
        if name == b"." {
            return Err(FsError::Invalid);
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        check_name(name)?;
        self.settle_entry(parent, name).await?;
        // The first attempt may trust the cache: the entry must still point at the
        // inode, and the inode still be at the version we know, or the commit fails.
        self.optimistic(|fresh| async move {
            let entry = self
                .load_entry(parent, name, fresh)
                .await?
                .ok_or(FsError::NotFound)?;
            let is_dir = entry.kind == FileKind::Dir;
            match (want_dir, is_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                _ => {}
            }
            let dir = self.load_dir(parent, fresh).await?;
            let inode = self.load_entry_target(&entry, fresh).await?;
            if is_dir {
                let known_empty = !fresh && self.cache.empty_at(entry.ino) == Some(inode.ver);
                if !known_empty && !self.dir_is_empty(entry.ino).await? {
                    return Err(FsError::NotEmpty);
                }
            }
            let mut tx = Tx::new();
            tx.delete_entry(parent, name, entry.ino);
            tx.drop_link(&inode);
            // In a contended directory, a file's unlink touches the parent with a single
            // write beside the transaction (removing a name cannot make rmdir wrong).
            let detached = !is_dir && self.may_detach(&dir);
            let committed = if detached {
                let (committed, touched) = tokio::join!(self.commit(tx), self.touch_dir_now(parent));
                if let Err(e) = touched {
                    tracing::warn!(dir = parent, error = %e, "cannot update the directory after an unlink");
                }
                committed
            } else {
                tx.touch_dir(parent, if is_dir { -1 } else { 0 });
                self.commit(tx).await
            };
            if let Err(e) = committed {
                if e.is_contention() {
                    self.cache.mark_contended(parent);
                }
                return Err(e);
            }
            if is_dir {
                self.cache.forget_listing(entry.ino);
            }
            Ok(())
        })
        .await
    }
}
