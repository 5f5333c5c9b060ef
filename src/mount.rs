//! Mounting: the mount(2) call with type `fuse.dynamo`, the check for an existing
//! mount, daemonizing with a readiness report to the parent (and to systemd), and the
//! session loop.
//!
//! As root we call mount(2) ourselves rather than let fuser do it, so that the mount's
//! type is `fuse.dynamo` (findmnt and `umount -t` see it) and an external `umount`
//! never makes us unmount whatever lies beneath the mountpoint. An ordinary user
//! cannot; `fusermount3`, setuid root, mounts for it (as for s3fs, JuiceFS and
//! mount-s3), with the same type, and unmounts for it.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{MountArgs, MountOptions};
use crate::fs::{Fs, FsConfig};
use crate::fuse::DynamoFuse;
use crate::store::dynamo::Billing;

/// The filesystem type this program mounts.
pub const FS_TYPE: &str = "fuse.dynamo";

fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The filesystem type mounted at `mountpoint`, if it is a mountpoint.
pub fn mounted_type(mountpoint: &Path) -> io::Result<Option<String>> {
    let wanted = mountpoint.as_os_str().as_bytes();
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() > sep + 1 && fields.len() > 4 && unescape_mountinfo(fields[4]) == wanted {
            // The last mount on a path is the visible one.
            found = Some(fields[sep + 1].to_string());
        }
    }
    Ok(found)
}

/// The setuid helper of fuse3 that mounts and unmounts for ordinary users.
const FUSERMOUNT: &str = "fusermount3";

/// Whether this process calls mount(2) and umount2(2) itself, or has `fusermount3` do
/// it: only root may.
fn mounts_itself() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Open /dev/fuse and mount it at `mountpoint` with type `fuse.dynamo`.
pub fn fuse_mount(source: &str, mountpoint: &Path, options: &MountOptions) -> io::Result<OwnedFd> {
    if !mounts_itself() {
        return fusermount(source, mountpoint, options);
    }
    let dev = OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(|e| {
        io::Error::new(e.kind(), format!("cannot open /dev/fuse ({e}): is the fuse kernel module loaded (modprobe fuse)?"))
    })?;
    let fd: OwnedFd = dev.into();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid}",
        fd.as_raw_fd()
    );
    if options.default_permissions {
        data.push_str(",default_permissions");
    }
    if options.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if options.read_only {
        flags |= libc::MS_RDONLY;
    }
    let c = |s: &[u8]| {
        CString::new(s).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a mount argument")
        })
    };
    let (src, target, fstype, data) = (
        c(source.as_bytes())?,
        c(mountpoint.as_os_str().as_bytes())?,
        c(FS_TYPE.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mount(2) of {} failed: {e}", mountpoint.display()),
        ));
    }
    Ok(fd)
}

/// Mount as an ordinary user: `fusermount3` opens /dev/fuse, mounts it at
/// `mountpoint` as `fuse.dynamo` and hands the descriptor back over a socket
/// (libfuse's protocol: the socket's number in `_FUSE_COMMFD`, the descriptor in an
/// `SCM_RIGHTS` message). It always adds `nosuid,nodev`.
fn fusermount(source: &str, mountpoint: &Path, options: &MountOptions) -> io::Result<OwnedFd> {
    if options.allow_other && !fuse_conf_allows_other(Path::new("/etc/fuse.conf")) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "allow_other as an ordinary user needs the line `user_allow_other` in \
             /etc/fuse.conf (ask root to add it), or mount as root",
        ));
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (theirs, ours) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: a flag change on a descriptor we own; only `theirs` goes to the helper.
    unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let escape = |s: &str| s.replace('\\', "\\\\").replace(',', "\\,");
    let mut mount_options = format!("fsname={},subtype=dynamo", escape(source));
    for (wanted, option) in [
        (options.default_permissions, "default_permissions"),
        (options.allow_other, "allow_other"),
        (options.read_only, "ro"),
    ] {
        if wanted {
            mount_options.push(',');
            mount_options.push_str(option);
        }
    }
    let out = std::process::Command::new(FUSERMOUNT)
        .arg("-o")
        .arg(&mount_options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot run {FUSERMOUNT}, which mounts for ordinary users (install fuse3): {e}"
                ),
            )
        })?;
    drop(theirs);
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{FUSERMOUNT} could not mount {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    received_descriptor(&ours).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{FUSERMOUNT} mounted but sent no descriptor: {e}"),
        )
    })
}

