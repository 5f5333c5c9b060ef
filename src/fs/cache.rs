//! The metadata cache: inode attributes and directory entries this client read or
//! wrote, each trusted for its TTL (other clients' changes become visible within it),
//! and complete listings of directories, so that a name missing from a fresh listing
//! is known to be absent without a request (the create's condition still guarantees
//! exclusivity across clients).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::records::{Entry, Inode, Timestamp};

/// Records a cache may hold before expired ones are dropped.
const CACHE_LIMIT: usize = 200_000;
/// How long a directory stays contended after a transaction on it collided.
const CONTENDED_FOR: Duration = Duration::from_secs(10);

/// (directory inode, name bytes).
type EntryKey = (u64, Vec<u8>);

struct Cached<T> {
    value: T,
    at: Instant,
}

impl<T> Cached<T> {
    fn new(value: T) -> Self {
        Cached {
            value,
            at: Instant::now(),
        }
    }
}

/// What the cache knows of one name in one directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// The name points at this entry.
    Present(Entry),
    /// A fresh complete listing of the directory does not have it.
    Absent,
    /// Nothing fresh: ask the store.
    Unknown,
}

/// Cached inodes, entries and complete directory listings.
pub(super) struct MetaCache {
    attr_ttl: Duration,
    entry_ttl: Duration,
    inodes: Mutex<HashMap<u64, Cached<Inode>>>,
    entries: Mutex<HashMap<EntryKey, Cached<Entry>>>,
    listings: Mutex<HashMap<u64, Cached<Listing>>>,
    /// Directories where this client's transactions recently collided with others'.
    contended: Mutex<HashMap<u64, Instant>>,
}

/// A complete listing of one directory.
struct Listing {
    entries: HashMap<Vec<u8>, Entry>,
    /// The directory's version read before the listing, kept in step with this client's
    /// own changes: while it is still the stored version, nothing changed the listing.
    ver: Option<u64>,
}

/// Keep a cache bounded: past [`CACHE_LIMIT`], drop what expired, and everything if
/// that is not enough.
fn prune<K, V>(cache: &mut HashMap<K, Cached<V>>, ttl: Duration) {
    if cache.len() > CACHE_LIMIT {
        cache.retain(|_, c| c.at.elapsed() < ttl);
        if cache.len() > CACHE_LIMIT {
            cache.clear();
        }
    }
}

impl MetaCache {
    pub(super) fn new(attr_ttl: Duration, entry_ttl: Duration) -> Self {
        MetaCache {
            attr_ttl,
            entry_ttl,
            inodes: Mutex::default(),
            entries: Mutex::default(),
            listings: Mutex::default(),
            contended: Mutex::default(),
        }
    }

    /// The inode, if cached within `attr_ttl`.
    pub(super) fn inode(&self, ino: u64) -> Option<Inode> {
        let cache = self.inodes.lock().unwrap();
        cache
            .get(&ino)
            .filter(|c| c.at.elapsed() < self.attr_ttl)
            .map(|c| c.value.clone())
    }

    /// The inode as last seen, however long ago.
    pub(super) fn inode_any_age(&self, ino: u64) -> Option<Inode> {
        self.inodes
            .lock()
            .unwrap()
            .get(&ino)
            .map(|c| c.value.clone())
    }

    /// Remember an inode as just read or written.
    pub(super) fn put_inode(&self, inode: &Inode) {
        let mut cache = self.inodes.lock().unwrap();
        prune(&mut cache, self.attr_ttl);
        cache.insert(inode.ino, Cached::new(inode.clone()));
    }

    /// Forget an inode (deleted, or changed behind our back).
    pub(super) fn forget_inode(&self, ino: u64) {
        self.inodes.lock().unwrap().remove(&ino);
    }

    /// A directory this client changed with an atomic update (times, link count, version
    /// bump): keep the cached copy in step instead of reading it back.
    pub(super) fn touch_dir(&self, ino: u64, now: Timestamp, nlink_delta: i64) {
        if let Some(c) = self.inodes.lock().unwrap().get_mut(&ino) {
            c.value.touch(now, nlink_delta);
            c.value.ver += 1;
        }
        if let Some(listing) = self.listings.lock().unwrap().get_mut(&ino) {
            listing.value.ver = listing.value.ver.map(|v| v + 1);
        }
    }

