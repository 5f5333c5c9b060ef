//! The consistency checker: walks every entry, inode and block record and reports
//! what does not add up ([`Fs::check`], which changes nothing), and the repair of what
//! it found ([`Fs::repair`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::tx::{points_at, Tx};
use super::{Caller, Fs, FsError, FsResult};
use crate::keys::{self, ROOT_INO};
use crate::records::{from_item, to_item, Entry, FileKind, Inode, Usage};
use crate::store::{Condition, Key, SortKey, Table, WriteOp};

/// One inconsistency, with what its repair needs to know.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// An entry points at an inode that does not exist.
    DanglingEntry {
        /// Directory holding the entry.
        dir: u64,
        /// The entry's stored name.
        name: String,
        /// The missing inode.
        ino: u64,
    },
    /// An entry names another kind than its inode has.
    WrongEntryKind {
        /// Directory holding the entry.
        dir: u64,
        /// The entry's stored name.
        name: String,
        /// The inode.
        ino: u64,
        /// What the inode is.
        actual: FileKind,
    },
    /// An inode no entry names (and no client may hold open).
    Unnamed {
        /// The inode.
        ino: u64,
        /// Its kind.
        kind: FileKind,
    },
    /// A link count that does not match the names (files) or subdirectories (directories).
    WrongLinkCount {
        /// The inode.
        ino: u64,
        /// What it says.
        nlink: u32,
        /// What it should say.
        want: u32,
    },
    /// A directory with more than one name.
    DirectoryNamedTwice {
        /// The directory.
        ino: u64,
        /// How many entries name it.
        names: u32,
    },
    /// A directory whose recorded parent is not where it lives.
    WrongParent {
        /// The directory.
        ino: u64,
        /// The parent it records.
        says: u64,
        /// The directory it lives in.
        lives: u64,
    },
    /// The root inode is missing.
    NoRoot,
    /// Inline data of an inode that does not exist, or keeps its data in blocks.
    StrayInline {
        /// The inode.
        ino: u64,
        /// Whether the inode exists.
        inode_exists: bool,
    },
    /// The usage totals (see `usage.rs`) differ from the recount, or are not kept yet
    /// (compared only while no client is mounted: a mounted one has changes not yet
    /// added).
    UsageDrift {
        /// What the usage record says (None: there is none).
        recorded: Option<Usage>,
        /// What the filesystem holds.
        counted: Usage,
    },
    /// A block that no file's data includes.
    StrayBlock {
        /// The block's partition.
        partition: String,
        /// Its index.
        index: u64,
        /// Why it is stray, in words.
        why: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::DanglingEntry { dir, name, ino } => write!(
                f,
                "entry {name:?} in directory {dir} points at missing inode {ino}"
            ),
            Problem::WrongEntryKind {
                dir,
                name,
                ino,
                actual,
            } => write!(
                f,
                "entry {name:?} in directory {dir} names another kind than inode {ino}, a {actual:?}"
            ),
            Problem::Unnamed { ino, kind } => write!(f, "inode {ino} ({kind:?}) has no name"),
            Problem::WrongLinkCount { ino, nlink, want } => {
                write!(f, "inode {ino} has nlink {nlink} but should have {want}")
            }
            Problem::DirectoryNamedTwice { ino, names } => {
                write!(f, "directory {ino} has {names} names")
            }
            Problem::WrongParent { ino, says, lives } => write!(
                f,
                "directory {ino} says its parent is {says} but lives in {lives}"
            ),
            Problem::NoRoot => write!(f, "the root inode is missing"),
            Problem::StrayInline { ino, inode_exists } => match inode_exists {
                true => write!(f, "inline data of inode {ino}, which keeps its data in blocks"),
                false => write!(f, "inline data of missing inode {ino}"),
            },
            Problem::StrayBlock {
                partition,
                index,
                why,
            } => write!(f, "block {index} of {partition} {why}"),
            Problem::UsageDrift { recorded, counted } => {
                let totals = |u: &Usage| {
                    format!(
                        "{} inodes, {} directories, {} files, {} symlinks, {} bytes",
                        u.inodes, u.directories, u.files, u.symlinks, u.logical_bytes
                    )
                };
                match recorded {
                    Some(recorded) => write!(
                        f,
                        "the usage totals say {}, but the filesystem holds {}",
                        totals(recorded),
                        totals(counted)
                    ),
                    None => write!(
                        f,
                        "no usage totals are kept yet (the filesystem holds {})",
                        totals(counted)
                    ),
                }
            }
        }
    }
}

