//! mknod, mkdir, symlink, create and link: every operation that adds a name.
//!
//! A new name is one transaction: the entry (which must be absent), the new inode
//! and an atomic update of the parent's times, link count and version. So an existing
//! name is EEXIST on every client, and a create cannot race an rmdir (which deletes the
//! directory only at the version it saw empty).
//!
//! In a contended directory (other clients' transactions collide with ours there), a
//! file's create leaves the parent out of its transaction and then touches it with a
//! single conditional write, which never collides with other such writes. The touch
//! still moves the version before the create returns, so rmdir stays exact; if the
//! directory was removed in between, the create is undone and fails with ENOENT.

use super::lease;
use super::session::now_ms;
use super::tx::Tx;
use super::{check_name, Caller, Fs, FsError, FsResult, Opened};
use crate::records::{Entry, FileKind, Inode, Timestamp};
use crate::store::{Condition, StoreError};

/// What kind of node to create and with what content.
struct NewNode<'a> {
    kind: FileKind,
    mode: u32,
    rdev: u32,
    target: &'a [u8],
}

/// The inode of a new node made by `caller` in `dir` at `now`, at version 1.
fn new_inode(caller: Caller, ino: u64, dir: &Inode, node: &NewNode<'_>, now: Timestamp) -> Inode {
    let is_dir = node.kind == FileKind::Dir;
    // BSD group semantics when the directory is setgid, as ext4 does.
    let setgid = dir.mode & libc::S_ISGID != 0;
    let mut mode = node.mode & 0o7777;
    if setgid && is_dir {
        mode |= libc::S_ISGID;
    }
    let owner = (caller.uid, if setgid { dir.gid } else { caller.gid });
    Inode {
        kind: node.kind,
        mode,
        size: node.target.len() as u64,
        nlink: if is_dir { 2 } else { 1 },
        rdev: node.rdev,
        parent: if is_dir { dir.ino } else { 0 },
        target: node.target.to_vec(),
        ..Inode::empty_dir(ino, dir.ino, owner, now)
    }
}

impl Fs {
    async fn create_node(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        node: NewNode<'_>,
    ) -> FsResult<Inode> {
        self.check_writable()?;
        check_name(name)?;
        // A new file of this client's by that name must be in the store for the
        // create's condition to see it.
        self.settle_entry(parent, name).await?;
        let ino = self.alloc_ino().await?;
        let inode = self
            .optimistic(|fresh| {
                let node = &node;
                async move {
                    // The transaction's condition on the parent is what makes a create
                    // right; of the parent's record only its setgid bit and group are
                    // used, so a first attempt may take it from the cache however old.
                    let cached = self.cache.inode_any_age(parent).filter(|_| !fresh);
                    let dir = match cached {
                        Some(dir) if dir.kind == FileKind::Dir => dir,
                        _ => self.load_dir(parent, fresh).await?,
                    };
                    if dir.nlink == 0 {
                        return Err(FsError::NotFound);
                    }
                    let detached = node.kind != FileKind::Dir && self.may_detach(&dir);
                    let mut inode = new_inode(caller, ino, &dir, node, Timestamp::now());
                    let is_dir = node.kind == FileKind::Dir;
                    if let Some(me) = self.session_id().filter(|_| is_dir) {
                        lease::grant(&mut inode, me, now_ms());
                    }
                    let mut tx = Tx::new();
                    tx.create_named(parent, name, inode.clone(), detached);
                    match self.commit(tx).await {
                        Err(e)
                            if e.is_conflict()
                                && self.load_entry(parent, name, true).await?.is_some() =>
                        {
                            Err(FsError::Exists)
                        }
                        Err(e) if e.is_contention() => {
                            self.cache.mark_contended(parent);
                            Err(e)
                        }
                        Err(e) => Err(e),
                        Ok(_) if detached => {
                            self.touch_after_create(parent, name, &inode).await?;
                            Ok(inode)
                        }
                        Ok(_) => Ok(inode),
                    }
                }
            })
            .await?;
        if inode.kind == FileKind::Dir {
            // Just made, by us: known empty, so lookups in it need no request.
            self.cache.put_listing(ino, [], Some(inode.ver));
            if inode.lease_until != 0 {
                self.leases.hold(ino, inode.lease_until);
            }
        }
        Ok(inode)
    }

