//! The metadata cache: inode attributes and directory entries this client read or
//! wrote, each trusted for its TTL (other clients' changes become visible within it),
//! and complete listings of directories, so that a name missing from a fresh listing
//! is known to be absent without a request (the create's condition still guarantees
//! exclusivity across clients).
//!
//! Inodes read together (a listing's batch get) expire together, and are asked for
//! again together: `find | xargs cat` or `cp -a` reaches the files of a directory one
//! by one after their attributes expired, so the first miss among them re-reads its
//! expired companions in the same batch get ([`MetaCache::expired_companions`]), and
//! the files that follow hit the cache, as an NFS client's readdirplus does. A walk
//! reaches the directories it listed in the order it listed them, so the batch is
//! filled up with the expired inodes of the listings read next: one re-read serves
//! several small directories.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::records::{Entry, Inode, Timestamp};

/// Records a cache may hold before expired ones are dropped.
const CACHE_LIMIT: usize = 200_000;
/// How long a directory stays contended after a transaction on it collided.
const CONTENDED_FOR: Duration = Duration::from_secs(10);
/// Most inodes one read brings (DynamoDB's batch get limit).
pub(super) const INODE_BATCH_LIMIT: usize = 100;
/// Cohorts remembered in the order they were read, to fill a re-read up with the ones
/// read after it: enough for [`INODE_BATCH_LIMIT`] inodes of one-file directories.
const RECENT_COHORTS: usize = INODE_BATCH_LIMIT;

/// The inodes read by one batch get.
type Cohort = Arc<[u64]>;

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

impl Known {
    /// The answer for the name, if the cache has one: the entry, or `None` for absent.
    pub(super) fn answer(self) -> Option<Option<Entry>> {
        match self {
            Known::Present(entry) => Some(Some(entry)),
            Known::Absent => Some(None),
            Known::Unknown => None,
        }
    }
}

/// Cached inodes, entries and complete directory listings.
pub(super) struct MetaCache {
    attr_ttl: Duration,
    entry_ttl: Duration,
    inodes: Mutex<HashMap<u64, Cached<InodeCopy>>>,
    /// The last [`RECENT_COHORTS`] cohorts, oldest first; locked after `inodes`.
    recent_cohorts: Mutex<VecDeque<Cohort>>,
    entries: Mutex<HashMap<EntryKey, Cached<Entry>>>,
    listings: Mutex<HashMap<u64, Cached<Listing>>>,
    /// Directories where this client's transactions recently collided with others'.
    contended: Mutex<HashMap<u64, Instant>>,
}

