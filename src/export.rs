//! `dynamofs export SOURCE[:/PATH] LOCAL_DIR`: copy a tree out of a filesystem
//! without mounting it, the reverse of `import` and with its habits: the tree is
//! listed first (for the progress bar), then local directories are made, `-j` workers
//! copy files, symlinks and other nodes, further names of hard-linked files become
//! local hard links, and last the directories get their modes, owners and times.
//! With `--skip-existing` a local file of the same size and modification time is left
//! alone. Owners are copied only when run as root (as `tar` does).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::stream::{self, StreamExt};

use crate::bulk::{self, Client, Progress, Tally, CHUNK, TOOL_CALLER};
use crate::cli::{ExportArgs, MountOptions};
use crate::records::{FileKind, Inode, Timestamp};

/// One node of the filesystem to copy, by its path below the tree's top.
struct RemoteNode {
    rel: PathBuf,
    inode: Inode,
}

/// Every node below directory `top`, parents before their children.
async fn walk(client: &Client, top: u64, tally: &Tally) -> Vec<RemoteNode> {
    let fs = &client.fs;
    let mut nodes = Vec::new();
    let mut dirs = vec![(PathBuf::new(), top)];
    while let Some((dir, ino)) = dirs.pop() {
        let listed = async {
            let fh = fs.opendir(ino).await?;
            let mut entries = Vec::new();
            loop {
                let page = fs.readdirplus(ino, fh, entries.len() as u64, 1000).await;
                match page {
                    Ok(page) if page.is_empty() => break,
                    Ok(page) => entries.extend(page),
                    Err(e) => {
                        fs.releasedir(fh);
                        return Err(e);
                    }
                }
            }
            fs.releasedir(fh);
            Ok(entries)
        }
        .await;
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                tally.failed(&dir, e);
                continue;
            }
        };
        for (entry, inode) in entries {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let rel = dir.join(std::ffi::OsStr::from_bytes(&entry.name));
            let inode = match inode {
                Some(inode) => inode,
                None => match fs.getattr(entry.ino).await {
                    Ok(inode) => inode,
                    Err(e) => {
                        tally.failed(&rel, e);
                        continue;
                    }
                },
            };
            if inode.kind == FileKind::Dir {
                dirs.push((rel.clone(), inode.ino));
            }
            nodes.push(RemoteNode { rel, inode });
        }
    }
    nodes
}

/// The local times of `t`.
fn file_time(t: Timestamp) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(t.s, t.n)
}

/// One export run.
struct Export<'a> {
    client: Client,
    top: PathBuf,
    skip_existing: bool,
    as_root: bool,
    tally: &'a Tally,
    /// The local path each hard-linked inode was first copied to.
    linked: Mutex<HashMap<u64, PathBuf>>,
}