const PAGE: usize = 1000;

/// What the checker saw and what it found wrong.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Directory entries walked.
    pub entries: usize,
    /// Inode records found.
    pub inodes: usize,
    /// Block records found.
    pub blocks: usize,
    /// Cleanups recorded but not finished (normal only while clients are mounted).
    pub pending_cleanups: usize,
    /// Files with no name left, kept while some client may hold them open.
    pub pending_deletions: usize,
    /// The usage totals recounted from the inodes.
    pub usage: Usage,
    /// Every inconsistency found.
    pub problems: Vec<Problem>,
}

impl Fs {
    async fn all_keys(&self, table: Table) -> FsResult<Vec<Key>> {
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self.store.scan_keys(table, after.as_ref(), PAGE).await?;
            after = page.last().cloned();
            keys.extend(page);
            if !more {
                return Ok(keys);
            }
        }
    }

    /// Check the whole filesystem: every entry points at an inode of its kind, link
    /// counts match the entries, directories have one name and the right parent, no
    /// inode is unreachable, and no block lies outside a file's size.
    /// `progress` hears what the checker is doing, for a progress display.
    pub async fn check(&self, progress: &(dyn Fn(&str) + Sync)) -> FsResult<CheckReport> {
        progress("scanning metadata keys");
        let mut report = CheckReport::default();
        let meta = self.all_keys(Table::Meta).await?;
        let inode_keys: Vec<Key> = meta
            .iter()
            .filter(|k| k.pk.starts_with("i:") && k.sk == SortKey::S(keys::INODE_NAME.into()))
            .cloned()
            .collect();
        let inline_items: Vec<u64> = meta
            .iter()
            .filter(|k| k.sk == SortKey::S(keys::INLINE_NAME.into()))
            .filter_map(|k| k.pk.strip_prefix("i:")?.parse().ok())
            .collect();
        let mut inodes: BTreeMap<u64, Inode> = BTreeMap::new();
        for chunk in inode_keys.chunks(100) {
            for item in self.store.batch_get(chunk).await?.into_iter().flatten() {
                let inode: Inode = from_item(item)?;
                inodes.insert(inode.ino, inode);
            }
        }
        report.inodes = inodes.len();
        for inode in inodes.values() {
            report.usage += Usage::of(inode.kind, inode.size);
        }
        progress(&format!("walking the tree ({} inodes)", report.inodes));
        let doomed: std::collections::HashSet<u64> = meta
            .iter()
            .filter(|k| k.pk == keys::GARBAGE_PARTITION)
            .filter_map(|k| match &k.sk {
                SortKey::S(s) => s.strip_prefix(keys::DOOMED_PREFIX)?.parse().ok(),
                SortKey::N(_) => None,
            })
            .collect();
        report.pending_deletions = doomed.len();
        report.pending_cleanups = meta
            .iter()
            .filter(|k| k.pk == keys::GARBAGE_PARTITION)
            .count()
            - doomed.len();

        let mut names: HashMap<u64, u32> = HashMap::new();
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        let mut parents: HashMap<u64, u64> = HashMap::new();
        let mut queue = vec![ROOT_INO];
        while let Some(dir) = queue.pop() {
            progress(&format!("walking the tree: {} entries", report.entries));
            for (sk, item) in self
                .query_all(Table::Meta, &keys::entries_partition(dir), None)
                .await?
            {
                report.entries += 1;
                let entry: Entry = from_item(item)?;
                let name = match &sk {
                    SortKey::S(s) => s.clone(),
                    SortKey::N(n) => n.to_string(),
                };
                *names.entry(entry.ino).or_default() += 1;
                match inodes.get(&entry.ino) {
                    None => report.problems.push(Problem::DanglingEntry {
                        dir,
                        name,
                        ino: entry.ino,
                    }),
                    Some(inode) if inode.kind != entry.kind => {
                        report.problems.push(Problem::WrongEntryKind {
                            dir,
                            name,
                            ino: entry.ino,
                            actual: inode.kind,
                        })
                    }
                    Some(_) => {}
                }
                // By what the entry names: a wrong kind in the entry is its own problem.
                let kind = inodes.get(&entry.ino).map_or(entry.kind, |i| i.kind);
                if kind == FileKind::Dir {
                    *subdirs.entry(dir).or_default() += 1;
                    if parents.insert(entry.ino, dir).is_none() {
                        queue.push(entry.ino);
                    }
                }
            }
        }

        for (ino, inode) in &inodes {
            let named = names.get(ino).copied().unwrap_or(0);
            if *ino == ROOT_INO {
                continue;
            }
            if named == 0 && inode.nlink == 0 && doomed.contains(ino) {
                continue;
            }
            if named == 0 {
                report.problems.push(Problem::Unnamed {
                    ino: *ino,
                    kind: inode.kind,
                });
                continue;
            }
            let want = match inode.kind {
                FileKind::Dir => 2 + subdirs.get(ino).copied().unwrap_or(0),
                _ => named,
            };
            if inode.nlink != want {
                report.problems.push(Problem::WrongLinkCount {
                    ino: *ino,
                    nlink: inode.nlink,
                    want,
                });
            }
            if inode.kind == FileKind::Dir {
                if named != 1 {
                    report.problems.push(Problem::DirectoryNamedTwice {
                        ino: *ino,
                        names: named,
                    });
                }
                match parents.get(ino) {
                    Some(lives) if *lives != inode.parent => {
                        report.problems.push(Problem::WrongParent {
                            ino: *ino,
                            says: inode.parent,
                            lives: *lives,
                        })
                    }
                    _ => {}
                }
            }
        }
        if let Some(root) = inodes.get(&ROOT_INO) {
            let want = 2 + subdirs.get(&ROOT_INO).copied().unwrap_or(0);
            if root.nlink != want {
                report.problems.push(Problem::WrongLinkCount {
                    ino: ROOT_INO,
                    nlink: root.nlink,
                    want,
                });
            }
        } else {
            report.problems.push(Problem::NoRoot);
        }

        for ino in inline_items {
            let inode = inodes.get(&ino);
            if !inode.is_some_and(|i| i.inline) {
                report.problems.push(Problem::StrayInline {
                    ino,
                    inode_exists: inode.is_some(),
                });
            }
        }

        if self.live_mounts().await?.is_empty() {
            let recorded = self.usage().await?;
            if recorded != Some(report.usage) {
                report.problems.push(Problem::UsageDrift {
                    recorded,
                    counted: report.usage,
                });
            }
        }

        let bs = self.format.block_size;
        progress("scanning blocks");
        for key in self.all_keys(Table::Blocks).await? {
            report.blocks += 1;
            let ino: Option<u64> = key.pk.split(':').next().and_then(|i| i.parse().ok());
            let SortKey::N(index) = key.sk else { continue };
            let why = match ino.and_then(|ino| inodes.get(&ino)) {
                None => "belongs to no inode".to_string(),
                Some(inode) if index * bs >= inode.size => {
                    format!("lies past the size {} of inode {}", inode.size, inode.ino)
                }
                Some(inode) if index == 0 && inode.inline => {
                    format!("is in the blocks table, but inode {} is inline", inode.ino)
                }
                Some(_) => continue,
            };
            report.problems.push(Problem::StrayBlock {
                partition: key.pk,
                index,
                why,
            });
        }
        Ok(report)
    }
}

