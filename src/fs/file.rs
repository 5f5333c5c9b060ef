//! open, read, write, flush, fsync and release of regular files, and the block
//! cleanup that truncation and deletion leave behind.
//!
//! The data of a file open on this client is held per inode ([`FileData`]), shared by
//! all its handles: writes land in whole-block buffers and go to the store on flush,
//! fsync and close. Once the buffers pass `dirty_limit`, their full blocks are written
//! behind, by a background task, while the writer fills new buffers ([`WriteBehind`]);
//! the inode records them at the next flush. A write never reads a block
//! it covers whole; a partial write reads the block once. Reads fetch every missing
//! block of the request (and a readahead window when reading sequentially) in one
//! batch get.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};

use super::blocks::{FetchedBlocks, PARALLEL_BLOCKS};
use super::deferred::DeferredCreate;
use super::held::AttrDelta;
use super::prefetch::{Fetch, ReadAhead};
use super::tx::Tx;
use super::{Caller, Fs, FsError, FsResult, Handle};
use crate::keys;
use crate::records::{Cleanup, FileKind, Inode, Timestamp};
use crate::store::{Condition, StoreError, WriteOp};

/// Clean blocks kept per open file.
const CLEAN_BLOCKS: usize = 64;
/// Closed files whose (mtime, size) is remembered for keep_cache.
const LAST_SEEN_LIMIT: usize = 100_000;
/// A flush of at most this many bytes writes its blocks in the transaction that records
/// the new size: one request for a small file (at twice the write units of plain puts,
/// which at this size is little).
const SMALL_FLUSH_BYTES: usize = 64 * 1024;

/// What getattr must show of an open file beyond its stored inode.
#[derive(Clone, Copy)]
struct PendingView {
    size: u64,
    mtime: Option<Timestamp>,
    held: Option<AttrDelta>,
}

/// The answer to open: the handle, and whether the kernel may keep its page cache.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    /// File handle for later calls.
    pub fh: u64,
    /// True when the file is unchanged since this client last had it open.
    pub keep_cache: bool,
}

/// The data of one file open on this client.
pub(super) struct FileData {
    /// The inode as last read from or written to the store.
    pub(super) stored: Inode,
    /// Current size, including unflushed writes.
    pub(super) size: u64,
    /// Set when unflushed writes changed the modification time.
    mtime: Option<Timestamp>,
    /// Attribute changes held until the next flush.
    held: Option<AttrDelta>,
    pub(super) dirty: BTreeMap<u64, Vec<u8>>,
    dirty_bytes: usize,
    /// Full blocks being written in the background, newer than the store's and older
    /// than `dirty`'s copy of the same block.
    pub(super) behind: Option<WriteBehind>,
    /// Block 0 went to the blocks table behind since the inode was last written: the
    /// next flush records that it is no longer inline.
    pub(super) block0_behind: bool,
    clean: BTreeMap<u64, Arc<Vec<u8>>>,
    reads: ReadAhead,
    /// Changes with every change of content or identity, never repeating across files,
    /// so a read that fetched without the lock knows whether what it fetched still fits.
    generation: u64,
    /// The create of this file, answered but not committed yet (see `deferred.rs`).
    pub(super) create: Option<DeferredCreate>,
    /// Another client took the name of this file before its deferred create was
    /// committed, by a call that could not tell the writer (the create settler, a
    /// lookup): the next flush reports it, once, as a write-back error is.
    pub(super) name_lost: bool,
}

/// Blocks handed to a background task at the dirty limit. One such upload runs per file
/// at a time: the next one, and every flush, waits for it first, so two puts of one
/// block are never in flight together and a file's buffers stay within twice
/// `dirty_limit`. Its blocks lie past the stored size (announced in the writers record
/// first) or overwrite stored ones; either way only the next flush's inode update
/// makes them part of the file's recorded state.
pub(super) struct WriteBehind {
    blocks: Arc<BTreeMap<u64, Vec<u8>>>,
    /// The blocks whose put failed, with why.
    task: tokio::task::JoinHandle<Vec<(u64, StoreError)>>,
}