/// Whether /etc/fuse.conf (at `path`) lets ordinary users mount with `allow_other`.
fn fuse_conf_allows_other(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|conf| {
        conf.lines()
            .any(|line| line.split('#').next().unwrap_or("").trim() == "user_allow_other")
    })
}

/// The descriptor sent over `socket` in an `SCM_RIGHTS` message.
fn received_descriptor(socket: &OwnedFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // u64s keep the control buffer aligned for its header.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as _;
    let received = loop {
        // SAFETY: msg points at buffers valid for the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        let e = io::Error::last_os_error();
        if n >= 0 || e.kind() != io::ErrorKind::Interrupted {
            break if n >= 0 { Ok(n) } else { Err(e) };
        }
    }?;
    // SAFETY: msg was filled in by recvmsg; the header, if any, lies in `control`.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        if received == 0
            || header.is_null()
            || (*header).cmsg_level != libc::SOL_SOCKET
            || (*header).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Detach the mount at `mountpoint` (what `umount -l` does); as an ordinary user,
/// through `fusermount3 -u -z`.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    if !mounts_itself() {
        let out = std::process::Command::new(FUSERMOUNT)
            .args(["-u", "-z", "--"])
            .arg(mountpoint)
            .output()?;
        return match out.status.success() {
            true => Ok(()),
            false => Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )),
        };
    }
    let target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: target is a valid NUL-terminated string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The daemon side of a forked mount: tells the waiting parent how the mount went.
pub struct Readiness {
    pipe: Option<std::fs::File>,
}

impl Readiness {
    /// In the foreground there is nobody to tell.
    pub fn foreground() -> Self {
        Readiness { pipe: None }
    }

    /// The mount is live: let the parent exit 0.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"OK");
        }
    }

    /// The mount failed: the parent prints `message` and exits 1.
    pub fn failed(&mut self, message: &str) {
        match self.pipe.take() {
            Some(mut pipe) => {
                let _ = pipe.write_all(message.as_bytes());
            }
            None => eprintln!("dynamofs: {message}"),
        }
    }
}

fn default_logfile() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let system = PathBuf::from("/var/log/dynamofs.log");
    if uid == 0
        && OpenOptions::new()
            .create(true)
            .append(true)
            .open(&system)
            .is_ok()
    {
        system
    } else {
        PathBuf::from(format!("/tmp/dynamofs-{uid}.log"))
    }
}

/// Fork into the background. Must run before any thread exists. The parent waits
/// for the child's readiness report and exits with it; the child returns.
pub fn daemonize(logfile: Option<&Path>) -> io::Result<Readiness> {
    let logfile = logfile
        .map(Path::to_path_buf)
        .unwrap_or_else(default_logfile);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&logfile)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", logfile.display()),
            )
        })?;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (mut reader, writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: no other thread exists yet (documented precondition).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(reader);
            // SAFETY: plain syscalls on descriptors we own.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::dup2(log.into_raw_fd(), 2);
            }
            let _ = std::env::set_current_dir("/");
            Ok(Readiness { pipe: Some(writer) })
        }
        _ => {
            drop(writer);
            let mut answer = String::new();
            let _ = reader.read_to_string(&mut answer);
            if answer == "OK" {
                std::process::exit(0);
            }
            if answer.is_empty() {
                answer = format!(
                    "the mount process exited before the mount was ready; see {}",
                    logfile.display()
                );
            }
            eprintln!("dynamofs: {answer}");
            std::process::exit(1);
        }
    }
}