/// What a repair did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    /// Each fix, in words.
    pub fixed: Vec<String>,
    /// The check after the repair: its problems are the ones a repair cannot fix.
    pub after: CheckReport,
}

/// Name of the directory under the root that unnamed inodes are put in.
const LOST_AND_FOUND: &[u8] = b"lost+found";

impl Problem {
    fn fixable(&self) -> bool {
        !matches!(self, Problem::DirectoryNamedTwice { .. } | Problem::NoRoot)
    }
}

impl Fs {
    /// Collect every garbage record no live session needs, delete dead sessions'
    /// records, then fix what [`Fs::check`] finds, checking again until nothing
    /// fixable is left (a fix can reveal another: a dangling entry removed changes its
    /// directory's link count). Unnamed inodes go to `/lost+found`, named by number.
    pub async fn repair(&self, progress: &(dyn Fn(&str) + Sync)) -> FsResult<RepairReport> {
        let mut fixed = Vec::new();
        progress("collecting garbage");
        let collected = self.clean_up_now().await?;
        for (count, what) in [
            (collected.files, "files with no name deleted"),
            (collected.cleanups, "unfinished cleanups finished"),
            (collected.past_end, "files' blocks past their end deleted"),
        ] {
            if count > 0 {
                fixed.push(format!("{count} {what}"));
            }
        }
        for _pass in 0..4 {
            let report = self.check(progress).await?;
            let fixable: Vec<Problem> = report
                .problems
                .iter()
                .filter(|p| p.fixable())
                .cloned()
                .collect();
            if fixable.is_empty() {
                return Ok(RepairReport {
                    fixed,
                    after: report,
                });
            }
            for (n, problem) in fixable.into_iter().enumerate() {
                progress(&format!("repairing: {n} fixed"));
                self.fix(&problem).await?;
                fixed.push(problem.to_string());
            }
        }
        let after = self.check(progress).await?;
        Ok(RepairReport { fixed, after })
    }