    /// What is known of `dir/name`.
    pub(super) fn entry(&self, dir: u64, name: &[u8]) -> Known {
        if let Some(listing) = self.listings.lock().unwrap().get(&dir) {
            if listing.at.elapsed() < self.entry_ttl {
                return match listing.value.entries.get(name) {
                    Some(entry) => Known::Present(*entry),
                    None => Known::Absent,
                };
            }
        }
        let cache = self.entries.lock().unwrap();
        match cache.get(&(dir, name.to_vec())) {
            Some(c) if c.at.elapsed() < self.entry_ttl => Known::Present(c.value),
            _ => Known::Unknown,
        }
    }

    /// Remember `dir/name` as just read or written (`None`: it does not exist).
    pub(super) fn put_entry(&self, dir: u64, name: &[u8], entry: Option<Entry>) {
        if let Some(listing) = self.listings.lock().unwrap().get_mut(&dir) {
            match entry {
                Some(entry) => listing.value.entries.insert(name.to_vec(), entry),
                None => listing.value.entries.remove(name),
            };
        }
        let mut cache = self.entries.lock().unwrap();
        prune(&mut cache, self.entry_ttl);
        match entry {
            Some(entry) => cache.insert((dir, name.to_vec()), Cached::new(entry)),
            None => cache.remove(&(dir, name.to_vec())),
        };
    }

    /// Remember the complete listing of `dir`, as just read (or as just created: empty);
    /// `ver` is the directory's version if it was read before the listing.
    pub(super) fn put_listing(
        &self,
        dir: u64,
        entries: impl IntoIterator<Item = (Vec<u8>, Entry)>,
        ver: Option<u64>,
    ) {
        let mut listings = self.listings.lock().unwrap();
        prune(&mut listings, self.entry_ttl);
        let listing = Listing {
            entries: entries.into_iter().collect(),
            ver,
        };
        listings.insert(dir, Cached::new(listing));
    }

    /// The complete listing of `dir`, if this client holds one from within `entry_ttl`.
    pub(super) fn fresh_listing(&self, dir: u64) -> Option<Vec<(Vec<u8>, Entry)>> {
        let listings = self.listings.lock().unwrap();
        let listing = listings.get(&dir)?;
        (listing.at.elapsed() < self.entry_ttl).then(|| {
            listing
                .value
                .entries
                .iter()
                .map(|(name, entry)| (name.clone(), *entry))
                .collect()
        })
    }

    /// How many entries the last listing of `dir` had, fresh or not.
    pub(super) fn listing_len(&self, dir: u64) -> Option<usize> {
        self.listings
            .lock()
            .unwrap()
            .get(&dir)
            .map(|l| l.value.entries.len())
    }

    /// The version at which `dir` is known to be empty: its listing is fresh, empty, and
    /// tied to a version (a delete conditioned on that version cannot remove entries).
    pub(super) fn empty_at(&self, dir: u64) -> Option<u64> {
        let listings = self.listings.lock().unwrap();
        let listing = listings.get(&dir)?;
        (listing.at.elapsed() < self.entry_ttl && listing.value.entries.is_empty())
            .then_some(listing.value.ver)
            .flatten()
    }

    /// Note that a transaction on directory `dir` collided with another client's.
    pub(super) fn mark_contended(&self, dir: u64) {
        let mut contended = self.contended.lock().unwrap();
        contended.retain(|_, at| at.elapsed() < CONTENDED_FOR);
        contended.insert(dir, Instant::now());
    }

    /// Whether other clients are busy in `dir` (a collision within [`CONTENDED_FOR`]).
    pub(super) fn is_contended(&self, dir: u64) -> bool {
        self.contended
            .lock()
            .unwrap()
            .get(&dir)
            .is_some_and(|at| at.elapsed() < CONTENDED_FOR)
    }

    /// Forget the listing of a directory that went away.
    pub(super) fn forget_listing(&self, dir: u64) {
        self.listings.lock().unwrap().remove(&dir);
    }
}