/// What one flush writes in the transaction with the file's inode, taken out of the
/// file's buffers (see [`Fs::take_flush`]) and given back if the commit fails.
pub(super) struct FlushParts {
    size: u64,
    /// Block 0 changed since the inode was written: an inline item not rewritten goes.
    wrote_block0: bool,
    /// Block 0 of a file that fits inline.
    inline: Option<Vec<u8>>,
    blocks: BTreeMap<u64, Vec<u8>>,
    mtime: Option<Timestamp>,
    held: Option<AttrDelta>,
}

impl FlushParts {
    /// The commit failed: the blocks are dirty again (the times and attributes never
    /// left the file).
    pub(super) fn give_back(self, data: &mut FileData) {
        data.dirty.extend(self.blocks);
        data.dirty.extend(self.inline.map(|b| (0, b)));
        data.dirty_bytes = data.dirty.values().map(Vec::len).sum();
    }
}

/// Source of [`FileData::generation`] values.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub(super) struct FileHandle {
    ino: u64,
    append: bool,
    data: Arc<tokio::sync::Mutex<FileData>>,
}

struct OpenState {
    opens: usize,
    data: Arc<tokio::sync::Mutex<FileData>>,
    /// Size, times and attributes not yet in the store, for getattr.
    pending: Option<PendingView>,
}

/// The files open on this client, by inode.
#[derive(Default)]
pub(super) struct OpenFiles {
    open: Mutex<HashMap<u64, OpenState>>,
    /// Files this session recorded it may write blocks past the size of (see `gc.rs`).
    writers: Mutex<std::collections::HashSet<u64>>,
    /// (mtime, size) of each file when this client last closed it, for keep_cache.
    last_seen: Mutex<HashMap<u64, (Timestamp, u64)>>,
}

impl OpenFiles {
    /// How many handles of `ino` are open.
    fn opens(&self, ino: u64) -> usize {
        self.open.lock().unwrap().get(&ino).map_or(0, |s| s.opens)
    }

    /// Close one handle of `ino`; forget the file once none is left, unless `lingers`
    /// (a closed new file not committed yet, still to be found by inode). True if it
    /// was the last.
    fn close_one(&self, ino: u64, lingers: bool) -> bool {
        let mut open = self.open.lock().unwrap();
        let state = open.get_mut(&ino).expect("open file state");
        state.opens -= 1;
        let last = state.opens == 0;
        if last && !lingers {
            open.remove(&ino);
        }
        last
    }

    /// A closed new file is committed: forget it unless it was opened again.
    pub(super) fn forget_if_closed(&self, ino: u64) {
        let mut open = self.open.lock().unwrap();
        if open.get(&ino).is_some_and(|s| s.opens == 0) {
            open.remove(&ino);
        }
    }

    /// Note what a file looked like when this client closed it, for keep_cache.
    fn remember_closed(&self, inode: &Inode) {
        let mut seen = self.last_seen.lock().unwrap();
        // A memo, not a record: forgetting it only costs a page-cache refill.
        if seen.len() >= LAST_SEEN_LIMIT {
            seen.clear();
        }
        seen.insert(inode.ino, (inode.mtime, inode.size));
    }

    pub(super) fn is_open(&self, ino: u64) -> bool {
        self.open.lock().unwrap().contains_key(&ino)
    }

    /// Note that this session writes past the end of `ino`; false if it already had.
    pub(super) fn start_writing(&self, ino: u64) -> bool {
        self.writers.lock().unwrap().insert(ino)
    }

    /// Note that this session no longer writes past the end of `ino`; false if it did not.
    pub(super) fn stop_writing(&self, ino: u64) -> bool {
        self.writers.lock().unwrap().remove(&ino)
    }

    /// The files open on this client, for its session record.
    pub(super) fn open_inodes(&self) -> Vec<u64> {
        let mut inodes: Vec<u64> = self.open.lock().unwrap().keys().copied().collect();
        inodes.sort_unstable();
        inodes
    }

    /// Apply unflushed size and mtime to an inode about to be reported.
    pub(super) fn overlay(&self, inode: &mut Inode) {
        if let Some(state) = self.open.lock().unwrap().get(&inode.ino) {
            if let Some(pending) = state.pending {
                inode.size = pending.size;
                if let Some(mtime) = pending.mtime {
                    inode.mtime = mtime;
                }
                if let Some(held) = pending.held {
                    held.apply(inode);
                }
            }
        }
    }

    pub(super) fn data(&self, ino: u64) -> Option<Arc<tokio::sync::Mutex<FileData>>> {
        self.open.lock().unwrap().get(&ino).map(|s| s.data.clone())
    }