    async fn fix(&self, problem: &Problem) -> FsResult<()> {
        match problem {
            Problem::DanglingEntry { dir, name, ino } => {
                self.store
                    .write(WriteOp::Delete {
                        key: Key::meta(keys::entries_partition(*dir), name.clone()),
                        cond: points_at(*ino),
                    })
                    .await?
            }
            Problem::WrongEntryKind {
                dir,
                name,
                ino,
                actual,
            } => {
                let entry = Entry {
                    ino: *ino,
                    kind: *actual,
                };
                self.store
                    .write(WriteOp::Put {
                        key: Key::meta(keys::entries_partition(*dir), name.clone()),
                        item: to_item(&entry),
                        cond: points_at(*ino),
                    })
                    .await?
            }
            Problem::Unnamed { ino, kind } => {
                let found = self.lost_and_found().await?;
                let name = format!("#{ino}");
                self.optimistic(|_| async {
                    let inode = self.load_inode(*ino, true).await?;
                    let mut tx = Tx::new();
                    let entry = Entry {
                        ino: *ino,
                        kind: *kind,
                    };
                    tx.put_entry(found, name.as_bytes(), entry, Condition::Absent);
                    let is_dir = *kind == FileKind::Dir;
                    let new = tx.update(&inode);
                    if is_dir {
                        new.parent = found;
                    } else {
                        new.nlink = 1;
                    }
                    tx.touch_dir(found, i64::from(is_dir));
                    self.commit(tx).await.map(|_| ())
                })
                .await?
            }
            Problem::WrongLinkCount { ino, want, .. } => {
                self.rewrite_inode(*ino, |inode| inode.nlink = *want)
                    .await?
            }
            Problem::WrongParent { ino, lives, .. } => {
                self.rewrite_inode(*ino, |inode| inode.parent = *lives)
                    .await?
            }
            Problem::StrayInline { ino, .. } => {
                self.store
                    .write(WriteOp::Delete {
                        key: keys::inline_key(*ino),
                        cond: Condition::None,
                    })
                    .await?
            }
            Problem::StrayBlock {
                partition, index, ..
            } => {
                self.store
                    .write(WriteOp::Delete {
                        key: Key {
                            table: Table::Blocks,
                            pk: partition.clone(),
                            sk: SortKey::N(*index),
                        },
                        cond: Condition::None,
                    })
                    .await?
            }
            Problem::UsageDrift { counted, .. } => self.set_usage(counted).await?,
            Problem::DirectoryNamedTwice { .. } | Problem::NoRoot => {}
        }
        Ok(())
    }

    /// Change inode `ino` as `change` says, read fresh, conditioned on its version.
    async fn rewrite_inode(&self, ino: u64, change: impl Fn(&mut Inode)) -> FsResult<()> {
        self.optimistic(|_| async {
            let inode = self.load_inode(ino, true).await?;
            let mut tx = Tx::new();
            change(tx.update(&inode));
            self.commit(tx).await.map(|_| ())
        })
        .await
    }

    /// The inode of `/lost+found`, made if missing.
    async fn lost_and_found(&self) -> FsResult<u64> {
        match self.lookup(ROOT_INO, LOST_AND_FOUND).await {
            Ok(inode) => Ok(inode.ino),
            Err(FsError::NotFound) => Ok(self
                .mkdir(Caller::ROOT, ROOT_INO, LOST_AND_FOUND, 0o700)
                .await?
                .ino),
            Err(e) => Err(e),
        }
    }
}
