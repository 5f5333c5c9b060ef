//! `dynamofs import LOCAL_DIR SOURCE[:/PATH]`: copy a local tree into a filesystem
//! without mounting it, with modes, owners, times, symlinks, hard links, fifos and
//! device nodes, and extended attributes.
//!
//! The local tree is walked first, so the progress bar knows the files and bytes to
//! come. Then directory after directory, level by level (`-j` of a level at once), a
//! directory is made or listed, and at once its files, symlinks and other nodes are
//! copied by up to `-j` workers: right after its `mkdir` this client holds the
//! directory's lease, so its new files are committed about 30 to a transaction, as
//! `tar x` on a mount commits them. The further names of hard-linked files come
//! next, and last the directories' modes, owners and times (after their contents,
//! which would change them). Every request goes through the retry helper, so
//! throttling slows an import down but does not fail it. With `--skip-existing` a
//! file of the same size and modification time already there is left alone, and
//! attributes already right are not written again: a second run over an unchanged
//! tree reads a listing per directory and writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};

use crate::bulk::{self, Client, Progress, Tally, CHUNK, TOOL_CALLER};
use crate::cli::{ImportArgs, MountOptions};
use crate::fs::{FsError, SetAttr, SetTime, XattrMode};
use crate::records::{FileKind, Inode};

/// One local node to copy, by its path below the tree's top.
struct LocalNode {
    rel: PathBuf,
    meta: std::fs::Metadata,
}

impl LocalNode {
    fn kind(&self) -> FileKind {
        let t = self.meta.file_type();
        if t.is_dir() {
            FileKind::Dir
        } else if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_char_device() {
            FileKind::Char
        } else if t.is_block_device() {
            FileKind::Block
        } else if t.is_socket() {
            FileKind::Socket
        } else {
            FileKind::File
        }
    }

    fn name(&self) -> &[u8] {
        use std::os::unix::ffi::OsStrExt;
        self.rel.file_name().map_or(b"", |n| n.as_bytes())
    }

    /// The local inode, when other names may share it.
    fn link_group(&self) -> Option<(u64, u64)> {
        (self.kind() != FileKind::Dir && self.meta.nlink() > 1)
            .then(|| (self.meta.dev(), self.meta.ino()))
    }
}

/// Every node below `top`, parents before their children.
fn walk(top: &Path, tally: &Tally) -> Vec<LocalNode> {
    let mut nodes = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(top.join(&dir)) {
            Ok(entries) => entries,
            Err(e) => {
                tally.failed(&top.join(&dir), e);
                continue;
            }
        };
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = dir.join(&name);
            match std::fs::symlink_metadata(top.join(&rel)) {
                Ok(meta) => {
                    if meta.is_dir() {
                        dirs.push(rel.clone());
                    }
                    nodes.push(LocalNode { rel, meta });
                }
                Err(e) => tally.failed(&top.join(&rel), e),
            }
        }
    }
    nodes
}

/// The attribute changes that make `inode` carry `meta`'s mode, owner and times;
/// None when it carries them already.
fn attrs_to_set(
    inode: Option<&Inode>,
    meta: &std::fs::Metadata,
    kind: FileKind,
) -> Option<SetAttr> {
    let mtime = bulk::local_mtime(meta);
    let mode = (kind != FileKind::Symlink).then_some(meta.mode() & 0o7777);
    if let Some(inode) = inode {
        let same_mode = mode.is_none_or(|m| m == inode.mode);
        if same_mode && inode.uid == meta.uid() && inode.gid == meta.gid() && inode.mtime == mtime {
            return None;
        }
    }
    Some(SetAttr {
        mode,
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        size: None,
        atime: Some(SetTime::At(bulk::local_atime(meta))),
        mtime: Some(SetTime::At(mtime)),
    })
}

/// What a directory of the filesystem holds, by name.
type Listing = HashMap<Vec<u8>, Inode>;

/// One import run.
struct Import<'a> {
    client: Client,
    top: PathBuf,
    skip_existing: bool,
    tally: &'a Tally,
    progress: Progress,
    /// The inode each local directory became, and what it held when listed (nothing
    /// when this run made it).
    dirs: Mutex<HashMap<PathBuf, (u64, Arc<Listing>)>>,
    /// Files copied at once, across directories.
    workers: tokio::sync::Semaphore,
    jobs: usize,
    /// The inode each hard-linked local inode became, by its first name.
    linked: Mutex<HashMap<(u64, u64), u64>>,
}