    pub(super) fn set_pending(&self, ino: u64, data: &FileData) {
        if let Some(state) = self.open.lock().unwrap().get_mut(&ino) {
            state.pending = data.has_unflushed().then_some(PendingView {
                size: data.size,
                mtime: data.mtime,
                held: data.held,
            });
        }
    }
}

impl FileData {
    fn new(inode: Inode) -> Self {
        FileData {
            size: inode.size,
            stored: inode,
            mtime: None,
            held: None,
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            behind: None,
            block0_behind: false,
            clean: BTreeMap::new(),
            reads: ReadAhead::default(),
            generation: next_generation(),
            create: None,
            name_lost: false,
        }
    }

    /// Forget buffered data past `size` after a truncation.
    pub(super) fn truncate(&mut self, size: u64, block_size: u64) {
        self.generation = next_generation();
        self.size = size;
        let keep_blocks = size.div_ceil(block_size);
        self.dirty.retain(|idx, _| *idx < keep_blocks);
        self.clean.clear();
        if let Some((idx, buf)) = self.dirty.iter_mut().next_back() {
            buf.truncate((size - idx * block_size).min(buf.len() as u64) as usize);
        }
        self.dirty_bytes = self.dirty.values().map(Vec::len).sum();
    }

    pub(super) fn has_unflushed(&self) -> bool {
        self.create.is_some()
            || !self.dirty.is_empty()
            || self.behind.is_some()
            || self.mtime.is_some()
            || self.held.is_some()
    }

    /// The copy of block `idx` being written behind, if any.
    fn behind(&self, idx: u64) -> Option<&Vec<u8>> {
        self.behind.as_ref().and_then(|b| b.blocks.get(&idx))
    }

    /// Whether block `idx` must come from the store: it is neither buffered, nor being
    /// written behind, nor kept clean.
    fn is_missing(&self, idx: u64) -> bool {
        !self.dirty.contains_key(&idx)
            && self.behind(idx).is_none()
            && !self.clean.contains_key(&idx)
    }

    /// Note that `indices` are being fetched; returns the fetch, with the inode and
    /// size to fetch them of.
    pub(super) fn begin_fetch(&mut self, indices: &[u64]) -> (Fetch, Inode, u64) {
        let fetch = self.reads.begin(indices, self.generation);
        (fetch, self.stored.clone(), self.size)
    }

    /// Take what `fetch` brought: its blocks become clean ones unless the file changed
    /// since it began (then `Ok(None)`: what it fetched may be older than the change).
    pub(super) fn end_fetch(
        &mut self,
        fetch: Fetch,
        fetched: FsResult<FetchedBlocks>,
    ) -> FsResult<Option<FetchedBlocks>> {
        self.reads.end(&fetch);
        let fetched = fetched?;
        if fetch.generation != self.generation {
            return Ok(None);
        }
        for (idx, block) in &fetched {
            self.keep_clean(*idx, block.clone());
        }
        Ok(Some(fetched))
    }

    /// Keep a block as it is stored, for later reads and partial writes; past
    /// [`CLEAN_BLOCKS`] the lowest-numbered one goes (sequential readers and writers
    /// are done with it).
    fn keep_clean(&mut self, idx: u64, block: Vec<u8>) {
        if self.clean.len() >= CLEAN_BLOCKS && !self.clean.contains_key(&idx) {
            self.clean.pop_first();
        }
        self.clean.insert(idx, Arc::new(block));
    }

    /// The file as this client sees it: the stored inode with what is not flushed yet.
    pub(super) fn view(&self) -> Inode {
        let mut inode = self.stored.clone();
        inode.size = self.size;
        inode.mtime = self.mtime.unwrap_or(inode.mtime);
        if let Some(held) = self.held {
            held.apply(&mut inode);
        }
        inode
    }

    /// Hold `delta` (a setattr's change) until the next flush.
    pub(super) fn hold_attrs(&mut self, delta: AttrDelta) {
        self.held = Some(self.held.unwrap_or_default().then(delta));
    }

    pub(super) fn set_stored(&mut self, inode: Inode) {
        self.generation = next_generation();
        self.stored = inode;
    }
}

