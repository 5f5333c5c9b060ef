//! The consistency checker: walks every entry, inode and block record and reports
//! what does not add up. It changes nothing.

use std::collections::{BTreeMap, HashMap};

use super::{Fs, FsResult};
use crate::keys::{self, ROOT_INO};
use crate::records::{from_item, Entry, FileKind, Inode};
use crate::store::{Key, SortKey, Table};

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
    /// Every inconsistency, in words.
    pub problems: Vec<String>,
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
                    None => report.problems.push(format!(
                        "entry {name:?} in directory {dir} points at missing inode {}",
                        entry.ino
                    )),
                    Some(inode) if inode.kind != entry.kind => report.problems.push(format!(
                        "entry {name:?} in directory {dir} says {:?} but inode {} is {:?}",
                        entry.kind, entry.ino, inode.kind
                    )),
                    Some(_) => {}
                }
                if entry.kind == FileKind::Dir {
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
                report.problems.push(format!(
                    "inode {ino} ({:?}, nlink {}) has no name",
                    inode.kind, inode.nlink
                ));
                continue;
            }
            if inode.kind == FileKind::Dir {
                let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
                if inode.nlink != want {
                    report.problems.push(format!(
                        "directory {ino} has nlink {} but {} subdirectories",
                        inode.nlink,
                        want - 2
                    ));
                }
                if named != 1 {
                    report
                        .problems
                        .push(format!("directory {ino} has {named} names"));
                }
                if parents.get(ino) != Some(&inode.parent) {
                    report.problems.push(format!(
                        "directory {ino} says its parent is {} but lives in {:?}",
                        inode.parent,
                        parents.get(ino)
                    ));
                }
            } else if inode.nlink != named {
                report.problems.push(format!(
                    "inode {ino} has nlink {} but {named} names",
                    inode.nlink
                ));
            }
        }
        if let Some(root) = inodes.get(&ROOT_INO) {
            let want = 2 + subdirs.get(&ROOT_INO).copied().unwrap_or(0);
            if root.nlink != want {
                report.problems.push(format!(
                    "the root has nlink {} but {} subdirectories",
                    root.nlink,
                    want - 2
                ));
            }
        } else {
            report.problems.push("the root inode is missing".into());
        }

        for ino in inline_items {
            match inodes.get(&ino) {
                None => report
                    .problems
                    .push(format!("inline data of missing inode {ino}")),
                Some(inode) if !inode.inline => report.problems.push(format!(
                    "inline data of inode {ino}, which keeps its data in blocks"
                )),
                Some(_) => {}
            }
        }

        let bs = self.format.block_size;
        progress("scanning blocks");
        for key in self.all_keys(Table::Blocks).await? {
            report.blocks += 1;
            let ino: Option<u64> = key.pk.split(':').next().and_then(|i| i.parse().ok());
            let SortKey::N(index) = key.sk else { continue };
            match ino.and_then(|ino| inodes.get(&ino)) {
                None => report
                    .problems
                    .push(format!("block {index} of {} belongs to no inode", key.pk)),
                Some(inode) if index * bs >= inode.size => report.problems.push(format!(
                    "block {index} of inode {} lies past its size {}",
                    inode.ino, inode.size
                )),
                Some(inode) if index == 0 && inode.inline => report.problems.push(format!(
                    "block 0 of inode {} is in the blocks table and inline",
                    inode.ino
                )),
                Some(_) => {}
            }
        }
        Ok(report)
    }
}
