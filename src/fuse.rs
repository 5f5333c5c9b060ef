//! The FUSE adapter: converts fuser's arguments, opens a tracing span, runs the
//! filesystem operation on the tokio runtime and replies from that task, so one slow
//! DynamoDB request never holds up the kernel's other requests.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::Instrument;

use crate::fs::{Caller, Fs, FsError, LockRange, Opened, RenameMode, SetAttr, SetTime, XattrMode};
use crate::metrics::metrics;
use crate::records::{FileKind, Inode, LockKind};

/// Entries prepared per readdirplus call: more than the kernel's reply buffer takes
/// (about 30), so one call rarely comes up short, few enough that the attributes to
/// re-read fit in two batch gets.
const READDIRPLUS_BATCH: usize = 128;

/// The fuser [`Filesystem`] over a [`Fs`].
pub struct DynamoFuse {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    notifier: Arc<OnceLock<Notifier>>,
    /// Operations started and not yet finished, so that unmounting lets them finish.
    in_flight: Arc<AtomicUsize>,
}

impl DynamoFuse {
    /// Serve `fs`, running its operations on `rt`.
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> Self {
        DynamoFuse {
            fs,
            rt,
            notifier: Arc::new(OnceLock::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Where to put the session's notifier once the session exists, so that taking a
    /// lock can drop the kernel's cached pages and attributes of the file.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Run `op` on the runtime; reply with `ok` on success or with the errno on failure.
    fn run<T, R, Fut>(
        &self,
        name: &'static str,
        ino: u64,
        reply: R,
        op: impl FnOnce(Arc<Fs>) -> Fut,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) where
        T: Send + 'static,
        R: ErrorReply + Send + 'static,
        Fut: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        let span = tracing::debug_span!("fuse", op = name, ino);
        let fut = op(self.fs.clone());
        let counted = InFlight::start(&self.in_flight);
        let started = std::time::Instant::now();
        let mut task = Box::pin(
            async move {
                let _counted = counted;
                let result = fut.await;
                metrics().operation(name, started.elapsed(), result.is_err());
                match result {
                    Ok(value) => ok(reply, value),
                    Err(e) => {
                        match &e {
                            FsError::Store(_) => tracing::warn!(error = %e, "operation failed"),
                            _ => tracing::debug!(error = %e, "operation refused"),
                        }
                        reply.error(Errno::from_i32(e.errno()));
                    }
                }
            }
            .instrument(span),
        );
        // Most operations are answered from the caches and buffers without waiting:
        // run them to the end here, on the thread that read the request. Handing each
        // to a runtime worker and back cost two thread wake-ups, which was most of
        // the daemon's time in `tar x` on `local:`. Only one that has to wait goes on
        // to the runtime, which polls it again (so no wake-up is lost).
        let _runtime = self.rt.enter();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        // A panic here would end this FUSE thread; the operation fails with EIO instead
        // (its reply, dropped unanswered, sends it), as it would on a runtime worker.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx)))
        {
            Ok(std::task::Poll::Pending) => {
                self.rt.spawn(task);
            }
            Ok(std::task::Poll::Ready(())) => {}
            Err(_) => tracing::error!(op = name, ino, "operation panicked: it fails with EIO"),
        }
    }
}

/// Counts an operation as in flight until it is dropped: finished, or unwound by a
/// panic. Unmounting waits for none to be left.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DynamoFuse {
    /// Run an operation that answers with a new or found entry.
    fn run_entry<Fut>(
        &self,
        name: &'static str,
        ino: u64,
        reply: ReplyEntry,
        op: impl FnOnce(Arc<Fs>) -> Fut,
    ) where
        Fut: Future<Output = Result<Inode, FsError>> + Send + 'static,
    {
        let (ttl, blksize) = (
            self.fs.config().entry_ttl,
            self.fs.format_record().block_size as u32,
        );
        self.run(name, ino, reply, op, move |r, inode| {
            r.entry(&ttl, &to_file_attr(&inode, blksize), Generation(0))
        });
    }

    /// Run an operation that answers with attributes.
    fn run_attr<Fut>(
        &self,
        name: &'static str,
        ino: u64,
        reply: ReplyAttr,
        op: impl FnOnce(Arc<Fs>) -> Fut,
    ) where
        Fut: Future<Output = Result<Inode, FsError>> + Send + 'static,
    {
        let (ttl, blksize) = (
            self.fs.config().attr_ttl,
            self.fs.format_record().block_size as u32,
        );
        self.run(name, ino, reply, op, move |r, inode| {
            r.attr(&ttl, &to_file_attr(&inode, blksize))
        });
    }
}

/// The replies that can carry an errno.
pub trait ErrorReply {
    /// Reply with `errno`.
    fn error(self, errno: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {$(impl ErrorReply for $t { fn error(self, errno: Errno) { <$t>::error(self, errno) } })*};
}
error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLock,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Char => FileType::CharDevice,
        FileKind::Block => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// The kernel's view of an inode.
pub fn to_file_attr(inode: &Inode, blksize: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(inode.ino),
        size: inode.size,
        blocks: inode.size.div_ceil(512),
        atime: inode.atime.into(),
        mtime: inode.mtime.into(),
        ctime: inode.ctime.into(),
        crtime: inode.ctime.into(),
        kind: file_type(inode.kind),
        perm: inode.mode as u16,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        blksize,
        flags: 0,
    }
}

/// Placeholder attributes for `.` and `..` in a readdirplus answer when their inode is
/// not at hand (the kernel does not use them).
fn bare_attr(ino: u64, kind: FileKind, blksize: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: file_type(kind),
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::At(at.into()),
    })
}