    /// Create a regular file without a request, if this client holds the lease of
    /// `parent` and its complete listing says the name is free: the create is committed
    /// with the file's first flush (see `lease.rs` and `deferred.rs`). `None` if it may not.
    async fn create_deferred(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<Option<(Inode, Opened)>> {
        if !self.new_files.defers_creates()
            || !self.leases.can_defer(parent)
            || self.cache.entry(parent, name).answer() != Some(None)
        {
            return Ok(None);
        }
        let Some(dir) = self
            .cache
            .inode_any_age(parent)
            .filter(|dir| dir.kind == FileKind::Dir && dir.nlink > 0)
        else {
            return Ok(None);
        };
        let ino = self.alloc_ino().await?;
        let file = NewNode {
            kind: FileKind::File,
            mode,
            rdev: 0,
            target: &[],
        };
        let inode = new_inode(caller, ino, &dir, &file, Timestamp::now());
        let entry = Entry {
            ino,
            kind: FileKind::File,
        };
        self.cache_entry(parent, name, Some(entry));
        self.cache_inode(&inode);
        let opened = self
            .open_inode(inode.clone(), None, flags & !libc::O_TRUNC)
            .await?;
        self.defer_create(ino, parent, name).await;
        tracing::trace!(parent, ino, "create deferred to the first flush");
        Ok(Some((self.present(inode), opened)))
    }

    /// Touch the parent of a create committed without it; if the parent is gone (an
    /// rmdir won the race), undo the create.
    async fn touch_after_create(&self, parent: u64, name: &[u8], inode: &Inode) -> FsResult<()> {
        match self.touch_dir_now(parent).await {
            Ok(()) => Ok(()),
            Err(FsError::Store(StoreError::Conflict)) => {
                let mut undo = Tx::new();
                undo.delete_entry(parent, name, inode.ino);
                undo.drop_link(inode);
                self.commit(undo).await?;
                Err(FsError::NotFound)
            }
            Err(e) => {
                // The entry stands, so do not fail a create that happened; but the
                // directory's times lag, and its version did not move, so an rmdir
                // racing this create is not excluded. Rare: every retry failed.
                tracing::warn!(dir = parent, error = %e, "cannot update the directory after a create");
                Ok(())
            }
        }
    }

    /// Create a regular file, fifo, socket or device node.
    pub async fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<Inode> {
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(FsError::Invalid);
        }
        if matches!(kind, FileKind::Char | FileKind::Block) && caller.uid != 0 {
            return Err(FsError::NotPermitted);
        }
        self.create_node(
            caller,
            parent,
            name,
            NewNode {
                kind,
                mode,
                rdev,
                target: &[],
            },
        )
        .await
        .map(|inode| self.present(inode))
    }

    /// Create a directory.
    pub async fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
    ) -> FsResult<Inode> {
        self.create_node(
            caller,
            parent,
            name,
            NewNode {
                kind: FileKind::Dir,
                mode,
                rdev: 0,
                target: &[],
            },
        )
        .await
        .map(|inode| self.present(inode))
    }

    /// Create a symbolic link to `target`.
    pub async fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Inode> {
        if target.len() > libc::PATH_MAX as usize {
            return Err(FsError::NameTooLong);
        }
        self.create_node(
            caller,
            parent,
            name,
            NewNode {
                kind: FileKind::Symlink,
                mode: 0o777,
                rdev: 0,
                target,
            },
        )
        .await
        .map(|inode| self.present(inode))
    }

    /// Create a regular file and open it. (The kernel calls this only for a name it
    /// believes absent; the create's condition makes that true on every client.)
    pub async fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(Inode, Opened)> {
        self.check_writable()?;
        check_name(name)?;
        if let Some(created) = self
            .create_deferred(caller, parent, name, mode, flags)
            .await?
        {
            return Ok(created);
        }
        let file = NewNode {
            kind: FileKind::File,
            mode,
            rdev: 0,
            target: &[],
        };
        let inode = self.create_node(caller, parent, name, file).await?;
        // Just written: no need to read it back before opening it.
        let opened = self
            .open_inode(inode.clone(), None, flags & !libc::O_TRUNC)
            .await?;
        Ok((self.present(inode), opened))
    }

    /// Add the name `newparent/newname` for the existing inode `ino`.
    pub async fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Inode> {
        self.check_writable()?;
        check_name(newname)?;
        self.settle_create(ino).await?;
        self.settle_entry(newparent, newname).await?;
        let inode = self
            .optimistic(|fresh| async move {
                let inode = self.load_inode(ino, fresh).await?;
                if inode.kind == FileKind::Dir {
                    // As the VFS does: an existing target name wins over "cannot link a directory".
                    if self.load_entry(newparent, newname, true).await?.is_some() {
                        return Err(FsError::Exists);
                    }
                    return Err(FsError::NotPermitted);
                }
                if inode.nlink == 0 {
                    return Err(FsError::NotFound);
                }
                self.load_dir(newparent, fresh).await?;
                let mut tx = Tx::new();
                tx.put_entry(
                    newparent,
                    newname,
                    Entry {
                        ino,
                        kind: inode.kind,
                    },
                    Condition::Absent,
                );
                let now = tx.now();
                let linked = tx.update(&inode);
                linked.nlink += 1;
                linked.ctime = now;
                tx.touch_dir(newparent, 0);
                match self.commit(tx).await {
                    Err(e)
                        if e.is_conflict()
                            && self.load_entry(newparent, newname, true).await?.is_some() =>
                    {
                        Err(FsError::Exists)
                    }
                    other => Ok(other?.remove(&ino).expect("linked inode")),
                }
            })
            .await?;
        Ok(self.present(inode))
    }
}
