//! Block I/O: reading, writing and deleting the data of files.
//!
//! Block `n` of a file lives in the blocks table under the file's stripe `n mod stripes`
//! (see [`crate::keys`]). A small file's block 0 lives instead in the inline item beside
//! its inode (`i:<ino>` / `data`), flagged by [`Inode::inline`]: `open` reads inode and
//! data with one query, and a chmod or utimens, which rewrites only the inode item, is
//! not billed for the data. Whatever truncation or deletion leaves behind is recorded
//! as a cleanup in the same transaction and deleted here. Both kinds of item are
//! compressed where that makes them smaller (see [`crate::compression`]).

use std::sync::Arc;

use serde_bytes::ByteBuf;

use super::{Fs, FsError, FsResult};
use crate::compression::Compression;
use crate::keys;
use crate::records::{from_item, to_item, Inode};
use crate::store::{Condition, Key, SortKey, Store, StoreError, Table, WriteOp};

/// Requests in flight at once for one file's blocks.
pub(super) const PARALLEL_BLOCKS: usize = 16;
/// Files up to this size keep their data in the inline item. 64 KiB holds nearly every
/// file of a source tree (577 of the tokio crate's 582) in one item read together with
/// the inode, far under the 400 KB item limit; at 16 read units a query that carries
/// it costs a quarter of one 256 KiB block read, and its flush transaction (billed
/// twice) stays small.
pub(super) const INLINE_MAX: u64 = 64 * 1024;

/// A block item of the blocks table, or the inline item: `d` holds the bytes, stored
/// with the codec `c` names (raw when absent).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct BlockRecord {
    d: ByteBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<Compression>,
}

impl BlockRecord {
    /// The record of `bytes`, compressed by `codec` where that makes it smaller.
    fn item(bytes: &[u8], codec: Compression) -> crate::store::Item {
        let (used, stored) = codec.compress(bytes);
        let mut item = to_item(&BlockRecord {
            d: ByteBuf::new(),
            c: Some(used).filter(|c| *c != Compression::None),
        });
        // Moved in after serializing, which would copy a block's bytes once more.
        item.insert("d".to_string(), crate::store::Value::B(stored));
        item
    }

    /// The bytes of a stored block or inline item, at most `limit` of them (a block).
    pub(super) fn bytes(item: crate::store::Item, limit: u64) -> Result<Vec<u8>, StoreError> {
        let record = from_item::<BlockRecord>(item)?;
        let codec = record.c.unwrap_or(Compression::None);
        let mut bytes = codec
            .decompress(record.d.into_vec(), limit as usize)
            .map_err(|e| StoreError::fatal(e.to_string()))?;
        bytes.truncate(limit as usize);
        Ok(bytes)
    }
}

/// Blocks as fetched: each block's index and bytes.
pub(super) type FetchedBlocks = Vec<(u64, Vec<u8>)>;

/// Reads and writes of one filesystem's blocks, cheap to clone into the background
/// tasks that write behind and read ahead (they hold no [`Fs`]).
#[derive(Clone)]
pub(super) struct BlockIo {
    store: Arc<dyn Store>,
    block_size: u64,
    stripes: u64,
    compression: Compression,
}

impl BlockIo {
    /// Fetch blocks of `inode`; missing ones (holes) come back empty. Bytes past `size`
    /// are cut off so that they can never reappear as file content.
    pub(super) async fn fetch(
        &self,
        inode: &Inode,
        indices: &[u64],
        size: u64,
    ) -> FsResult<FetchedBlocks> {
        let bs = self.block_size;
        let keys: Vec<Key> = indices.iter().map(|i| self.key(inode, *i)).collect();
        let items = self.store.batch_get(&keys).await?;
        indices
            .iter()
            .zip(items)
            .map(|(idx, item)| {
                let mut block = match item {
                    Some(item) => BlockRecord::bytes(item, bs)?,
                    None => Vec::new(),
                };
                block.truncate(size.saturating_sub(idx * bs).min(bs) as usize);
                Ok((*idx, block))
            })
            .collect()
    }

