//! Readahead: a sequential reader's next blocks are fetched in the background, a window
//! ahead of it, so that it finds them already here instead of waiting a round trip at
//! every window's end; and a block being fetched is fetched once, however many readers
//! (the kernel sends a sequential reader's requests several at a time) want it.
//!
//! The state lives in each open file's [`super::file::FileData`] as a [`ReadAhead`];
//! the fetched blocks become the file's clean blocks.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};

use super::file::FileData;
use super::Fs;

/// Blocks fetched by one readahead request, and the least a sequential reader keeps
/// ahead of itself (fetched or in flight): one batch get of 16 blocks in flight while
/// it reads through up to 32.
pub(super) const READAHEAD_BLOCKS: u64 = 16;
/// A read that starts within this many blocks of where the reads before it ended
/// continues their run: the kernel's requests of one reader arrive out of order.
const NEAR_BLOCKS: u64 = 4;

/// One open file's sequential-read detection and its fetches in flight.
pub(super) struct ReadAhead {
    /// Where the furthest read of the current run ended.
    next_read: u64,
    /// Reads in a row that began near `next_read`; two make a sequential reader.
    streak: u32,
    /// Blocks below this one are fetched or being fetched for the current run.
    ahead_until: u64,
    /// Blocks being fetched, each with the fetch that fetches it.
    fetching: BTreeMap<u64, u64>,
    /// Woken whenever a fetch ends, for the readers that wait for its blocks.
    ended: Arc<Notify>,
}

/// A fetch in flight, from [`ReadAhead::begin`] to [`ReadAhead::end`].
pub(super) struct Fetch {
    id: u64,
    /// The file's generation when it began: blocks fetched across a change are dropped.
    pub(super) generation: u64,
    ended: Arc<Notify>,
}

/// Source of [`Fetch::id`] values.
static FETCH_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead {
            next_read: 0,
            // A read from the start of the file begins a run by itself.
            streak: 1,
            ahead_until: 0,
            fetching: BTreeMap::new(),
            ended: Arc::new(Notify::new()),
        }
    }
}

impl ReadAhead {
    /// Note a read of bytes `offset..end` (blocks of `block_size`); true when it
    /// continues a sequential run.
    pub(super) fn note_read(&mut self, offset: u64, end: u64, block_size: u64) -> bool {
        let near = NEAR_BLOCKS * block_size;
        if offset + near >= self.next_read && offset <= self.next_read + near {
            self.streak = self.streak.saturating_add(1);
            self.next_read = self.next_read.max(end);
        } else {
            self.streak = 0;
            self.next_read = end;
            self.ahead_until = 0;
        }
        self.streak >= 2
    }

    /// The blocks to fetch ahead of a sequential read whose last block is `last`, below
    /// `limit`: the next [`READAHEAD_BLOCKS`] once fewer than that lie ahead of it.
    pub(super) fn window(&mut self, last: u64, limit: u64) -> Range<u64> {
        let from = self.ahead_until.max(last + 1);
        if from - (last + 1) >= READAHEAD_BLOCKS || from >= limit {
            return 0..0;
        }
        self.ahead_until = (from + READAHEAD_BLOCKS).min(limit);
        from..self.ahead_until
    }

    /// Whether block `idx` is being fetched.
    pub(super) fn in_flight(&self, idx: u64) -> bool {
        self.fetching.contains_key(&idx)
    }

    /// Note that `indices` are being fetched, on behalf of a file at `generation`.
    pub(super) fn begin(&mut self, indices: &[u64], generation: u64) -> Fetch {
        let id = FETCH_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for idx in indices {
            self.fetching.insert(*idx, id);
        }
        Fetch {
            id,
            generation,
            ended: self.ended.clone(),
        }
    }

    /// Note that `fetch` ended, and wake the readers waiting for blocks in flight.
    pub(super) fn end(&mut self, fetch: &Fetch) {
        self.fetching.retain(|_, id| *id != fetch.id);
        fetch.ended.notify_waiters();
    }

    /// What to wait on for the fetches in flight now to end (register before letting
    /// the file go, so that an end in between is not missed).
    pub(super) fn ended(&self) -> Arc<Notify> {
        self.ended.clone()
    }
}

impl Fs {
    /// Fetch `indices` of an open file in the background, into its clean blocks.
    pub(super) fn read_ahead(
        &self,
        file: &Arc<Mutex<FileData>>,
        data: &mut FileData,
        indices: Vec<u64>,
    ) {
        let (fetch, stored, size) = data.begin_fetch(&indices);
        let (io, file) = (self.blocks(), file.clone());
        tokio::spawn(async move {
            let fetched = io.fetch(&stored, &indices, size).await;
            if let Err(e) = file.lock().await.end_fetch(fetch, fetched) {
                // The reader that reaches these blocks fetches them itself, and fails
                // if the store still does.
                tracing::debug!(ino = stored.ino, error = %e, "a readahead fetch failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 256 * 1024;

    #[test]
    fn a_reader_from_the_start_gets_a_window_then_one_batch_per_window() {
        let mut ahead = ReadAhead::default();
        assert!(ahead.note_read(0, 128 * 1024, BS));
        assert_eq!(ahead.window(0, 1024), 1..17);
        assert!(ahead.note_read(128 * 1024, BS, BS));
        assert_eq!(ahead.window(0, 1024), 0..0, "a whole window lies ahead");
        assert!(ahead.note_read(BS, BS + 128 * 1024, BS));
        assert_eq!(ahead.window(1, 1024), 17..33);
        for block in 2..17 {
            assert!(ahead.note_read(block * BS, (block + 1) * BS, BS));
            assert_eq!(ahead.window(block, 1024), 0..0);
        }
        assert!(ahead.note_read(17 * BS, 18 * BS, BS));
        assert_eq!(ahead.window(17, 1024), 33..49);
    }

    #[test]
    fn the_window_stops_at_the_limit() {
        let mut ahead = ReadAhead::default();
        assert!(ahead.note_read(0, BS, BS));
        assert_eq!(ahead.window(0, 5), 1..5);
        assert_eq!(ahead.window(1, 5), 0..0);
        assert_eq!(ReadAhead::default().window(0, 1), 0..0);
    }

    #[test]
    fn random_reads_are_not_sequential() {
        let mut ahead = ReadAhead::default();
        let offsets = [40, 3, 200, 77, 150, 9].map(|b| b * BS);
        for offset in offsets {
            assert!(!ahead.note_read(offset, offset + 4096, BS), "at {offset}");
        }
    }

    #[test]
    fn reads_arriving_out_of_order_stay_one_run() {
        let mut ahead = ReadAhead::default();
        for block in [0, 2, 1, 4, 3, 5] {
            assert!(ahead.note_read(block * BS, (block + 1) * BS, BS));
        }
    }

    #[test]
    fn a_fetch_ends_only_its_own_blocks() {
        let mut ahead = ReadAhead::default();
        let first = ahead.begin(&[1, 2], 7);
        let second = ahead.begin(&[2, 3], 7);
        ahead.end(&first);
        assert!(!ahead.in_flight(1));
        assert!(ahead.in_flight(2) && ahead.in_flight(3));
        ahead.end(&second);
        assert!(!ahead.in_flight(2) && !ahead.in_flight(3));
    }
}
