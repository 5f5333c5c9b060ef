//! dynamofs: a serverless, shared POSIX filesystem whose every byte lives in DynamoDB.
//!
//! Layers, top to bottom (see README.md and DESIGN.md):
//! - [`fuse`]: the thin FUSE adapter (the only module that knows fuser types);
//! - [`fs`]: POSIX rules, caches and open-file state, free of fuser types;
//! - [`store`]: the narrow [`store::Store`] trait with a DynamoDB and an embedded backend;
//! - [`keys`] and [`records`]: the key layout and the records stored under it;
//! - [`retry`]: the one retry helper every conflict, throttle and transient error goes through;
//! - [`simulator`]: a DynamoDB-faithful proxy (latency, conflicts, throttling, counts) for tests and benchmarks.

pub mod bulk;
pub mod cli;
pub mod compression;
pub mod export;
pub mod fs;
pub mod fuse;
pub mod import;
pub mod keys;
pub mod metrics;
pub mod mkfs;
pub mod mount;
pub mod records;
pub mod retry;
pub mod simulator;
pub mod source;
pub mod stat;
pub mod status;
pub mod store;