impl Import<'_> {
    /// The inode of `node`'s directory, and what it held.
    fn parent_of(&self, node: &LocalNode) -> Result<(u64, Arc<Listing>), String> {
        let parent = node.rel.parent().unwrap_or(Path::new(""));
        let dirs = self.dirs.lock().unwrap();
        let found = dirs.get(parent).cloned();
        found.ok_or_else(|| "its directory could not be made".to_string())
    }

    /// What directory `ino` holds, listed in one go (a query and batch gets of the
    /// inodes) instead of a lookup per name.
    async fn list(&self, ino: u64) -> Result<Listing, FsError> {
        let fs = &self.client.fs;
        let fh = fs.opendir(ino).await?;
        let mut listing = Listing::new();
        let mut offset = 0;
        let listed = loop {
            let page = match fs.readdirplus(ino, fh, offset, 1000).await {
                Ok(page) if page.is_empty() => break Ok(()),
                Ok(page) => page,
                Err(e) => break Err(e),
            };
            offset += page.len() as u64;
            for (entry, inode) in page {
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                let inode = match inode {
                    Some(inode) => inode,
                    None => fs.getattr(entry.ino).await?,
                };
                listing.insert(entry.name, inode);
            }
        };
        fs.releasedir(fh);
        listed.map(|()| listing)
    }

    /// The inode named `name` in `parent`, if any.
    async fn existing(&self, parent: u64, name: &[u8]) -> Result<Option<Inode>, FsError> {
        match self.client.fs.lookup(parent, name).await {
            Ok(inode) => Ok(Some(inode)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove what `parent/name` names, to put a node of another kind there.
    async fn clear(&self, parent: u64, name: &[u8], there: &Inode) -> Result<(), FsError> {
        let fs = self.client.writing().await?;
        match there.kind {
            FileKind::Dir => fs.rmdir(parent, name).await,
            _ => fs.unlink(parent, name).await,
        }
    }

    /// Make directory `node`, or list it if it is there, then copy what it holds
    /// other than directories (`children`).
    async fn copy_dir(&self, node: &LocalNode, children: &[&LocalNode]) -> Result<(), String> {
        let (parent, parent_listing) = self.parent_of(node)?;
        let (ino, listing) = match parent_listing.get(node.name()) {
            Some(there) if there.kind == FileKind::Dir => (
                there.ino,
                self.list(there.ino).await.map_err(|e| e.to_string())?,
            ),
            Some(there) => {
                self.clear(parent, node.name(), there)
                    .await
                    .map_err(|e| e.to_string())?;
                (self.mkdir(parent, node).await?, Listing::new())
            }
            None => (self.mkdir(parent, node).await?, Listing::new()),
        };
        self.dirs
            .lock()
            .unwrap()
            .insert(node.rel.clone(), (ino, Arc::new(listing)));
        self.copy_children(children).await;
        Ok(())
    }

    /// Copy `children`, nodes that are not directories of one directory, `-j` at once.
    async fn copy_children(&self, children: &[&LocalNode]) {
        stream::iter(children.iter().map(|node| async {
            let _worker = self.workers.acquire().await.expect("never closed");
            if let Err(e) = self.copy_node(node).await {
                self.tally.failed(&self.top.join(&node.rel), e);
            }
            if node.kind() == FileKind::File {
                self.progress.file_done(node.meta.len());
            }
        }))
        .buffer_unordered(self.jobs)
        .collect::<Vec<()>>()
        .await;
    }

    async fn mkdir(&self, parent: u64, node: &LocalNode) -> Result<u64, String> {
        let fs = self.client.writing().await.map_err(|e| e.to_string())?;
        let made = fs.mkdir(TOOL_CALLER, parent, node.name(), 0o700).await;
        Tally::count(&self.tally.directories);
        Ok(made.map_err(|e| e.to_string())?.ino)
    }

    /// Copy a node that is not a directory (the first name of a hard-linked one).
    async fn copy_node(&self, node: &LocalNode) -> Result<(), String> {
        let (parent, listing) = self.parent_of(node)?;
        let name = node.name();
        let kind = node.kind();
        let there = listing.get(name).cloned();
        let target = match kind {
            FileKind::Symlink => Some(std::os::unix::ffi::OsStringExt::into_vec(
                std::fs::read_link(self.top.join(&node.rel))
                    .map_err(|e| e.to_string())?
                    .into_os_string(),
            )),
            _ => None,
        };
        let unchanged = there.as_ref().is_some_and(|inode| match kind {
            FileKind::File => {
                bulk::unchanged(inode, kind, node.meta.len(), bulk::local_mtime(&node.meta))
            }
            FileKind::Symlink => inode.kind == kind && Some(&inode.target) == target.as_ref(),
            _ => inode.kind == kind,
        });
        let ino = if unchanged && self.skip_existing {
            Tally::count(&self.tally.skipped);
            let inode = there.expect("unchanged implies there");
            if kind != FileKind::File {
                self.set_attrs(Some(&inode), inode.ino, node).await?;
            }
            inode.ino
        } else {
            if let Some(there) = there
                .as_ref()
                .filter(|i| i.kind != kind || kind != FileKind::File)
            {
                self.clear(parent, name, there)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let fs = self.client.writing().await.map_err(|e| e.to_string())?;
            let ino = match kind {
                FileKind::File => {
                    let reuse = there.filter(|i| i.kind == FileKind::File);
                    self.copy_file(parent, node, reuse.map(|i| i.ino)).await?
                }
                FileKind::Symlink => {
                    let target = target.expect("read above");
                    let made = fs.symlink(TOOL_CALLER, parent, name, &target).await;
                    Tally::count(&self.tally.symlinks);
                    made.map_err(|e| e.to_string())?.ino
                }
                _ => {
                    let mode = kind.mode_bits() | (node.meta.mode() & 0o7777);
                    let made = fs
                        .mknod(TOOL_CALLER, parent, name, mode, node.meta.rdev() as u32)
                        .await;
                    Tally::count(&self.tally.others);
                    made.map_err(|e| e.to_string())?.ino
                }
            };
            if kind != FileKind::File {
                self.set_attrs(None, ino, node).await?;
            }
            ino
        };
        if let Some(group) = node.link_group() {
            self.linked.lock().unwrap().insert(group, ino);
        }
        Ok(())
    }

    /// Copy the bytes of regular file `node` into a new file in `parent`, or into
    /// `reuse` (a file of that name already there, truncated first).
    async fn copy_file(
        &self,
        parent: u64,
        node: &LocalNode,
        reuse: Option<u64>,
    ) -> Result<u64, String> {
        let fs = self.client.writing().await.map_err(|e| e.to_string())?;
        let (ino, fh) = match reuse {
            Some(ino) => {
                let opened = fs
                    .open(TOOL_CALLER, ino, libc::O_WRONLY | libc::O_TRUNC)
                    .await;
                (ino, opened.map_err(|e| e.to_string())?.fh)
            }
            None => {
                let mode = libc::S_IFREG | (node.meta.mode() & 0o7777);
                let created = fs
                    .create(TOOL_CALLER, parent, node.name(), mode, libc::O_WRONLY)
                    .await;
                let (inode, opened) = created.map_err(|e| e.to_string())?;
                (inode.ino, opened.fh)
            }
        };
        let copied = async {
            let mut file =
                std::fs::File::open(self.top.join(&node.rel)).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; CHUNK];
            let mut offset = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok::<u64, String>(offset);
                }
                fs.write(fh, offset, &buf[..n])
                    .await
                    .map_err(|e| e.to_string())?;
                offset += n as u64;
            }
        }
        .await;
        // While it is open: the attributes then go with the data's flush, in the
        // transaction that commits the new file, instead of a write of their own.
        let attrs = match &copied {
            Ok(_) => self.set_attrs(None, ino, node).await,
            Err(_) => Ok(()),
        };
        let closed = fs.release(fh).await.map_err(|e| e.to_string());
        let bytes = copied?;
        attrs?;
        closed?;
        Tally::count(&self.tally.files);
        self.tally
            .bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(ino)
    }

    /// Give inode `ino` (as read: `there`, if it was) the mode, owner, times and
    /// extended attributes of `node`, writing only what differs.
    async fn set_attrs(
        &self,
        there: Option<&Inode>,
        ino: u64,
        node: &LocalNode,
    ) -> Result<(), String> {
        let kind = node.kind();
        let path = self.top.join(&node.rel);
        if kind != FileKind::Symlink {
            for name in xattr::list(&path).map_err(|e| e.to_string())? {
                use std::os::unix::ffi::OsStrExt;
                let Some(value) = xattr::get(&path, &name).map_err(|e| e.to_string())? else {
                    continue;
                };
                let name = name.as_bytes();
                if there.is_some() {
                    if let Ok(stored) = self.client.fs.getxattr(ino, name).await {
                        if stored == value {
                            continue;
                        }
                    }
                }
                let fs = self.client.writing().await.map_err(|e| e.to_string())?;
                fs.setxattr(ino, name, &value, XattrMode::Set)
                    .await
                    .map_err(|e| {
                        format!("extended attribute {}: {e}", String::from_utf8_lossy(name))
                    })?;
            }
        }
        if let Some(attr) = attrs_to_set(there, &node.meta, kind) {
            let fs = self.client.writing().await.map_err(|e| e.to_string())?;
            fs.setattr(TOOL_CALLER, ino, attr)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Add the further name `node` of a hard-linked inode copied under another name.
    async fn add_link(&self, node: &LocalNode) -> Result<(), String> {
        let (parent, _) = self.parent_of(node)?;
        let group = node.link_group().expect("only linked nodes");
        let ino = self.linked.lock().unwrap().get(&group).copied();
        let ino = ino.ok_or("the file it is a link of could not be copied")?;
        match self
            .existing(parent, node.name())
            .await
            .map_err(|e| e.to_string())?
        {
            Some(there) if there.ino == ino => {
                Tally::count(&self.tally.skipped);
                return Ok(());
            }
            Some(there) => self
                .clear(parent, node.name(), &there)
                .await
                .map_err(|e| e.to_string())?,
            None => {}
        }
        let fs = self.client.writing().await.map_err(|e| e.to_string())?;
        fs.link(ino, parent, node.name())
            .await
            .map_err(|e| e.to_string())?;
        Tally::count(&self.tally.hard_links);
        Ok(())
    }
}

/// Run `dynamofs import`; returns the exit code (1 when some files failed).
pub fn run(args: ImportArgs) -> i32 {
    bulk::run_tool("import", async |tally| {
        let options = MountOptions::parse(&args.options)?;
        let top = std::fs::canonicalize(&args.local)
            .map_err(|e| format!("{}: {e}", args.local.display()))?;
        if !top.is_dir() {
            return Err(format!("{} is not a directory", top.display()));
        }
        import(&args, &options, top, tally).await
    })
}

async fn import(
    args: &ImportArgs,
    options: &MountOptions,
    top: PathBuf,
    tally: &Tally,
) -> Result<(), String> {
    let label = format!("import:{}", top.display());
    let client = Client::open(&args.target, options, false, label).await?;
    let root = client.directory(&args.target, true).await?;
    let nodes = walk(&top, tally);
    let files = nodes.iter().filter(|n| n.kind() == FileKind::File);
    let progress = Progress::new(
        "import",
        files.clone().count() as u64,
        files.map(|n| n.meta.len()).sum(),
    );
    let jobs = args.jobs.max(1);
    let run = Import {
        client,
        top,
        skip_existing: args.skip_existing,
        tally,
        progress,
        dirs: Mutex::new(HashMap::new()),
        workers: tokio::sync::Semaphore::new(jobs),
        jobs,
        linked: Mutex::new(HashMap::new()),
    };
    let root_listing = run.list(root).await.map_err(|e| e.to_string())?;
    run.dirs
        .lock()
        .unwrap()
        .insert(PathBuf::new(), (root, Arc::new(root_listing)));

    // The first name of each hard-linked file is copied in full, the others linked to it.
    let mut first_names = std::collections::HashSet::new();
    let (firsts, further): (Vec<&LocalNode>, Vec<&LocalNode>) = nodes
        .iter()
        .filter(|n| n.kind() != FileKind::Dir)
        .partition(|n| n.link_group().is_none_or(|g| first_names.insert(g)));
    let mut children: HashMap<&Path, Vec<&LocalNode>> = HashMap::new();
    for node in firsts {
        children
            .entry(node.rel.parent().unwrap_or(Path::new("")))
            .or_default()
            .push(node);
    }
    let children_of = |rel: &Path| children.get(rel).map_or(&[][..], Vec::as_slice);
    run.copy_children(children_of(Path::new(""))).await;
    let mut levels: BTreeMap<usize, Vec<&LocalNode>> = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.kind() == FileKind::Dir) {
        levels
            .entry(node.rel.components().count())
            .or_default()
            .push(node);
    }
    let mut parents: Vec<&Path> = vec![Path::new("")];
    for level in levels.values() {
        stream::iter(level.iter().map(|node| async {
            if let Err(e) = run.copy_dir(node, children_of(&node.rel)).await {
                tally.failed(&run.top.join(&node.rel), e);
            }
        }))
        .buffer_unordered(jobs)
        .collect::<Vec<()>>()
        .await;
        // Every name in the level above is handled now: let its listings go.
        let mut dirs = run.dirs.lock().unwrap();
        for parent in parents {
            if let Some((_, listing)) = dirs.get_mut(parent) {
                *listing = Arc::default();
            }
        }
        parents = level.iter().map(|n| n.rel.as_path()).collect();
    }
    for node in further {
        if let Err(e) = run.add_link(node).await {
            tally.failed(&run.top.join(&node.rel), e);
        }
    }

    // The new files first, whose commits would otherwise set their directories' times.
    run.client
        .fs
        .settle_all_creates()
        .await
        .map_err(|e| e.to_string())?;
    let made: Vec<(&LocalNode, u64)> = {
        let dirs = run.dirs.lock().unwrap();
        nodes
            .iter()
            .filter_map(|n| Some((n, dirs.get(&n.rel)?.0)))
            .collect()
    };
    for (node, ino) in made.into_iter().rev() {
        let there = run
            .client
            .fs
            .getattr(ino)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = run.set_attrs(Some(&there), ino, node).await {
            tally.failed(&run.top.join(&node.rel), e);
        }
    }
    run.progress.finish();
    run.client.finish().await.map_err(|e| e.to_string())
}