impl Export<'_> {
    /// Remove what is at `path` unless it is a node of `kind` that can be reused.
    fn clear(path: &Path, kind: FileKind) -> std::io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && kind == FileKind::Dir => Ok(()),
            Ok(meta) if meta.file_type().is_file() && kind == FileKind::File => Ok(()),
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn make_dir(&self, node: &RemoteNode) -> Result<(), String> {
        let path = self.top.join(&node.rel);
        Self::clear(&path, FileKind::Dir).map_err(|e| e.to_string())?;
        match std::fs::create_dir(&path) {
            Ok(()) => Tally::count(&self.tally.directories),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(())
    }

    /// Copy a node that is not a directory (a hard-linked one's first name in full,
    /// its further names as local hard links).
    async fn copy_node(&self, node: &RemoteNode) -> Result<(), String> {
        let path = self.top.join(&node.rel);
        let inode = &node.inode;
        let kind = inode.kind;
        if kind == FileKind::File && inode.nlink > 1 {
            let first = self.linked.lock().unwrap().get(&inode.ino).cloned();
            if let Some(first) = first {
                let same = std::fs::metadata(&first)
                    .and_then(|a| std::fs::symlink_metadata(&path).map(|b| (a, b)))
                    .is_ok_and(|(a, b)| a.dev() == b.dev() && a.ino() == b.ino());
                if same {
                    Tally::count(&self.tally.skipped);
                    return Ok(());
                }
                Self::clear(&path, FileKind::Symlink).map_err(|e| e.to_string())?;
                std::fs::hard_link(&first, &path).map_err(|e| e.to_string())?;
                Tally::count(&self.tally.hard_links);
                return Ok(());
            }
            self.linked.lock().unwrap().insert(inode.ino, path.clone());
        }
        if kind == FileKind::File && self.skip_existing {
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if meta.file_type().is_file()
                    && meta.len() == inode.size
                    && bulk::local_mtime(&meta) == inode.mtime
                {
                    Tally::count(&self.tally.skipped);
                    return Ok(());
                }
            }
        }
        Self::clear(&path, kind).map_err(|e| e.to_string())?;
        match kind {
            FileKind::File => self.copy_file(node, &path).await?,
            FileKind::Symlink => {
                let target = self
                    .client
                    .fs
                    .readlink(inode.ino)
                    .await
                    .map_err(|e| e.to_string())?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(|e| e.to_string())?;
                Tally::count(&self.tally.symlinks);
            }
            _ => {
                let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
                    .map_err(|e| e.to_string())?;
                let mode = kind.mode_bits() | inode.mode;
                // SAFETY: mknod(2) with a valid NUL-terminated path.
                if unsafe { libc::mknod(c_path.as_ptr(), mode, inode.rdev as libc::dev_t) } != 0 {
                    return Err(std::io::Error::last_os_error().to_string());
                }
                Tally::count(&self.tally.others);
            }
        }
        self.set_attrs(node, &path).await
    }

    async fn copy_file(&self, node: &RemoteNode, path: &Path) -> Result<(), String> {
        let fs = &self.client.fs;
        let opened = fs.open(TOOL_CALLER, node.inode.ino, libc::O_RDONLY).await;
        let fh = opened.map_err(|e| e.to_string())?.fh;
        let copied = async {
            let mut file = std::fs::File::create(path).map_err(|e| e.to_string())?;
            let mut offset = 0u64;
            loop {
                let chunk = fs
                    .read(fh, offset, CHUNK as u32)
                    .await
                    .map_err(|e| e.to_string())?;
                if chunk.is_empty() {
                    return Ok::<u64, String>(offset);
                }
                file.write_all(&chunk).map_err(|e| e.to_string())?;
                offset += chunk.len() as u64;
            }
        }
        .await;
        let closed = fs.release(fh).await.map_err(|e| e.to_string());
        let bytes = copied?;
        closed?;
        Tally::count(&self.tally.files);
        self.tally
            .bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Give local `path` the mode, owner, times and extended attributes of `node`.
    async fn set_attrs(&self, node: &RemoteNode, path: &Path) -> Result<(), String> {
        let inode = &node.inode;
        if inode.kind != FileKind::Symlink {
            for (name, value) in self.xattrs(inode.ino).await? {
                xattr::set(path, std::ffi::OsStr::from_bytes(&name), &value).map_err(|e| {
                    format!("extended attribute {}: {e}", String::from_utf8_lossy(&name))
                })?;
            }
        }
        if self.as_root {
            std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid))
                .map_err(|e| e.to_string())?;
        }
        if inode.kind != FileKind::Symlink {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(inode.mode))
                .map_err(|e| e.to_string())?;
        }
        filetime::set_symlink_file_times(path, file_time(inode.atime), file_time(inode.mtime))
            .map_err(|e| e.to_string())
    }

    /// The extended attributes of inode `ino`, by name.
    async fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>, String> {
        let fs = &self.client.fs;
        let names = fs.listxattr(ino).await.map_err(|e| e.to_string())?;
        let mut all = Vec::new();
        for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let value = fs.getxattr(ino, name).await.map_err(|e| e.to_string())?;
            all.push((name.to_vec(), value));
        }
        Ok(all)
    }
}

/// Run `dynamofs export`; returns the exit code (1 when some files failed).
pub fn run(args: ExportArgs) -> i32 {
    bulk::run_tool("export", async |tally| {
        let options = MountOptions::parse(&args.options)?;
        std::fs::create_dir_all(&args.local)
            .map_err(|e| format!("{}: {e}", args.local.display()))?;
        export(&args, &options, tally).await
    })
}

async fn export(args: &ExportArgs, options: &MountOptions, tally: &Tally) -> Result<(), String> {
    let client = Client::open(&args.source, options, true, String::new()).await?;
    let top = client.directory(&args.source, false).await?;
    let nodes = walk(&client, top, tally).await;
    let files = nodes.iter().filter(|n| n.inode.kind == FileKind::File);
    let progress = Progress::new(
        "export",
        files.clone().count() as u64,
        files.map(|n| n.inode.size).sum(),
    );
    let run = Export {
        client,
        top: args.local.clone(),
        skip_existing: args.skip_existing,
        // SAFETY: geteuid cannot fail.
        as_root: unsafe { libc::geteuid() } == 0,
        tally,
        linked: Mutex::new(HashMap::new()),
    };
    let failed = |node: &RemoteNode, e: String| tally.failed(&run.top.join(&node.rel), e);
    for node in nodes.iter().filter(|n| n.inode.kind == FileKind::Dir) {
        if let Err(e) = run.make_dir(node) {
            failed(node, e);
        }
    }
    // The first name of each hard-linked file before its further ones.
    let (firsts, further): (Vec<&RemoteNode>, Vec<&RemoteNode>) = {
        let mut seen = std::collections::HashSet::new();
        nodes
            .iter()
            .filter(|n| n.inode.kind != FileKind::Dir)
            .partition(|n| {
                n.inode.nlink <= 1 || n.inode.kind != FileKind::File || seen.insert(n.inode.ino)
            })
    };
    stream::iter(firsts.into_iter().map(|node| async {
        if let Err(e) = run.copy_node(node).await {
            failed(node, e);
        }
        if node.inode.kind == FileKind::File {
            progress.file_done(node.inode.size);
        }
    }))
    .buffer_unordered(args.jobs.max(1))
    .collect::<Vec<()>>()
    .await;
    for node in further {
        if let Err(e) = run.copy_node(node).await {
            failed(node, e);
        }
    }
    for node in nodes.iter().rev().filter(|n| n.inode.kind == FileKind::Dir) {
        if let Err(e) = run.set_attrs(node, &run.top.join(&node.rel)).await {
            failed(node, e);
        }
    }
    progress.finish();
    run.client.finish().await.map_err(|e| e.to_string())
}