/// A cached inode, and the cohort it was read in, if it was read in a batch.
struct InodeCopy {
    inode: Inode,
    cohort: Option<Cohort>,
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
            recent_cohorts: Mutex::default(),
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
            .map(|c| c.value.inode.clone())
    }

    /// The inode as last seen, however long ago.
    pub(super) fn inode_any_age(&self, ino: u64) -> Option<Inode> {
        self.inodes
            .lock()
            .unwrap()
            .get(&ino)
            .map(|c| c.value.inode.clone())
    }

    /// Remember an inode as just read or written.
    pub(super) fn put_inode(&self, inode: &Inode) {
        let mut cache = self.inodes.lock().unwrap();
        prune(&mut cache, self.attr_ttl);
        let copy = InodeCopy {
            inode: inode.clone(),
            cohort: None,
        };
        cache.insert(inode.ino, Cached::new(copy));
    }

    /// Remember inodes read by one batch get, as a cohort that is asked for again
    /// together. A copy this client wrote meanwhile (a higher version) is kept.
    pub(super) fn put_inodes_read_together(&self, inodes: &[Inode]) {
        let cohort: Cohort = inodes.iter().map(|i| i.ino).collect();
        let mut cache = self.inodes.lock().unwrap();
        prune(&mut cache, self.attr_ttl);
        let mut recent = self.recent_cohorts.lock().unwrap();
        if recent.len() == RECENT_COHORTS {
            recent.pop_front();
        }
        recent.push_back(cohort.clone());
        drop(recent);
        for inode in inodes {
            if cache
                .get(&inode.ino)
                .is_some_and(|c| c.value.inode.ver > inode.ver)
            {
                continue;
            }
            let copy = InodeCopy {
                inode: inode.clone(),
                cohort: Some(cohort.clone()),
            };
            cache.insert(inode.ino, Cached::new(copy));
        }
    }

    /// The inodes to read again with `ino`, whose copy expired, at most
    /// [`INODE_BATCH_LIMIT`] less one, in the order a walk reaches them: the members
    /// of the cohort it was read with that follow it, those of the cohorts read after
    /// that one, then the members before it. Only members whose copies are past half
    /// their TTL are taken (they expire in step, and the walk gets there within the
    /// other half), and only those still in their cohort: a member read or written
    /// since on its own has left it.
    pub(super) fn expired_companions(&self, ino: u64) -> Vec<u64> {
        let cache = self.inodes.lock().unwrap();
        let Some(cohort) = cache.get(&ino).and_then(|c| c.value.cohort.as_ref()) else {
            return Vec::new();
        };
        let at = cohort.iter().position(|member| *member == ino).unwrap_or(0);
        let recent = self.recent_cohorts.lock().unwrap();
        let later = recent
            .iter()
            .rposition(|c| Arc::ptr_eq(c, cohort))
            .map_or(recent.range(0..0), |i| recent.range(i + 1..));
        let aging_in = |cohort: &Cohort, member: &u64| {
            cache.get(member).is_some_and(|c| {
                c.at.elapsed() >= self.attr_ttl / 2
                    && c.value
                        .cohort
                        .as_ref()
                        .is_some_and(|t| Arc::ptr_eq(t, cohort))
            })
        };
        let mut walk: Vec<(&Cohort, &[u64])> = vec![(cohort, &cohort[at + 1..])];
        walk.extend(later.map(|next| (next, &next[..])));
        walk.push((cohort, &cohort[..at]));
        walk.into_iter()
            .flat_map(|(cohort, members)| {
                members
                    .iter()
                    .filter(move |member| aging_in(cohort, member))
            })
            .copied()
            .take(INODE_BATCH_LIMIT - 1)
            .collect()
    }

    /// Forget an inode (deleted, or changed behind our back).
    pub(super) fn forget_inode(&self, ino: u64) {
        self.inodes.lock().unwrap().remove(&ino);
    }

    /// A directory this client changed with an atomic update (times, link count, version
    /// bump): keep the cached copy in step instead of reading it back.
    pub(super) fn touch_dir(&self, ino: u64, now: Timestamp, nlink_delta: i64) {
        self.updated_in_place(ino, |inode| inode.touch(now, nlink_delta));
    }

    /// An inode this client changed with an atomic update (some attributes set, the
    /// version moved by one): keep the cached copy, and the version a listing of it is
    /// tied to, in step instead of reading it back.
    pub(super) fn updated_in_place(&self, ino: u64, change: impl FnOnce(&mut Inode)) {
        if let Some(c) = self.inodes.lock().unwrap().get_mut(&ino) {
            change(&mut c.value.inode);
            c.value.inode.ver += 1;
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

    /// The entry `dir/name` last seen, however long ago.
    pub(super) fn entry_any_age(&self, dir: u64, name: &[u8]) -> Option<Entry> {
        let listed = self
            .listings
            .lock()
            .unwrap()
            .get(&dir)
            .and_then(|listing| listing.value.entries.get(name).copied());
        listed.or_else(|| {
            let cache = self.entries.lock().unwrap();
            cache.get(&(dir, name.to_vec())).map(|c| c.value)
        })
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

    /// An expired listing of `dir` tied to a version: that version, and what the listing
    /// had of `name`.
    pub(super) fn expired_listing(&self, dir: u64, name: &[u8]) -> Option<(u64, Option<Entry>)> {
        if self.entry_ttl.is_zero() {
            // Nothing renewed would be trusted for a moment.
            return None;
        }
        let listings = self.listings.lock().unwrap();
        let listing = listings.get(&dir)?;
        let ver = listing.value.ver?;
        Some((ver, listing.value.entries.get(name).copied()))
    }

    /// Trust the listing of `dir` for another `entry_ttl`, if it is still tied to `ver`,
    /// the directory's version as just read from the store: every change of a
    /// directory's entries moves its version, so none happened since the listing.
    pub(super) fn renew_listing(&self, dir: u64, ver: u64) -> bool {
        let mut listings = self.listings.lock().unwrap();
        match listings.get_mut(&dir) {
            Some(listing) if listing.value.ver == Some(ver) => {
                listing.at = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Renew the expired listing of `dir` from the directory's inode as cached within
    /// `attr_ttl`, without a request: if that copy's version is the listing's, the
    /// listing was complete when the copy was read (or written), and is trusted from
    /// then on. A walk down a tree after its listings expired reads each directory's
    /// inode with its parent's entries anyway (see `Fs::renew_listing`).
    pub(super) fn renew_listing_from_inode(&self, dir: u64) -> bool {
        let Some((ver, read_at)) = self
            .inodes
            .lock()
            .unwrap()
            .get(&dir)
            .filter(|c| c.at.elapsed() < self.attr_ttl)
            .map(|c| (c.value.inode.ver, c.at))
        else {
            return false;
        };
        let mut listings = self.listings.lock().unwrap();
        match listings.get_mut(&dir) {
            Some(listing)
                if listing.value.ver == Some(ver)
                    && read_at > listing.at
                    && read_at.elapsed() < self.entry_ttl =>
            {
                listing.at = read_at;
                true
            }
            _ => false,
        }
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

    /// Trust the fresh listing of `dir` for another `entry_ttl`: this client holds the
    /// directory's lease, so its names changed only through this client since it was
    /// listed (see `lease.rs`).
    pub(super) fn extend_listing(&self, dir: u64) {
        if let Some(listing) = self.listings.lock().unwrap().get_mut(&dir) {
            if listing.at.elapsed() < self.entry_ttl {
                listing.at = Instant::now();
            }
        }
    }

    /// Forget the listing of a directory that went away.
    pub(super) fn forget_listing(&self, dir: u64) {
        self.listings.lock().unwrap().remove(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::FileKind;

    const TTL: Duration = Duration::from_millis(40);

    fn dir(ino: u64, ver: u64) -> Inode {
        Inode {
            ver,
            ..Inode::empty_dir(ino, 1, (0, 0), Timestamp::now())
        }
    }

    fn file_entry(ino: u64) -> Entry {
        Entry {
            ino,
            kind: FileKind::File,
        }
    }

    /// A cache holding an expired listing of directory 5 (one file, `a`) at version 3.
    fn expired_listing() -> MetaCache {
        let cache = MetaCache::new(TTL, TTL);
        cache.put_listing(5, [(b"a".to_vec(), file_entry(9))], Some(3));
        std::thread::sleep(TTL);
        assert_eq!(cache.entry(5, b"b"), Known::Unknown);
        cache
    }

    #[test]
    fn a_listing_is_renewed_only_at_its_version() {
        let cache = expired_listing();
        assert_eq!(
            cache.expired_listing(5, b"a"),
            Some((3, Some(file_entry(9))))
        );
        assert!(!cache.renew_listing(5, 4), "the directory changed since");
        assert_eq!(cache.entry(5, b"b"), Known::Unknown);
        assert!(cache.renew_listing(5, 3));
        assert_eq!(cache.entry(5, b"b"), Known::Absent);
        assert_eq!(cache.entry(5, b"a"), Known::Present(file_entry(9)));
    }

    #[test]
    fn a_listing_is_renewed_from_a_fresh_copy_of_its_directory_at_its_version() {
        let cache = expired_listing();
        cache.put_inode(&dir(5, 4));
        assert!(!cache.renew_listing_from_inode(5), "a newer version");
        cache.put_inode(&dir(5, 3));
        assert!(cache.renew_listing_from_inode(5));
        assert_eq!(cache.entry(5, b"b"), Known::Absent);
    }

    #[test]
    fn a_copy_older_than_the_listing_or_expired_renews_nothing() {
        let cache = MetaCache::new(TTL, TTL);
        cache.put_inode(&dir(5, 3));
        cache.put_listing(5, [], Some(3));
        assert!(
            !cache.renew_listing_from_inode(5),
            "read before the listing"
        );
        let cache = expired_listing();
        cache.put_inode(&dir(5, 3));
        std::thread::sleep(TTL);
        assert!(!cache.renew_listing_from_inode(5), "the copy expired");
        assert!(!cache.renew_listing_from_inode(7), "no listing");
    }

    fn dirs(inos: &[u64]) -> Vec<Inode> {
        inos.iter().map(|ino| dir(*ino, 1)).collect()
    }

    #[test]
    fn an_expired_copy_is_read_again_with_its_companions_in_walk_order() {
        let cache = MetaCache::new(TTL, TTL);
        cache.put_inodes_read_together(&dirs(&[1, 2, 3]));
        cache.put_inodes_read_together(&dirs(&[4, 5]));
        cache.put_inodes_read_together(&dirs(&[6]));
        std::thread::sleep(TTL);
        cache.put_inode(&dir(5, 1));
        assert_eq!(
            cache.expired_companions(2),
            vec![3, 4, 6, 1],
            "the rest of its cohort, the later cohorts, then its cohort's start; \
             5 was read on its own since"
        );
        assert_eq!(cache.expired_companions(5), Vec::<u64>::new(), "no cohort");
    }

    #[test]
    fn companions_younger_than_half_their_ttl_are_not_read_again() {
        let cache = MetaCache::new(Duration::from_secs(60), TTL);
        cache.put_inodes_read_together(&dirs(&[1, 2]));
        cache.put_inodes_read_together(&dirs(&[3]));
        assert_eq!(cache.expired_companions(1), Vec::<u64>::new());
    }

    #[test]
    fn this_clients_own_changes_keep_listing_and_copy_in_step() {
        let cache = expired_listing();
        cache.put_inode(&dir(5, 3));
        cache.put_entry(5, b"b", Some(file_entry(10)));
        cache.touch_dir(5, Timestamp::now(), 0);
        assert_eq!(
            cache.expired_listing(5, b"b"),
            Some((4, Some(file_entry(10))))
        );
        assert!(cache.renew_listing_from_inode(5));
        assert_eq!(cache.entry(5, b"b"), Known::Present(file_entry(10)));
    }
}
