//! rename, including RENAME_NOREPLACE and RENAME_EXCHANGE.
//!
//! Whatever the size of the subtree, a rename is one transaction: the two entries,
//! the moved inode(s) (a directory's parent pointer), a replaced target, and the
//! times and link counts of the one or two parent directories.

use super::tx::{points_at, Tx};
use super::{check_name, Fs, FsError, FsResult};
use crate::keys::ROOT_INO;
use crate::records::{Entry, FileKind};
use crate::store::Condition;

/// How a rename treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target if it exists (plain rename(2)).
    Replace,
    /// Fail with EEXIST if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two names, which must both exist (RENAME_EXCHANGE).
    Exchange,
}

impl Fs {
    /// Whether `dir` is `ancestor` or lies below it.
    async fn is_within(&self, mut dir: u64, ancestor: u64, fresh: bool) -> FsResult<bool> {
        loop {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.load_dir(dir, fresh).await?.parent;
        }
    }

    /// Rename `parent/name` to `newparent/newname`.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        mode: RenameMode,
    ) -> FsResult<()> {
        self.check_writable()?;
        check_name(name)?;
        check_name(newname)?;
        self.settle_entry(parent, name).await?;
        self.settle_entry(newparent, newname).await?;
        self.optimistic(|fresh| async move {
            // The first attempt may trust the cache: every entry written is conditioned
            // on what it pointed at, and every inode on its version.
            let src = self
                .load_entry(parent, name, fresh)
                .await?
                .ok_or(FsError::NotFound)?;
            let dst = self.load_entry(newparent, newname, fresh).await?;
            if dst.map(|d| d.ino) == Some(src.ino) {
                return Ok(());
            }
            match (mode, dst) {
                (RenameMode::NoReplace, Some(_)) => return Err(FsError::Exists),
                (RenameMode::Exchange, None) => return Err(FsError::NotFound),
                _ => {}
            }
            let src_is_dir = src.kind == FileKind::Dir;
            let dst_is_dir = dst.is_some_and(|d| d.kind == FileKind::Dir);
            if src_is_dir
                && newparent != parent
                && self.is_within(newparent, src.ino, fresh).await?
            {
                return Err(FsError::Invalid);
            }
            // A target that is an ancestor of the source: as the VFS says it.
            if let Some(d) = dst.filter(|_| dst_is_dir) {
                if self.is_within(parent, d.ino, fresh).await? {
                    return Err(if mode == RenameMode::Exchange {
                        FsError::Invalid
                    } else {
                        FsError::NotEmpty
                    });
                }
            }
            self.load_dir(parent, fresh).await?;
            if newparent != parent {
                self.load_dir(newparent, fresh).await?;
            }
            let src_inode = self.load_entry_target(&src, fresh).await?;
            let dst_inode = match dst {
                Some(d) => Some(self.load_entry_target(&d, fresh).await?),
                None => None,
            };
            if mode != RenameMode::Exchange {
                if let Some(d) = dst {
                    match (src_is_dir, dst_is_dir) {
                        (true, false) => return Err(FsError::NotDir),
                        (false, true) => return Err(FsError::IsDir),
                        (true, true) if !self.dir_is_empty(d.ino).await? => {
                            return Err(FsError::NotEmpty)
                        }
                        _ => {}
                    }
                }
            }

            let mut tx = Tx::new();
            let now = tx.now();
            let moved = tx.update(&src_inode);
            moved.ctime = now;
            if src_is_dir {
                moved.parent = newparent;
            }
            // Net change of each parent's link count: subdirectories moved in or out.
            let mut links: [(u64, i64); 2] = [(parent, 0), (newparent, 0)];
            if src_is_dir {
                links[0].1 -= 1;
                links[1].1 += 1;
            }
            match (mode, dst_inode) {
                (RenameMode::Exchange, Some(other)) => {
                    tx.put_entry(
                        parent,
                        name,
                        Entry {
                            ino: other.ino,
                            kind: other.kind,
                        },
                        points_at(src.ino),
                    );
                    tx.put_entry(newparent, newname, src, points_at(other.ino));
                    let swapped = tx.update(&other);
                    swapped.ctime = now;
                    if dst_is_dir {
                        swapped.parent = parent;
                        links[1].1 -= 1;
                        links[0].1 += 1;
                    }
                }
                (_, Some(replaced)) => {
                    tx.delete_entry(parent, name, src.ino);
                    tx.put_entry(newparent, newname, src, points_at(replaced.ino));
                    tx.drop_link(&replaced);
                    if dst_is_dir {
                        links[1].1 -= 1;
                    }
                }
                (_, None) => {
                    tx.delete_entry(parent, name, src.ino);
                    tx.put_entry(newparent, newname, src, Condition::Absent);
                }
            }
            for (dir, delta) in links {
                tx.touch_dir(dir, delta);
            }
            self.commit(tx).await.map(|_| ())
        })
        .await
    }
}