    /// Put block `idx` of `ino` in the blocks table, unconditionally.
    pub(super) async fn put(&self, ino: u64, idx: u64, block: &[u8]) -> Result<(), StoreError> {
        self.store.write(self.put_op(ino, idx, block)).await
    }

    /// The unconditional put of block `idx` of `ino` in the blocks table.
    fn put_op(&self, ino: u64, idx: u64, block: &[u8]) -> WriteOp {
        WriteOp::Put {
            key: keys::block_key(ino, idx, self.stripes),
            item: BlockRecord::item(block, self.compression),
            cond: Condition::None,
        }
    }

    /// Where block `idx` of `inode` is stored.
    fn key(&self, inode: &Inode, idx: u64) -> Key {
        if idx == 0 && inode.inline {
            keys::inline_key(inode.ino)
        } else {
            keys::block_key(inode.ino, idx, self.stripes)
        }
    }
}

impl Fs {
    /// Read an inode and its inline data together (one query of its partition), fresh.
    pub(super) async fn load_for_open(&self, ino: u64) -> FsResult<(Inode, Option<Vec<u8>>)> {
        let page = self
            .store
            .query(Table::Meta, &keys::inode_partition(ino), None, 2)
            .await?;
        let mut inode = None;
        let mut inline = None;
        for (sk, item) in page.items {
            match sk {
                SortKey::S(name) if name == keys::INODE_NAME => {
                    inode = Some(from_item::<Inode>(item)?)
                }
                SortKey::S(name) if name == keys::INLINE_NAME => {
                    inline = Some(BlockRecord::bytes(item, self.format.block_size)?)
                }
                _ => {}
            }
        }
        let Some(inode) = inode else {
            self.forget_inode(ino);
            return Err(FsError::Stale);
        };
        if inode.is_nameless() && !self.files.is_open(ino) {
            // Its last name went away (a cached entry led here): only descriptors open
            // since before then may use it. ESTALE makes the kernel look the name up
            // again, and find what it names now.
            self.forget_inode(ino);
            return Err(FsError::Stale);
        }
        self.cache_inode(&inode);
        let inline = inline.filter(|_| inode.inline).map(|mut d| {
            d.truncate(inode.size.min(self.format.block_size) as usize);
            d
        });
        Ok((inode, inline))
    }

    /// Block I/O of this filesystem.
    pub(super) fn blocks(&self) -> BlockIo {
        BlockIo {
            store: self.store.clone(),
            block_size: self.format.block_size,
            stripes: self.format.stripes,
            compression: self.config.compression.unwrap_or(self.format.compression),
        }
    }

    /// Fetch blocks of `inode` from the store (see [`BlockIo::fetch`]).
    pub(super) async fn fetch_blocks(
        &self,
        inode: &Inode,
        indices: &[u64],
        size: u64,
    ) -> FsResult<FetchedBlocks> {
        self.blocks().fetch(inode, indices, size).await
    }

    /// The unconditional put of block `idx` of `ino` in the blocks table.
    pub(super) fn block_put(&self, ino: u64, idx: u64, block: &[u8]) -> WriteOp {
        self.blocks().put_op(ino, idx, block)
    }

    /// The unconditional delete of block `idx` of `ino` from the blocks table.
    pub(super) fn block_delete(&self, ino: u64, idx: u64) -> WriteOp {
        WriteOp::Delete {
            key: keys::block_key(ino, idx, self.format.stripes),
            cond: Condition::None,
        }
    }

    /// The unconditional put of the inline data of `ino`.
    pub(super) fn inline_put(&self, ino: u64, data: &[u8]) -> WriteOp {
        WriteOp::Put {
            key: keys::inline_key(ino),
            item: BlockRecord::item(data, self.blocks().compression),
            cond: Condition::None,
        }
    }

    /// Whether a file of `size` bytes keeps its data inline.
    pub(super) fn fits_inline(&self, size: u64) -> bool {
        size <= INLINE_MAX.min(self.format.block_size)
    }
}
