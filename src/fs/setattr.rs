//! setattr: chmod, chown, truncate and utimens.

use super::held::AttrDelta;
use super::tx::Tx;
use super::{is_owner, mode_allows, Caller, Fs, FsError, FsResult};
use crate::keys;
use crate::records::{FileKind, Inode, Timestamp};
use crate::store::{Condition, WriteOp};

/// A new timestamp: the current time, or one given by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The time of the call (touch, utimens with UTIME_NOW).
    Now,
    /// An explicit time.
    At(Timestamp),
}

/// The attributes a setattr changes; `None` leaves one as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// Whether `mode` only clears the setuid and setgid bits of `inode`, on a file `caller`
/// may write. The kernel asks for that, as the writer, when someone other than the
/// owner writes to or truncates such a file; Linux lets it happen.
fn drops_privileges(caller: Caller, inode: &Inode, mode: u32) -> bool {
    let privileges = libc::S_ISUID | libc::S_ISGID;
    let mode = mode & 0o7777;
    let clears_some = mode != inode.mode;
    let only_privileges_change = mode & !privileges == inode.mode & !privileges;
    let sets_none = mode & !inode.mode == 0;
    clears_some
        && only_privileges_change
        && sets_none
        && mode_allows(caller, inode, libc::W_OK as u32)
}

/// `inode` as `attr` changes it at `now`, if `caller` may make that change (the
/// ownership rules of chmod, chown, utimens and truncate).
fn changed(caller: Caller, inode: &Inode, attr: SetAttr, now: Timestamp) -> FsResult<Inode> {
    let mut new = inode.clone();
    if let Some(mode) = attr.mode {
        if !is_owner(caller, inode) && !drops_privileges(caller, inode, mode) {
            return Err(FsError::NotPermitted);
        }
        new.mode = mode & 0o7777;
    }
    if attr.uid.is_some_and(|uid| uid != inode.uid) && caller.uid != 0 {
        return Err(FsError::NotPermitted);
    }
    if attr.gid.is_some_and(|gid| gid != inode.gid) && !is_owner(caller, inode) {
        return Err(FsError::NotPermitted);
    }
    if attr.uid.is_some() || attr.gid.is_some() {
        new.uid = attr.uid.unwrap_or(inode.uid);
        new.gid = attr.gid.unwrap_or(inode.gid);
        // chown clears setuid and setgid bits of non-directories, as Linux does.
        if caller.uid != 0 && inode.kind != FileKind::Dir {
            new.mode &= !(libc::S_ISUID | libc::S_ISGID);
        }
    }
    for (set, field) in [(attr.atime, &mut new.atime), (attr.mtime, &mut new.mtime)] {
        match set {
            Some(SetTime::Now) => *field = now,
            Some(SetTime::At(t)) if is_owner(caller, inode) => *field = t,
            Some(SetTime::At(_)) => return Err(FsError::NotPermitted),
            None => {}
        }
    }
    if let Some(size) = attr.size {
        match inode.kind {
            FileKind::Dir => return Err(FsError::IsDir),
            FileKind::File => {}
            _ => return Err(FsError::Invalid),
        }
        if size != inode.size {
            new.size = size;
            new.mtime = now;
        }
    }
    new.ctime = now;
    Ok(new)
}

impl Fs {
    /// Record in `tx` what shrinking `inode` to `new.size` leaves behind: an inline block 0
    /// is cut in the transaction itself; blocks-table blocks past the new size become a
    /// cleanup (which never touches an inline block 0).
    async fn cut_data(&self, tx: &mut Tx, inode: &Inode, new: &mut Inode) -> FsResult<()> {
        let bs = self.format.block_size;
        if !inode.inline {
            tx.add_cleanup(inode.ino, new.size, inode.size);
            return Ok(());
        }
        if new.size == 0 {
            tx.write(WriteOp::Delete {
                key: keys::inline_key(inode.ino),
                cond: Condition::None,
            });
            new.inline = false;
        } else if new.size < bs {
            let (_, kept) = self
                .fetch_blocks(inode, &[0], new.size)
                .await?
                .pop()
                .expect("one block asked, one returned");
            tx.write(self.inline_put(inode.ino, &kept));
        }
        tx.add_cleanup(inode.ino, new.size.max(bs), inode.size);
        Ok(())
    }

    /// Change attributes of `ino`, with the ownership rules of chmod, chown and utimens.
    ///
    /// Changes other than the size are held and merged (see `held.rs`): on a file this
    /// client holds unflushed writes of, until those are flushed; otherwise for a moment.
    /// So the chown, chmod and utimens that `tar` and `cp -a` make in a row cost one
    /// write, or none beyond the file's flush.
    pub async fn setattr(&self, caller: Caller, ino: u64, attr: SetAttr) -> FsResult<Inode> {
        self.check_writable()?;
        // A directory's new files go first: their commit sets its times, which must
        // not overwrite times set after them (`tar` and `cp -a` set a directory's
        // times once its files are in).
        self.settle_creates_in(ino).await?;
        let open = self.files.data(ino);
        let mut data = match &open {
            Some(data) => Some(data.lock().await),
            None => None,
        };
        if attr.size.is_none() {
            if let Some(data) = data.as_mut().filter(|d| d.has_unflushed()) {
                let view = self.present_raw(data.view());
                let new = changed(caller, &view, attr, Timestamp::now())?;
                data.hold_attrs(AttrDelta::between(&view, &new));
                self.files.set_pending(ino, data);
                return Ok(self.present(new));
            }
            if data.is_none() {
                let view = self.present_raw(self.load_inode(ino, false).await?);
                let new = changed(caller, &view, attr, Timestamp::now())?;
                if self.hold_attrs(ino, AttrDelta::between(&view, &new)) {
                    return Ok(self.present(new));
                }
            }
        }
        // Unflushed writes first, so a truncation cuts them too and the size we start from
        // is real; held changes go with this write.
        if let Some(data) = data.as_mut() {
            self.flush_data(data).await?;
        }
        let taken = self.held.take(ino).await;
        let earlier = taken.delta();
        let inode = self
            .optimistic(|fresh| async move {
                let inode = self.load_inode(ino, fresh).await?;
                let mut view = inode.clone();
                if let Some(earlier) = earlier {
                    earlier.apply(&mut view);
                }
                let mut tx = Tx::new();
                let mut new = changed(caller, &view, attr, tx.now())?;
                if new.size < inode.size {
                    self.cut_data(&mut tx, &inode, &mut new).await?;
                }
                *tx.update(&inode) = new;
                Ok(self.commit(tx).await?.remove(&ino).expect("updated inode"))
            })
            .await;
        drop(taken);
        let inode = inode?;
        if let Some(data) = data.as_mut() {
            if attr.size.is_some() {
                data.truncate(inode.size, self.format.block_size);
            }
            data.set_stored(inode.clone());
        }
        Ok(self.present(inode))
    }
}