fn open_flags(opened: Opened) -> FopenFlags {
    if opened.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: Vec<u8>) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(&value);
    }
}

fn lock_kind(typ: i32) -> Result<Option<LockKind>, Errno> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockKind::Read)),
        libc::F_WRLCK => Ok(Some(LockKind::Write)),
        libc::F_UNLCK => Ok(None),
        _ => Err(Errno::from_i32(libc::EINVAL)),
    }
}

impl Filesystem for DynamoFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Listings carry the attributes they already read, so `ls -l` needs no lookups.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            tracing::warn!(?missing, "the kernel does not offer readdirplus");
        }
        // Send fcntl and flock locks to us, so that they hold across clients.
        if self.fs.session_id().is_some() {
            if let Err(missing) =
                config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
            {
                tracing::warn!(
                    ?missing,
                    "the kernel does not offer remote locks: locks stay local to this client"
                );
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Operations the kernel sent before the unmount (the last closes, above all)
        // still change the store: let them finish before the runtime goes away.
        let started = std::time::Instant::now();
        while self.in_flight.load(Ordering::SeqCst) > 0
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Failures are logged where they happen.
        let _ = self.rt.block_on(self.fs.end_client());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        self.run_entry("lookup", parent.0, reply, move |fs| async move {
            fs.lookup(parent.0, &name).await
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run_attr("getattr", ino.0, reply, move |fs| async move {
            fs.getattr(ino.0).await
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let who = caller(req);
        let attr = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.run_attr("setattr", ino.0, reply, move |fs| async move {
            fs.setattr(who, ino.0, attr).await
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(
            "readlink",
            ino.0,
            reply,
            move |fs| async move { fs.readlink(ino.0).await },
            |r, target| r.data(&target),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (who, name) = (caller(req), name.as_bytes().to_vec());
        self.run_entry("mknod", parent.0, reply, move |fs| async move {
            fs.mknod(who, parent.0, &name, mode, rdev).await
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (who, name) = (caller(req), name.as_bytes().to_vec());
        self.run_entry("mkdir", parent.0, reply, move |fs| async move {
            fs.mkdir(who, parent.0, &name, mode).await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run(
            "unlink",
            parent.0,
            reply,
            move |fs| async move { fs.unlink(parent.0, &name).await },
            |r, ()| r.ok(),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run(
            "rmdir",
            parent.0,
            reply,
            move |fs| async move { fs.rmdir(parent.0, &name).await },
            |r, ()| r.ok(),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (who, name) = (caller(req), link_name.as_bytes().to_vec());
        let target = target.as_os_str().as_bytes().to_vec();
        self.run_entry("symlink", parent.0, reply, move |fs| async move {
            fs.symlink(who, parent.0, &name, &target).await
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        self.run(
            "rename",
            parent.0,
            reply,
            move |fs| async move {
                fs.rename(parent.0, &name, newparent.0, &newname, mode)
                    .await
            },
            |r, ()| r.ok(),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = newname.as_bytes().to_vec();
        self.run_entry("link", ino.0, reply, move |fs| async move {
            fs.link(ino.0, newparent.0, &name).await
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let who = caller(req);
        let notifier = self.notifier.clone();
        self.run(
            "open",
            ino.0,
            reply,
            move |fs| async move { fs.open(who, ino.0, flags.0).await },
            move |r, opened| {
                // Close-to-open: the kernel still trusts the size it cached (for up to
                // attr_ttl); a read would stop there. Make it ask again.
                if let (false, Some(notifier)) = (opened.keep_cache, notifier.get()) {
                    if let Err(e) = notifier.inval_inode(ino, -1, 0) {
                        tracing::debug!(error = %e, "cannot drop the kernel's attributes of a file");
                    }
                }
                r.opened(FileHandle(opened.fh), open_flags(opened))
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(
            "read",
            ino.0,
            reply,
            move |fs| async move { fs.read(fh.0, offset, size).await },
            |r, data| {
                metrics().data("read", data.len());
                r.data(&data)
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.run(
            "write",
            ino.0,
            reply,
            move |fs| async move { fs.write(fh.0, offset, &data).await },
            |r, n| {
                metrics().data("written", n as usize);
                r.written(n)
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closing any descriptor releases the process's POSIX locks on the file.
        let op = move |fs: Arc<Fs>| async move {
            let flushed = fs.flush(fh.0).await;
            fs.release_locks(ino.0, lock.0).await?;
            flushed
        };
        self.run("flush", ino.0, reply, op, |r, ()| r.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel names a lock owner here when the file held a flock lock.
        let op = move |fs: Arc<Fs>| async move {
            if let Some(owner) = lock {
                fs.release_locks(ino.0, owner.0).await?;
            }
            fs.release(fh.0).await
        };
        self.run("release", ino.0, reply, op, |r, ()| r.ok());
    }

    #[allow(clippy::too_many_arguments)]
    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let kind = match lock_kind(typ) {
            Ok(Some(kind)) => kind,
            Ok(None) => return reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => return reply.error(e),
        };
        let range = LockRange {
            owner: lock_owner.0,
            start,
            end,
            pid,
        };
        let op = move |fs: Arc<Fs>| async move { fs.getlk(ino.0, range, kind).await };
        self.run("getlk", ino.0, reply, op, move |r, held| match held {
            Some(l) => {
                let typ = if l.kind == LockKind::Write {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                };
                r.locked(l.start, l.end, typ, l.pid)
            }
            None => r.locked(start, end, libc::F_UNLCK, 0),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let kind = match lock_kind(typ) {
            Ok(kind) => kind,
            Err(e) => return reply.error(e),
        };
        let range = LockRange {
            owner: lock_owner.0,
            start,
            end,
            pid,
        };
        let op = move |fs: Arc<Fs>| async move { fs.setlk(ino.0, range, kind, sleep).await };
        let notifier = self.notifier.clone();
        self.run("setlk", ino.0, reply, op, move |r, ()| {
            if let (Some(_), Some(notifier)) = (kind, notifier.get()) {
                if let Err(e) = notifier.inval_inode(ino, 0, 0) {
                    tracing::debug!(error = %e, "cannot drop the kernel's cache of a locked file");
                }
            }
            r.ok()
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(
            "fsync",
            ino.0,
            reply,
            move |fs| async move { fs.fsync(fh.0).await },
            |r, ()| r.ok(),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run(
            "opendir",
            ino.0,
            reply,
            move |fs| async move { fs.opendir(ino.0).await },
            |r, fh| r.opened(FileHandle(fh), FopenFlags::empty()),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.run(
            "readdir",
            ino.0,
            reply,
            move |fs| async move { fs.readdir(ino.0, fh.0, offset).await },
            move |mut r, entries| {
                for (i, entry) in entries.iter().enumerate() {
                    let next = offset + i as u64 + 1;
                    if r.add(
                        INodeNo(entry.ino),
                        next,
                        file_type(entry.kind),
                        OsStr::from_bytes(&entry.name),
                    ) {
                        break;
                    }
                }
                r.ok()
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let blksize = self.fs.format_record().block_size as u32;
        let config = self.fs.config();
        let ttl = config.attr_ttl.min(config.entry_ttl);
        self.run(
            "readdirplus",
            ino.0,
            reply,
            move |fs| async move { fs.readdirplus(ino.0, fh.0, offset, READDIRPLUS_BATCH).await },
            move |mut r, entries| {
                for (i, (entry, inode)) in entries.iter().enumerate() {
                    let next = offset + i as u64 + 1;
                    let dots = entry.name == b"." || entry.name == b"..";
                    let (attr, ttl) = match inode {
                        Some(inode) => (to_file_attr(inode, blksize), ttl),
                        // The kernel ignores the attributes of `.` and `..`.
                        None if dots => (bare_attr(entry.ino, entry.kind, blksize), Duration::ZERO),
                        // Its inode is gone (deleted since the listing): leave it out
                        // rather than hand the kernel made-up attributes for it.
                        None => continue,
                    };
                    let name = OsStr::from_bytes(&entry.name);
                    if r.add(INodeNo(entry.ino), next, name, &ttl, &attr, Generation(0)) {
                        break;
                    }
                }
                r.ok()
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Entries are committed before their call returns; held attribute changes are not.
        self.run(
            "fsyncdir",
            ino.0,
            reply,
            move |fs| async move { fs.fsyncdir(ino.0).await },
            |r, ()| r.ok(),
        );
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.run(
            "statfs",
            ino.0,
            reply,
            move |fs| async move { fs.statfs().await },
            |r, s| {
                r.statfs(
                    s.blocks,
                    s.free_blocks,
                    s.free_blocks,
                    s.files,
                    s.free_files,
                    s.block_size as u32,
                    crate::fs::NAME_MAX as u32,
                    s.block_size as u32,
                )
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Set,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        self.run(
            "setxattr",
            ino.0,
            reply,
            move |fs| async move { fs.setxattr(ino.0, &name, &value, mode).await },
            |r, ()| r.ok(),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        self.run(
            "getxattr",
            ino.0,
            reply,
            move |fs| async move { fs.getxattr(ino.0, &name).await },
            move |r, v| xattr_reply(r, size, v),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(
            "listxattr",
            ino.0,
            reply,
            move |fs| async move { fs.listxattr(ino.0).await },
            move |r, v| xattr_reply(r, size, v),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run(
            "removexattr",
            ino.0,
            reply,
            move |fs| async move { fs.removexattr(ino.0, &name).await },
            |r, ()| r.ok(),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let who = caller(req);
        let mask = mask.bits();
        self.run(
            "access",
            ino.0,
            reply,
            move |fs| async move { fs.access(who, ino.0, mask).await },
            |r, ()| r.ok(),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (who, name) = (caller(req), name.as_bytes().to_vec());
        let (ttl, blksize) = (
            self.fs.config().entry_ttl,
            self.fs.format_record().block_size as u32,
        );
        self.run(
            "create",
            parent.0,
            reply,
            move |fs| async move { fs.create(who, parent.0, &name, mode, flags).await },
            move |r, (inode, opened)| {
                r.created(
                    &ttl,
                    &to_file_attr(&inode, blksize),
                    Generation(0),
                    FileHandle(opened.fh),
                    open_flags(opened),
                )
            },
        );
    }
}
