//! setxattr, getxattr, listxattr and removexattr. Attributes live in the inode record.

use serde_bytes::ByteBuf;

use super::tx::Tx;
use super::{Fs, FsError, FsResult};
use crate::keys::{decode_name, encode_name};

/// Room for all extended attributes of one inode (the DynamoDB item limit is 400 KB).
const XATTR_SPACE: usize = 256 * 1024;

/// How setxattr treats an existing attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Set,
    /// Fail with EEXIST if it exists (XATTR_CREATE).
    Create,
    /// Fail with ENODATA if it does not exist (XATTR_REPLACE).
    Replace,
}

impl Fs {
    /// Set attribute `name` of `ino` to `value`.
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        self.check_writable()?;
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::Range);
        }
        // POSIX ACLs are not supported: refusing them makes tools such as `cp -a`
        // fall back to chmod instead of believing an ACL now carries the mode.
        if name.starts_with(b"system.posix_acl_") {
            return Err(FsError::Unsupported);
        }
        self.settle_create(ino).await?;
        let key = encode_name(name);
        self.optimistic(|fresh| {
            let key = key.clone();
            async move {
                let inode = self.load_inode(ino, fresh).await?;
                let exists = inode.xattrs.contains_key(&key);
                match mode {
                    XattrMode::Create if exists => return Err(FsError::Exists),
                    XattrMode::Replace if !exists => return Err(FsError::NoAttribute),
                    _ => {}
                }
                let mut tx = Tx::new();
                let now = tx.now();
                let new = tx.update(&inode);
                new.xattrs.insert(key, ByteBuf::from(value.to_vec()));
                new.ctime = now;
                if new
                    .xattrs
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
                    > XATTR_SPACE
                {
                    return Err(FsError::NoSpace);
                }
                self.commit(tx).await.map(|_| ())
            }
        })
        .await
    }

    /// The value of attribute `name` of `ino`.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let inode = self.load_inode(ino, false).await?;
        inode
            .xattrs
            .get(&encode_name(name))
            .map(|v| v.to_vec())
            .ok_or(FsError::NoAttribute)
    }

    /// The names of the attributes of `ino`, each followed by a NUL byte.
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let inode = self.load_inode(ino, false).await?;
        let mut out = Vec::new();
        for key in inode.xattrs.keys() {
            out.extend(decode_name(key).unwrap_or_default());
            out.push(0);
        }
        Ok(out)
    }

    /// Remove attribute `name` of `ino`.
    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        self.settle_create(ino).await?;
        let key = encode_name(name);
        self.optimistic(|fresh| {
            let key = key.clone();
            async move {
                let inode = self.load_inode(ino, fresh).await?;
                if !inode.xattrs.contains_key(&key) {
                    return Err(FsError::NoAttribute);
                }
                let mut tx = Tx::new();
                let now = tx.now();
                let new = tx.update(&inode);
                new.xattrs.remove(&key);
                new.ctime = now;
                self.commit(tx).await.map(|_| ())
            }
        })
        .await
    }
}