/// Block the termination signals in this thread and all threads started after it,
/// and return a closure that waits for one of them.
fn block_termination_signals() -> impl Fn() -> i32 {
    // SAFETY: sigset manipulation on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    move || {
        let mut sig = 0;
        // SAFETY: set is a valid signal set; sig receives the signal number.
        unsafe { libc::sigwait(&set, &mut sig) };
        sig
    }
}

/// How long a signal after the unmount lets the daemon go on ending its session
/// before it exits regardless: ample for the held-back changes and the session's
/// removal against a DynamoDB that answers (garbage collection stops after 5 s).
const ENDING_GRACE: Duration = Duration::from_secs(10);

/// The first termination signal unmounts `mountpoint`, after which the daemon ends
/// its session (commits what it holds back, removes its record and locks) and exits.
/// A signal once it is unmounted, as when that ending waits on a DynamoDB that stopped
/// answering, gives the ending [`ENDING_GRACE`] more and then exits: the session's
/// locks then lapse with its lease.
fn stop_on_signals(mountpoint: &Path, wait_for_signal: impl Fn() -> i32) {
    let mut sig = wait_for_signal();
    if matches!(mounted_type(mountpoint), Ok(Some(t)) if t == FS_TYPE) {
        tracing::info!(signal = sig, "unmounting on signal");
        if let Err(e) = unmount(mountpoint) {
            tracing::error!(error = %e, "cannot unmount {}", mountpoint.display());
        }
        sig = wait_for_signal();
    }
    tracing::info!(
        signal = sig,
        "ending the session for at most {} s more",
        ENDING_GRACE.as_secs()
    );
    std::thread::sleep(ENDING_GRACE);
    tracing::warn!(
        "exiting before the session ended: what it had not yet committed is lost, \
         and its locks are released when its lease runs out"
    );
    std::process::exit(1);
}

/// Mount and serve until unmounted. Returns the process exit code.
pub fn run(args: MountArgs) -> i32 {
    let options = match MountOptions::parse(&args.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dynamofs: {e}");
            return 2;
        }
    };
    let mountpoint = match std::fs::canonicalize(&args.mountpoint) {
        Ok(p) if p.is_dir() => p,
        Ok(p) => {
            eprintln!("dynamofs: mountpoint {} is not a directory", p.display());
            return 1;
        }
        Err(e) => {
            eprintln!("dynamofs: mountpoint {}: {e}", args.mountpoint.display());
            return 1;
        }
    };
    if let Ok(Some(fstype)) = mounted_type(&mountpoint) {
        if fstype == FS_TYPE {
            eprintln!(
                "dynamofs: {} is already a dynamofs mount; unmount it first",
                mountpoint.display()
            );
            return 1;
        }
    }
    let mut readiness = if args.foreground || (args.debug && options.logfile.is_none()) {
        Readiness::foreground()
    } else {
        match daemonize(options.logfile.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("dynamofs: cannot daemonize: {e}");
                return 1;
            }
        }
    };
    init_logging(args.debug);
    let wait_for_signal = block_termination_signals();
    match serve(
        &args,
        &options,
        &mountpoint,
        &mut readiness,
        wait_for_signal,
    ) {
        Ok(()) => 0,
        Err(message) => {
            tracing::error!("{message}");
            readiness.failed(&message);
            1
        }
    }
}

