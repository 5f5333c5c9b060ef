//! Compression of file data: blocks and the inline data of small files.
//!
//! DynamoDB bills a write by the kilobyte of the item and stores it by the gigabyte, so
//! a block is compressed before it is written when that makes it smaller, and stored as
//! it is otherwise. Each item names the codec of its bytes (attribute `c`, absent for raw
//! bytes), so a filesystem can change its setting and still read what it wrote before.
//! The codec and level were chosen by the codec comparison that opens the benchmark
//! (`DYNAMOFS_BENCH_BACKENDS=codecs cargo bench --bench throughput`; figures in Testing.md).

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

/// zstd's level for blocks: on a source tree, level 3 took 20 % more time than level 1
/// to store 4 % fewer bytes.
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    /// Each thread's zstd contexts, kept between blocks: making one costs the
    /// allocation and clearing of its tables, which took as long as compressing an
    /// incompressible 256 KiB block (perf, sequential write on `local:`).
    static ZSTD_COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn zstd_compress(data: &[u8]) -> Option<Vec<u8>> {
    ZSTD_COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some(compressor) => compressor,
            None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?),
        };
        compressor.compress(data).ok()
    })
}

fn zstd_decompress(stored: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    ZSTD_DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(decompressor) => decompressor,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(stored, limit)
    })
}

/// A codec for file data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Bytes stored as they are.
    None,
    /// LZ4 (block format, with the raw size in front).
    Lz4,
    /// Zstandard (one frame, which records the raw size).
    #[default]
    Zstd,
}

/// Stored bytes that do not decode to a block: the item was damaged or written by
/// something else.
#[derive(Debug, thiserror::Error)]
#[error("a {codec} block does not decode: {reason}")]
pub struct CorruptBlock {
    codec: Compression,
    reason: String,
}

const CODECS: [Compression; 3] = [Compression::Zstd, Compression::Lz4, Compression::None];

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// The codec named by a mount option's value.
    pub fn parse(name: &str) -> Result<Compression, String> {
        CODECS
            .into_iter()
            .find(|codec| codec.to_string() == name)
            .ok_or_else(|| format!("unknown compression {name:?}: use zstd, lz4 or none"))
    }

    /// `data` as it should be stored, with the codec that reads it back: compressed
    /// when that makes it smaller, else unchanged (and [`Compression::None`]).
    pub fn compress(self, data: &[u8]) -> (Compression, Vec<u8>) {
        let packed = match self {
            Compression::None => None,
            Compression::Lz4 => Some(lz4_flex::compress_prepend_size(data)),
            Compression::Zstd => zstd_compress(data),
        };
        match packed {
            Some(packed) if packed.len() < data.len() => (self, packed),
            _ => (Compression::None, data.to_vec()),
        }
    }

    /// The bytes `stored` holds, if they were written by this codec; never more than
    /// `limit` bytes (a block's size), whatever a damaged item claims.
    pub fn decompress(self, stored: Vec<u8>, limit: usize) -> Result<Vec<u8>, CorruptBlock> {
        let corrupt = |reason: String| CorruptBlock {
            codec: self,
            reason,
        };
        match self {
            Compression::None => Ok(stored),
            Compression::Lz4 => {
                let (size, packed) = lz4_flex::block::uncompressed_size(&stored)
                    .map_err(|e| corrupt(e.to_string()))?;
                if size > limit {
                    return Err(corrupt(format!("it claims {size} bytes, over {limit}")));
                }
                lz4_flex::decompress(packed, size).map_err(|e| corrupt(e.to_string()))
            }
            Compression::Zstd => {
                zstd_decompress(&stored, limit).map_err(|e| corrupt(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> Vec<u8> {
        (0..2000)
            .flat_map(|i| format!("line {i} of some source text\n").into_bytes())
            .collect()
    }

    #[test]
    fn every_codec_reads_back_what_it_wrote() {
        let data = text();
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let (used, stored) = codec.compress(&data);
            assert_eq!(used, codec);
            if codec != Compression::None {
                assert!(stored.len() < data.len() / 3, "{codec:?}: {}", stored.len());
            }
            assert_eq!(used.decompress(stored, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn what_does_not_shrink_is_stored_raw() {
        // An xorshift stream: incompressible.
        let mut x = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for codec in [Compression::Lz4, Compression::Zstd] {
            assert_eq!(codec.compress(&noise), (Compression::None, noise.clone()));
        }
        assert_eq!(Compression::Zstd.compress(&[]).0, Compression::None);
    }

    #[test]
    fn a_block_that_claims_more_than_a_block_is_refused() {
        let data = vec![0u8; 100_000];
        for codec in [Compression::Lz4, Compression::Zstd] {
            let (_, stored) = codec.compress(&data);
            assert!(codec.decompress(stored.clone(), 4096).is_err(), "{codec:?}");
            assert!(codec
                .decompress(stored[..stored.len() / 2].to_vec(), data.len())
                .is_err());
        }
    }

    #[test]
    fn option_names_parse() {
        assert_eq!(Compression::parse("zstd"), Ok(Compression::Zstd));
        assert_eq!(Compression::parse("lz4"), Ok(Compression::Lz4));
        assert_eq!(Compression::parse("none"), Ok(Compression::None));
        assert!(Compression::parse("gzip")
            .unwrap_err()
            .contains("zstd, lz4 or none"));
    }
}
