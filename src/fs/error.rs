//! Filesystem errors and the one place they become errnos.

use crate::store::StoreError;

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// The inode the kernel named no longer exists (deleted by another client).
    #[error("stale file handle")]
    Stale,
    /// The name already exists.
    #[error("file exists")]
    Exists,
    /// A directory was needed.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was needed.
    #[error("is a directory")]
    IsDir,
    /// The directory still has entries.
    #[error("directory not empty")]
    NotEmpty,
    /// The caller may not do this (ownership rules).
    #[error("operation not permitted")]
    NotPermitted,
    /// The mode bits deny the caller.
    #[error("permission denied")]
    AccessDenied,
    /// A name is longer than 255 bytes.
    #[error("file name too long")]
    NameTooLong,
    /// An argument is invalid (e.g. moving a directory into itself).
    #[error("invalid argument")]
    Invalid,
    /// The filesystem is mounted read-only.
    #[error("read-only filesystem")]
    ReadOnly,
    /// The extended attribute does not exist.
    #[error("no such attribute")]
    NoAttribute,
    /// The caller's buffer is too small for the answer.
    #[error("result too large for the buffer")]
    Range,
    /// The inode record has no room left (xattrs are limited by the item size).
    #[error("no space left in the inode record")]
    NoSpace,
    /// The file handle is unknown.
    #[error("bad file handle")]
    BadHandle,
    /// A conflicting lock is held (F_SETLK).
    #[error("resource temporarily unavailable")]
    WouldBlock,
    /// A wait was interrupted by a signal (F_SETLKW).
    #[error("interrupted")]
    Interrupted,
    /// Locks need a session, and this filesystem instance registered none.
    #[error("no locks available")]
    NoLocks,
    /// The operation is not supported.
    #[error("operation not supported")]
    Unsupported,
    /// A new file's name, answered before it was committed, was taken by another client
    /// meanwhile: this client could not reach the store for longer than its directory
    /// lease (see `fs/lease.rs`).
    #[error("another client took the name of this new file meanwhile")]
    NameLost,
    /// The store failed (after retries).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// The errno reported to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Stale => libc::ESTALE,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotPermitted => libc::EPERM,
            FsError::AccessDenied => libc::EACCES,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoAttribute => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::NoSpace => libc::ENOSPC,
            FsError::BadHandle => libc::EBADF,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::Interrupted => libc::EINTR,
            FsError::NoLocks => libc::ENOLCK,
            FsError::Unsupported => libc::EOPNOTSUPP,
            FsError::NameLost => libc::EIO,
            FsError::Store(StoreError::Throttled(_)) => libc::EAGAIN,
            FsError::Store(
                StoreError::Conflict
                | StoreError::Contended
                | StoreError::NotFound(_)
                | StoreError::Backend { .. },
            ) => libc::EIO,
        }
    }

    /// Whether an optimistic attempt lost a race and should be retried.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            FsError::Store(StoreError::Conflict | StoreError::Contended)
        )
    }

    /// Whether a transaction collided with a concurrent one (its conditions held).
    pub fn is_contention(&self) -> bool {
        matches!(self, FsError::Store(StoreError::Contended))
    }
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;
