//! `dynamofs mkfs`: make a new filesystem with the settings fixed at its creation
//! (block size, the tables' billing mode on DynamoDB, the codec mounts write with by
//! default). An existing filesystem is refused unless `--force`, which erases it
//! first, and never while a client has it mounted. Mounting an empty store still makes
//! one with the defaults, as before.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::{MkfsArgs, MkfsOptions};
use crate::fs::{Fs, FsConfig};
use crate::keys;
use crate::records::{from_item, Format};
use crate::store::{Store, Table, WriteOp};

/// Keys deleted per transaction while erasing (DynamoDB's limit).
const ERASE_BATCH: usize = 100;

/// Run `dynamofs mkfs`; returns the exit code.
pub fn run(args: MkfsArgs) -> i32 {
    let options = match MkfsOptions::parse(&args.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dynamofs: {e}");
            return 2;
        }
    };
    crate::mount::init_logging(false);
    let Some(rt) = crate::mount::tool_runtime() else {
        return 1;
    };
    match rt.block_on(make(&args, &options)) {
        Ok(format) => {
            println!(
                "made a dynamofs filesystem on {}: {} KiB blocks, compression {}{}",
                args.source,
                format.block_size / 1024,
                format.compression,
                match args.source {
                    crate::source::Source::Aws { .. } => {
                        format!(", new tables billed {}", options.billing)
                    }
                    crate::source::Source::Local { .. } => String::new(),
                }
            );
            0
        }
        Err(e) => {
            eprintln!("dynamofs: mkfs {}: {e}", args.source);
            1
        }
    }
}

async fn make(args: &MkfsArgs, options: &MkfsOptions) -> Result<Format, String> {
    let store = args
        .source
        .open(
            options.endpoint.clone(),
            options.patience,
            Some(options.billing),
        )
        .await
        .map_err(|e| e.to_string())?;
    let existing = store
        .get(&keys::format_key())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(item) = existing {
        let format: Format = from_item(item).map_err(|e| e.to_string())?;
        if !args.force {
            return Err(format!(
                "it already holds a dynamofs filesystem (format {}, {} KiB blocks): \
                 mkfs --force erases it, with every file in it",
                format.version,
                format.block_size / 1024
            ));
        }
        refuse_if_mounted(store.clone()).await?;
        erase(store.as_ref()).await?;
    }
    let config = FsConfig {
        block_size: options.block_size,
        compression: Some(options.compression),
        ..FsConfig::default()
    };
    Fs::format(store.as_ref(), &config)
        .await
        .map_err(|e| e.to_string())
}

/// Fail if a live session shows a client still has the filesystem mounted.
async fn refuse_if_mounted(store: Arc<dyn Store>) -> Result<(), String> {
    let fs = Fs::new(store, FsConfig::for_tools(false))
        .await
        .map_err(|e| e.to_string())?;
    let live = fs.live_mounts().await.map_err(|e| e.to_string())?;
    match live.is_empty() {
        true => Ok(()),
        false => Err(crate::status::still_mounted(&live)),
    }
}

/// Delete every item of both tables (the tables themselves stay, billing and all),
/// showing the count on a terminal.
async fn erase(store: &dyn Store) -> Result<(), String> {
    let progress =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} erasing: {pos} items deleted ({per_sec})",
        )
        .expect("a valid template"),
    );
    progress.enable_steady_tick(Duration::from_millis(120));
    let mut erased = 0u64;
    for table in [Table::Blocks, Table::Meta] {
        loop {
            // Always from the start: what was deleted is gone from the scan.
            let (keys, more) = store
                .scan_keys(table, None, 1000)
                .await
                .map_err(|e| e.to_string())?;
            for batch in keys.chunks(ERASE_BATCH) {
                let deletes = batch
                    .iter()
                    .map(|key| WriteOp::Delete {
                        key: key.clone(),
                        cond: crate::store::Condition::None,
                    })
                    .collect();
                store.transact(deletes).await.map_err(|e| e.to_string())?;
                erased += batch.len() as u64;
                progress.set_position(erased);
            }
            if !more {
                break;
            }
        }
    }
    progress.finish_and_clear();
    tracing::info!(items = erased, "erased the filesystem that was there");
    Ok(())
}