/// Log to stderr: dynamofs at info (debug with `-d`), everything else at warn;
/// `RUST_LOG` overrides.
pub fn init_logging(debug: bool) {
    let default = if debug {
        "dynamofs=debug,info"
    } else {
        "dynamofs=info,warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The runtime of the tools that work without a mount (`mkfs`, `import`, `export`):
/// a few workers, as a mount has; None, after saying why, if it cannot start.
pub fn tool_runtime() -> Option<tokio::runtime::Runtime> {
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build();
    built
        .inspect_err(|e| eprintln!("dynamofs: cannot start the runtime: {e}"))
        .ok()
}

/// The filesystem configuration a set of mount options asks for.
pub fn fs_config(options: &MountOptions) -> FsConfig {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    FsConfig {
        attr_ttl: options.attr_ttl,
        entry_ttl: options.entry_ttl,
        read_only: options.read_only,
        uid: options.uid,
        gid: options.gid,
        umask: options.umask,
        root_owner: (options.uid.unwrap_or(uid), options.gid.unwrap_or(gid)),
        dirty_limit: options.write_buffer,
        compression: options.compression,
        ..FsConfig::default()
    }
}

/// Mount `fs` at `mountpoint` and complete the FUSE handshake; `Session::run` then
/// serves it until it is unmounted.
pub fn start_session(
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    source: &str,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<fuser::Session<DynamoFuse>, String> {
    let fd = fuse_mount(source, mountpoint, options).map_err(|e| e.to_string())?;
    let acl = if options.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let mut session_config = fuser::Config::default();
    session_config.n_threads = Some(options.threads);
    session_config.acl = acl;
    fs.spawn_flusher(&rt);
    fs.spawn_create_settler(&rt);
    let adapter = DynamoFuse::new(fs, rt);
    let notifier = adapter.notifier_slot();
    let session = fuser::Session::from_fd(adapter, fd, acl, session_config).map_err(|e| {
        let _ = unmount(mountpoint);
        format!("FUSE handshake failed: {e}")
    })?;
    let _ = notifier.set(session.notifier());
    Ok(session)
}

/// Tell systemd, when it started this mount as a `Type=notify` service (it sets
/// `NOTIFY_SOCKET`), that the mount is live or ending; elsewhere nothing.
fn tell_systemd(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn serve(
    args: &MountArgs,
    options: &MountOptions,
    mountpoint: &Path,
    readiness: &mut Readiness,
    wait_for_signal: impl Fn() -> i32 + Send + 'static,
) -> Result<(), String> {
    // Bound first: a taken port fails the mount before it registers a session.
    let metrics = options
        .metrics
        .as_deref()
        .map(crate::metrics::listen)
        .transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("dynamofs-io")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let fs = rt.block_on(async {
        let opened = args
            .source
            .open(
                options.endpoint.clone(),
                options.patience,
                Some(Billing::OnDemand),
            )
            .await;
        let store = opened.map_err(|e| format!("cannot open {}: {e}", args.source))?;
        let fs = Fs::new(store, fs_config(options)).await;
        let fs = fs.map_err(|e| format!("cannot open {}: {e}", args.source))?;
        let registered = fs
            .register_session(&mountpoint.display().to_string(), options.heartbeat)
            .await;
        registered.map_err(|e| format!("cannot register a session: {e}"))?;
        Ok::<_, String>(Arc::new(fs))
    })?;
    {
        let _runtime = rt.enter();
        fs.start_heartbeat();
    }
    let session = start_session(
        fs,
        rt.handle().clone(),
        &args.source.to_string(),
        mountpoint,
        options,
    )?;
    tracing::info!(source = %args.source, mountpoint = %mountpoint.display(), "mounted");
    if let Some(listener) = metrics {
        crate::metrics::serve(listener);
    }
    readiness.ready();
    tell_systemd(sd_notify::NotifyState::Ready);
    let target = mountpoint.to_path_buf();
    std::thread::spawn(move || stop_on_signals(&target, wait_for_signal));
    let result = session.run();
    tracing::info!(source = %args.source, mountpoint = %mountpoint.display(), "unmounted");
    tell_systemd(sd_notify::NotifyState::Stopping);
    rt.shutdown_timeout(Duration::from_secs(5));
    result.map_err(|e| format!("FUSE session ended with an error: {e}"))
}
