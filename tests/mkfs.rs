//! `dynamofs mkfs`: the settings fixed at creation (block size, codec, the tables'
//! billing mode), refusal of an existing filesystem without `--force` and of a mounted
//! one even with it, and an erase that leaves an empty filesystem.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Output;

use common::{dynamo_local, dynamofs_bin, dynamofs_on_table, mount_table, unique_table};

fn mkfs(table: &str, args: &[&str]) -> Output {
    dynamofs_on_table("mkfs", table, args)
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn mkfs_fixes_the_settings_and_guards_what_exists() {
    let table = unique_table("Mkfs");
    let made = mkfs(&table, &["-o", "block_size=64k,compression=lz4"]);
    assert!(made.status.success(), "{}", said(&made));
    assert!(
        said(&made).contains("64 KiB blocks, compression lz4"),
        "{}",
        said(&made)
    );

    let m = mount_table(&table, "");
    std::fs::write(m.join("kept"), b"data").unwrap();
    assert_eq!(
        std::fs::metadata(m.join("kept")).unwrap().blksize(),
        64 * 1024
    );
    let again = mkfs(&table, &[]);
    assert!(!again.status.success());
    assert!(
        said(&again).contains("already holds a dynamofs filesystem")
            && said(&again).contains("--force"),
        "{}",
        said(&again)
    );
    let mounted = mkfs(&table, &["--force"]);
    assert!(!mounted.status.success());
    assert!(
        said(&mounted).contains("still mounted"),
        "{}",
        said(&mounted)
    );
    m.unmount();

    let erased = mkfs(&table, &["--force"]);
    assert!(erased.status.success(), "{}", said(&erased));
    assert!(
        said(&erased).contains("256 KiB blocks, compression zstd"),
        "{}",
        said(&erased)
    );
    let m = mount_table(&table, "");
    assert_eq!(std::fs::read_dir(m.path()).unwrap().count(), 0, "erased");
    std::fs::write(m.join("new"), b"x").unwrap();
    assert_eq!(
        std::fs::metadata(m.join("new")).unwrap().blksize(),
        256 * 1024
    );
    m.unmount();

    for (bad, says) in [
        ("block_size=1000", "4k to 384k"),
        ("billing=provisioned", "rcu=N and wcu=N"),
        ("compression=gzip", "zstd, lz4 or none"),
        ("colour=blue", "unknown mkfs option"),
    ] {
        let out = mkfs(&unique_table("MkfsBad"), &["-o", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(said(&out).contains(says), "{bad}: {}", said(&out));
    }
}

#[test]
fn mkfs_makes_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = format!("local:{}", dir.path().join("fs.db").display());
    let run = |args: &[&str]| {
        std::process::Command::new(dynamofs_bin())
            .arg("mkfs")
            .arg(&source)
            .args(args)
            .output()
            .unwrap()
    };
    let made = run(&["-o", "block_size=128k"]);
    assert!(made.status.success(), "{}", said(&made));
    assert!(said(&made).contains("128 KiB blocks"), "{}", said(&made));
    assert!(dir.path().join("fs.db").exists());
    let again = run(&[]);
    assert!(!again.status.success());
    assert!(said(&again).contains("--force"), "{}", said(&again));
    let m = common::mount_local(&dir.path().join("fs.db"));
    std::fs::write(m.join("f"), b"x").unwrap();
    assert_eq!(
        std::fs::metadata(m.join("f")).unwrap().blksize(),
        128 * 1024
    );
    m.unmount();
}

#[test]
fn mkfs_makes_provisioned_tables_when_asked() {
    let table = unique_table("MkfsProv");
    let made = mkfs(&table, &["-o", "billing=provisioned,rcu=5,wcu=7"]);
    assert!(made.status.success(), "{}", said(&made));
    let client = common::raw_client(&dynamo_local().endpoint());
    let rt = tokio::runtime::Runtime::new().unwrap();
    for name in [table.clone(), format!("{table}Blocks")] {
        let described = rt
            .block_on(client.describe_table().table_name(&name).send())
            .unwrap();
        let throughput = described
            .table()
            .and_then(|t| t.provisioned_throughput())
            .expect("provisioned throughput");
        assert_eq!(throughput.read_capacity_units(), Some(5), "{name}");
        assert_eq!(throughput.write_capacity_units(), Some(7), "{name}");
    }
}