impl Fs {
    fn file_handle(&self, fh: u64) -> FsResult<(u64, bool, Arc<tokio::sync::Mutex<FileData>>)> {
        match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(h)) => Ok((h.ino, h.append, h.data.clone())),
            _ => Err(FsError::BadHandle),
        }
    }

    /// Open a file. The inode is read fresh from the store (close-to-open consistency),
    /// with a small file's data in the same request.
    pub async fn open(&self, _caller: Caller, ino: u64, flags: i32) -> FsResult<Opened> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.check_writable()?;
        }
        self.settle_create(ino).await?;
        let (inode, inline) = self.load_for_open(ino).await?;
        self.open_inode(inode, inline, flags).await
    }

    /// Open `inode`, as just read from (or written to) the store, with its inline data.
    pub(super) async fn open_inode(
        &self,
        inode: Inode,
        inline: Option<Vec<u8>>,
        flags: i32,
    ) -> FsResult<Opened> {
        let ino = inode.ino;
        match inode.kind {
            FileKind::Dir => return Err(FsError::IsDir),
            FileKind::File => {}
            _ => return Err(FsError::Unsupported),
        }
        let keep_cache =
            self.files.last_seen.lock().unwrap().get(&ino) == Some(&(inode.mtime, inode.size));
        let data = {
            let mut open = self.files.open.lock().unwrap();
            let state = open.entry(ino).or_insert_with(|| OpenState {
                opens: 0,
                data: Arc::new(tokio::sync::Mutex::new(FileData::new(inode.clone()))),
                pending: None,
            });
            state.opens += 1;
            state.data.clone()
        };
        {
            // Another handle of this client may hold older data: take the fresh inode
            // unless that handle has writes of its own still to flush.
            let mut data = data.lock().await;
            if !data.has_unflushed() && data.stored != inode {
                *data = FileData::new(inode);
            }
            if let Some(block) = inline.filter(|_| !data.dirty.contains_key(&0)) {
                data.keep_clean(0, block);
            }
        }
        let fh = self.new_handle(Handle::File(FileHandle {
            ino,
            append: flags & libc::O_APPEND != 0,
            data,
        }));
        Ok(Opened { fh, keep_cache })
    }

    /// Read up to `size` bytes at `offset`. Missing blocks are fetched without holding
    /// the file, so other readers and writers of it go on meanwhile; blocks another
    /// read is fetching are waited for, not fetched twice; a sequential reader's next
    /// blocks are fetched ahead (see `prefetch.rs`). If the file changed during a fetch,
    /// the read starts over rather than use what may be older than the change.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (_, _, file) = self.file_handle(fh)?;
        let bs = self.format.block_size;
        let mut data = file.lock().await;
        let end = (offset + size as u64).min(data.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut ahead: Vec<u64> = if data.reads.note_read(offset, end, bs) {
            let limit = data.stored.size.min(data.size).div_ceil(bs);
            let window = data.reads.window((end - 1) / bs, limit);
            window
                .filter(|i| data.is_missing(*i) && !data.reads.in_flight(*i))
                .collect()
        } else {
            Vec::new()
        };
        let mut fetched = BTreeMap::new();
        loop {
            // Again after every wait: a truncation meanwhile moves the end.
            let end = (offset + size as u64).min(data.size);
            if offset >= end {
                return Ok(Vec::new());
            }
            let (first, last) = (offset / bs, (end - 1) / bs);
            let (waiting, mut mine): (Vec<u64>, Vec<u64>) = (first..=last)
                .filter(|i| !fetched.contains_key(i) && data.is_missing(*i))
                .partition(|i| data.reads.in_flight(*i));
            // A read that waits for the store anyway brings the window along in the
            // same request; one that has its blocks lets the window come behind it.
            if mine.is_empty() && !ahead.is_empty() {
                self.read_ahead(&file, &mut data, std::mem::take(&mut ahead));
            }
            mine.append(&mut ahead);
            if !mine.is_empty() {
                let (fetch, stored, size_now) = data.begin_fetch(&mine);
                drop(data);
                let result = self.fetch_blocks(&stored, &mine, size_now).await;
                data = file.lock().await;
                match data.end_fetch(fetch, result)? {
                    Some(blocks) => fetched.extend(blocks),
                    None => fetched.clear(),
                }
                continue;
            }
            if !waiting.is_empty() {
                let ended = data.reads.ended();
                let wait = ended.notified();
                let seen = data.generation;
                drop(data);
                wait.await;
                data = file.lock().await;
                if data.generation != seen {
                    fetched.clear();
                }
                continue;
            }
            let mut out = vec![0u8; (end - offset) as usize];
            for idx in first..=last {
                let block = data
                    .dirty
                    .get(&idx)
                    .or_else(|| fetched.get(&idx))
                    .or_else(|| data.behind(idx))
                    .map(Vec::as_slice)
                    .or_else(|| data.clean.get(&idx).map(|b| b.as_slice()));
                let Some(block) = block else { continue };
                let block_start = idx * bs;
                let from = offset.max(block_start);
                let to = end.min(block_start + block.len() as u64);
                if from < to {
                    out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                        &block[(from - block_start) as usize..(to - block_start) as usize],
                    );
                }
            }
            return Ok(out);
        }
    }

    /// Write `buf` at `offset` (at the end of the file for O_APPEND handles).
    pub async fn write(&self, fh: u64, offset: u64, buf: &[u8]) -> FsResult<u32> {
        self.check_writable()?;
        let (ino, append, data) = self.file_handle(fh)?;
        let mut data = data.lock().await;
        let offset = if append { data.size } else { offset };
        let end = offset + buf.len() as u64;
        let bs = self.format.block_size;
        if buf.is_empty() {
            return Ok(0);
        }
        for idx in offset / bs..=(end - 1) / bs {
            let block_start = idx * bs;
            let from = (offset.max(block_start) - block_start) as usize;
            let to = (end.min(block_start + bs) - block_start) as usize;
            if !data.dirty.contains_key(&idx) {
                let whole = from == 0 && to as u64 == bs;
                let base = if whole || block_start >= data.size {
                    Vec::new()
                } else if let Some(behind) = data.behind(idx) {
                    behind.clone()
                } else if let Some(clean) = data.clean.get(&idx) {
                    clean.as_ref().clone()
                } else {
                    let (stored, size) = (data.stored.clone(), data.size);
                    self.fetch_blocks(&stored, &[idx], size)
                        .await?
                        .pop()
                        .map(|(_, b)| b)
                        .unwrap_or_default()
                };
                data.dirty_bytes += base.len();
                data.dirty.insert(idx, base);
            }
            let block = data.dirty.get_mut(&idx).expect("inserted above");
            let grown = to.saturating_sub(block.len());
            if grown > 0 {
                block.resize(to, 0);
            }
            block[from..to].copy_from_slice(
                &buf[(block_start + from as u64 - offset) as usize
                    ..(block_start + to as u64 - offset) as usize],
            );
            data.dirty_bytes += grown;
            data.clean.remove(&idx);
        }
        data.size = data.size.max(end);
        data.generation = next_generation();
        data.mtime = Some(Timestamp::now());
        data.held = data.held.map(AttrDelta::without_times);
        self.files.set_pending(ino, &data);
        if data.dirty_bytes > self.config.dirty_limit {
            self.write_behind(&mut data).await?;
        }
        Ok(buf.len() as u32)
    }

    /// Hand the full dirty blocks to a background upload (see [`WriteBehind`]), once
    /// the one before it has ended.
    async fn write_behind(&self, data: &mut FileData) -> FsResult<()> {
        self.finish_write_behind(data).await;
        self.commit_create(data).await?;
        let ino = data.stored.ino;
        let bs = self.format.block_size;
        let full: Vec<u64> = data
            .dirty
            .iter()
            .filter(|(_, block)| block.len() as u64 == bs)
            .map(|(idx, _)| *idx)
            .collect();
        if full.is_empty() {
            return self.flush_data(data).await;
        }
        let stored = &data.stored;
        if full
            .iter()
            .any(|idx| idx * bs >= stored.size || (*idx == 0 && stored.inline))
        {
            self.writing_past_end(ino).await?;
        }
        let blocks: BTreeMap<u64, Vec<u8>> = full
            .iter()
            .filter_map(|idx| data.dirty.remove_entry(idx))
            .collect();
        data.dirty_bytes = data.dirty.values().map(Vec::len).sum();
        data.block0_behind |= blocks.contains_key(&0);
        let blocks = Arc::new(blocks);
        let io = self.blocks();
        let task = tokio::spawn({
            let blocks = blocks.clone();
            async move {
                let indices: Vec<u64> = blocks.keys().copied().collect();
                let mut puts = stream::iter(indices.into_iter().map(|idx| {
                    let (io, blocks) = (io.clone(), blocks.clone());
                    async move { (idx, io.put(ino, idx, &blocks[&idx]).await) }
                }))
                .buffer_unordered(PARALLEL_BLOCKS);
                let mut failed = Vec::new();
                while let Some((idx, result)) = puts.next().await {
                    if let Err(e) = result {
                        failed.push((idx, e));
                    }
                }
                failed
            }
        });
        data.behind = Some(WriteBehind { blocks, task });
        Ok(())
    }

    /// Wait for the background upload of `data`, if one runs. Its blocks become clean
    /// ones; a block whose put failed goes back to the dirty buffers (unless written
    /// again since), for the flush to write, or fail on, again.
    async fn finish_write_behind(&self, data: &mut FileData) {
        let Some(behind) = data.behind.take() else {
            return;
        };
        let failed: HashMap<u64, StoreError> = match behind.task.await {
            Ok(failures) => failures.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "a background block upload did not finish");
                behind
                    .blocks
                    .keys()
                    .map(|idx| (*idx, StoreError::fatal(e.to_string())))
                    .collect()
            }
        };
        let blocks = Arc::try_unwrap(behind.blocks).unwrap_or_else(|shared| (*shared).clone());
        for (idx, block) in blocks {
            if data.dirty.contains_key(&idx) {
                continue;
            }
            if let Some(e) = failed.get(&idx) {
                tracing::debug!(ino = data.stored.ino, idx, error = %e, "a block written behind failed; the flush writes it again");
                data.dirty_bytes += block.len();
                data.dirty.insert(idx, block);
            } else {
                data.keep_clean(idx, block);
            }
        }
    }

    /// Write buffered blocks, then the inode's new size, mtime and held attributes. A
    /// small flush goes in one transaction with the inode.
    pub(super) async fn flush_data(&self, data: &mut FileData) -> FsResult<()> {
        if data.name_lost {
            self.finish_write_behind(data).await;
            return Err(self.drop_unflushed(data, FsError::NameLost).await);
        }
        if !data.has_unflushed() {
            return Ok(());
        }
        self.finish_write_behind(data).await;
        let ino = data.stored.ino;
        let (parts, dirty) = self.take_flush(data);
        let stored = &data.stored;
        let bs = self.format.block_size;
        let announce = dirty
            .keys()
            .any(|idx| idx * bs >= stored.size || (*idx == 0 && stored.inline));
        // Blocks written apart from the inode need it to exist: a deferred create goes
        // first. Any other block past the end is announced in the writers record first
        // (`gc.rs`).
        let prepared = match data.create.is_some() && !dirty.is_empty() {
            true => self.commit_create(data).await,
            false => Ok(()),
        };
        let prepared = match prepared {
            Ok(()) if announce => self.writing_past_end(ino).await,
            other => other,
        };
        if let Err(e) = prepared {
            data.dirty.extend(dirty);
            parts.give_back(data);
            if data.name_lost {
                return Err(self.drop_unflushed(data, e).await);
            }
            return Err(e);
        }
        let written = stream::iter(dirty.into_iter().map(|(idx, block)| async move {
            let result = self.store.write(self.block_put(ino, idx, &block)).await;
            (idx, block, result)
        }))
        .buffer_unordered(PARALLEL_BLOCKS)
        .collect::<Vec<_>>()
        .await;
        let mut failure = None;
        for (idx, block, result) in written {
            match result {
                Ok(()) => data.keep_clean(idx, block),
                Err(e) => {
                    // Keep it dirty: a later flush tries again.
                    data.dirty.insert(idx, block);
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            parts.give_back(data);
            return Err(e.into());
        }
        // Changes held while the file had nothing to flush are older than its writes.
        let taken = self.held.take(ino).await;
        let earlier = taken.delta();
        let first = data.stored.clone();
        let create = data.create.clone();
        let (parts_ref, create_ref) = (&parts, &create);
        let updated = self
            .optimistic(|fresh| {
                let first = first.clone();
                async move {
                    // A file not created yet is as this client made it.
                    let inode = if fresh && create_ref.is_none() {
                        self.load_inode(ino, true).await?
                    } else {
                        first
                    };
                    let mut tx = Tx::new();
                    if let Some(create) = create_ref {
                        create.add_to(&mut tx, &inode);
                    }
                    self.add_flush(&mut tx, &inode, parts_ref, earlier);
                    let written = self.commit_with_create(tx, create_ref.as_ref()).await?;
                    Ok(written.get(&ino).cloned().expect("updated inode"))
                }
            })
            .await;
        if create.is_some() && matches!(updated, Ok(_) | Err(FsError::NameLost)) {
            self.create_done(data, updated.is_ok());
        }
        let updated = match updated {
            Err(e @ (FsError::Stale | FsError::NameLost)) => {
                return Err(self.drop_unflushed(data, e).await);
            }
            Err(e) => {
                parts.give_back(data);
                taken.give_back();
                return Err(e);
            }
            Ok(updated) => updated,
        };
        drop(taken);
        self.flushed(data, parts, updated);
        Ok(())
    }

    /// The file is gone from the store (another client deleted it, or took the name of
    /// its deferred create): drop its unflushed writes, take back the blocks written
    /// for it rather than leak them, and return `error` for the flush to report.
    async fn drop_unflushed(&self, data: &mut FileData, error: FsError) -> FsError {
        data.name_lost = false;
        self.finish_cleanup(Cleanup {
            ino: data.stored.ino,
            keep: 0,
            stored: data.size,
            session: None,
        })
        .await;
        data.dirty.clear();
        data.dirty_bytes = 0;
        data.mtime = None;
        data.held = None;
        error
    }

    /// Take what a flush of `data` writes out of its buffers: what goes in the
    /// transaction with the inode, and the blocks to write apart from it first.
    pub(super) fn take_flush(&self, data: &mut FileData) -> (FlushParts, BTreeMap<u64, Vec<u8>>) {
        let bs = self.format.block_size;
        let size = data.size;
        let with_inode = self.flush_goes_with_inode(data);
        data.generation = next_generation();
        let mut dirty = std::mem::take(&mut data.dirty);
        for (idx, block) in dirty.iter_mut() {
            block.truncate(size.saturating_sub(idx * bs).min(bs) as usize);
        }
        // Block 0 of a file that fits inline goes to the inline item; if it was inline
        // and is rewritten into the blocks table, the inline item goes away.
        let wrote_block0 = dirty.contains_key(&0) || data.block0_behind;
        let inline = if self.fits_inline(size) {
            dirty.remove(&0)
        } else {
            None
        };
        let blocks = if with_inode {
            std::mem::take(&mut dirty)
        } else {
            BTreeMap::new()
        };
        let parts = FlushParts {
            size,
            wrote_block0,
            inline,
            blocks,
            mtime: data.mtime,
            held: data.held,
        };
        (parts, dirty)
    }

    /// Whether the unflushed blocks of `data` that go to the blocks table (all but an
    /// inline block 0) go in the transaction that records its new size.
    pub(super) fn flush_goes_with_inode(&self, data: &FileData) -> bool {
        let bs = self.format.block_size;
        let (size, stored) = (data.size, &data.stored);
        let lens: Vec<(u64, usize)> = data
            .dirty
            .iter()
            .filter(|(idx, _)| !(**idx == 0 && self.fits_inline(size)))
            .map(|(idx, block)| {
                let len = size.saturating_sub(idx * bs).min(block.len() as u64);
                (*idx, len as usize)
            })
            .collect();
        // Blocks that land where the stored inode says nothing is would be garbage if
        // this client died before recording the new size. One such block goes in the
        // transaction that records the size too: a new file of up to a block then costs
        // its create and one request, where a writers record, a put and its removal
        // would add three, for at most a block's worth of write units more (a
        // transaction bills twice).
        let past_end = |idx: u64| idx * bs >= stored.size || (idx == 0 && stored.inline);
        lens.iter().map(|(_, len)| len).sum::<usize>() <= SMALL_FLUSH_BYTES
            || (lens.len() == 1 && lens.iter().all(|(idx, _)| past_end(*idx)))
    }

    /// Add to `tx` the writes of `parts` and the update of `inode` (as read) they make,
    /// after the attribute changes `earlier`.
    pub(super) fn add_flush(
        &self,
        tx: &mut Tx,
        inode: &Inode,
        parts: &FlushParts,
        earlier: Option<AttrDelta>,
    ) {
        let ino = inode.ino;
        for (idx, block) in &parts.blocks {
            tx.write(self.block_put(ino, *idx, block));
        }
        let inline = match &parts.inline {
            Some(block) => {
                tx.write(self.inline_put(ino, block));
                if !inode.inline && inode.size > 0 {
                    tx.write(self.block_delete(ino, 0));
                }
                true
            }
            None if inode.inline && parts.wrote_block0 => {
                tx.write(WriteOp::Delete {
                    key: keys::inline_key(ino),
                    cond: Condition::None,
                });
                false
            }
            None => inode.inline,
        };
        let now = tx.now();
        let new = tx.update(inode);
        if let Some(earlier) = earlier {
            earlier.apply(new);
        }
        new.inline = inline;
        new.size = parts.size;
        new.mtime = parts.mtime.unwrap_or(new.mtime);
        new.ctime = now;
        if let Some(held) = parts.held {
            held.apply(new);
        }
    }

    /// `parts` of `data` are committed, and the inode is now stored as `updated`.
    pub(super) fn flushed(&self, data: &mut FileData, parts: FlushParts, updated: Inode) {
        for (idx, block) in parts.blocks.into_iter().chain(parts.inline.map(|b| (0, b))) {
            data.keep_clean(idx, block);
        }
        data.dirty_bytes = data.dirty.values().map(Vec::len).sum();
        data.block0_behind = false;
        data.stored = updated;
        data.mtime = None;
        data.held = None;
        self.files.set_pending(data.stored.ino, data);
    }

    /// Write back this client's buffered writes of `ino`, if it has the file open, and
    /// the attribute changes it holds.
    pub(super) async fn flush_open_file(&self, ino: u64) -> FsResult<()> {
        if let Some(data) = self.files.data(ino) {
            self.flush_data(&mut *data.lock().await).await?;
        }
        self.write_held(ino).await
    }

    /// Forget what this client cached of `ino` (attributes and clean blocks), so that
    /// the next read sees what other clients wrote: taking a lock makes the writes of
    /// its previous holder visible, as on NFS.
    pub(super) async fn revalidate_open_file(&self, ino: u64) -> FsResult<()> {
        self.forget_inode(ino);
        if let Some(data) = self.files.data(ino) {
            let mut data = data.lock().await;
            if !data.has_unflushed() {
                *data = FileData::new(self.load_inode(ino, true).await?);
            }
        }
        Ok(())
    }

    /// Flush the file's buffered writes (close of one descriptor).
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let (ino, _, data) = self.file_handle(fh)?;
        let mut data = data.lock().await;
        if self.files.opens(ino) == 1 && self.may_close_later(&data) {
            self.new_files.mark_closed(ino);
            return Ok(());
        }
        self.flush_data(&mut data).await
    }

    /// Make the file's writes and attribute changes durable in the store.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (ino, _, _) = self.file_handle(fh)?;
        self.flush_open_file(ino).await?;
        self.sync().await
    }

    /// Make a directory's held attribute changes durable, and its entries.
    pub async fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        self.write_held(ino).await?;
        self.sync().await
    }

    /// Close a handle. (A file with no name left is deleted by garbage collection
    /// once no client holds it open: see `gc.rs`.)
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = self.handles.lock().unwrap().remove(&fh);
        let Some(Handle::File(handle)) = handle else {
            return Err(FsError::BadHandle);
        };
        let ino = handle.ino;
        let (flushed, last) = {
            let mut data = handle.data.lock().await;
            let lingers = self.files.opens(ino) == 1
                && (self.new_files.is_closed_unborn(ino) || self.may_close_later(&data));
            let flushed = if lingers {
                self.new_files.mark_closed(ino);
                Ok(())
            } else {
                let flushed = self.flush_data(&mut data).await;
                self.files.remember_closed(&data.stored);
                flushed
            };
            // Under the file's lock, so that the commit of a lingering file, which
            // forgets it if no handle is left, sees this close.
            let last = self.files.close_one(ino, lingers);
            if last && !lingers && data.create.is_some() {
                // A create the flush could not commit never will be.
                self.create_done(&mut data, false);
            }
            (flushed, last && !lingers)
        };
        if last && flushed.is_ok() {
            self.done_writing_past_end(ino).await;
        }
        flushed
    }
}
