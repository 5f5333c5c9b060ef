//! setattr: chmod, chown, truncate and utimens.

use super::tx::Tx;
use super::{is_owner, Caller, Fs, FsError, FsResult};
use crate::records::{FileKind, Inode, Timestamp};

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

impl Fs {
    /// Change attributes of `ino`, with the ownership rules of chmod, chown and utimens.
    pub async fn setattr(&self, caller: Caller, ino: u64, attr: SetAttr) -> FsResult<Inode> {
        self.check_writable()?;
        // Unflushed writes first, so a truncation cuts them too and the size we start from is real.
        let open = self.files.data(ino);
        let mut data = match &open {
            Some(data) => {
                let mut data = data.lock().await;
                self.flush_data(&mut data).await?;
                Some(data)
            }
            None => None,
        };
        let inode = self
            .optimistic(|fresh| async move {
                let inode = self.load_inode(ino, fresh).await?;
                let mut tx = Tx::new();
                let now = tx.now();
                let new = tx.update(&inode);
                if let Some(mode) = attr.mode {
                    if !is_owner(caller, &inode) {
                        return Err(FsError::NotPermitted);
                    }
                    new.mode = mode & 0o7777;
                }
                if attr.uid.is_some_and(|uid| uid != inode.uid) && caller.uid != 0 {
                    return Err(FsError::NotPermitted);
                }
                if attr.gid.is_some_and(|gid| gid != inode.gid) && !is_owner(caller, &inode) {
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
                        Some(SetTime::At(t)) if is_owner(caller, &inode) => *field = t,
                        Some(SetTime::At(_)) => return Err(FsError::NotPermitted),
                        None => {}
                    }
                }
                let mut shrink = None;
                if let Some(size) = attr.size {
                    match inode.kind {
                        FileKind::Dir => return Err(FsError::IsDir),
                        FileKind::File => {}
                        _ => return Err(FsError::Invalid),
                    }
                    if size != inode.size {
                        new.size = size;
                        new.mtime = now;
                        if size < inode.size {
                            shrink = Some((size, inode.size));
                        }
                    }
                }
                new.ctime = now;
                if let Some((keep, stored)) = shrink {
                    tx.add_cleanup(ino, keep, stored);
                }
                Ok(tx.commit(self).await?.remove(&ino).expect("updated inode"))
            })
            .await?;
        if let Some(data) = data.as_mut() {
            if attr.size.is_some() {
                data.truncate(inode.size, self.format.block_size);
            }
            data.set_stored(inode.clone());
        }
        Ok(self.present(inode))
    }
}
