//! Mounted: real tools (cp -a, tar, git, rsync) on a dynamofs mount, compared byte
//! for byte with the original, also after an unmount and a fresh mount; and two
//! mounts of the same tables seeing each other's work.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use common::{mount_table, sh, unique_table};

/// A few thousand real files: whole crate source trees from the cargo registry.
fn sample_tree(min_files: usize) -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let index = fs::read_dir(home.join("registry/src"))
        .expect("cargo registry sources")
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut crates: Vec<PathBuf> = fs::read_dir(&index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    crates.sort();
    let sample = tempfile::Builder::new()
        .prefix("dynamofs-sample")
        .tempdir()
        .unwrap()
        .keep();
    let mut files = 0;
    for krate in crates {
        let count: usize = sh(&format!("find '{}' -type f | wc -l", krate.display()))
            .trim()
            .parse()
            .unwrap();
        // Keep the sample a mix of many crates rather than one giant one.
        if count > 600 {
            continue;
        }
        files += count;
        sh(&format!(
            "cp -a '{}' '{}'/",
            krate.display(),
            sample.display()
        ));
        if files >= min_files {
            break;
        }
    }
    assert!(files >= min_files, "the registry holds only {files} files");
    sample
}

fn same_tree(a: &Path, b: &Path) {
    sh(&format!(
        "diff -r --no-dereference '{}' '{}'",
        a.display(),
        b.display()
    ));
    // Types, modes, sizes, link targets and mtimes too, not only contents. (A directory's
    // size is the filesystem's own business, so it is left out.)
    let listing = |p: &Path| {
        format!(
            "<(cd '{0}' && (find . ! -type d -printf '%p %y %m %s %l %T@\\n'; find . -type d -printf '%p %m %T@\\n') | sort)",
            p.display()
        )
    };
    let differences = sh(&format!(
        "diff {} {} | head -20 || true",
        listing(a),
        listing(b)
    ));
    assert!(
        differences.is_empty(),
        "metadata differs between {} and {}:\n{differences}",
        a.display(),
        b.display()
    );
}

#[test]
fn cp_tar_git_rsync_round_trip_and_survive_remount() {
    let sample = sample_tree(2000);
    let table = unique_table("Tools");
    let m = mount_table(&table, "");
    let mnt = m.path().display().to_string();
    let src = sample.display().to_string();

    sh(&format!("cp -a '{src}' '{mnt}/cp'"));
    same_tree(&sample, &m.join("cp"));

    sh(&format!(
        "tar --format=posix -C '{src}' -cf - . | tar -C '{mnt}' --one-top-level=tarred -xf -"
    ));
    let back = tempfile::tempdir().unwrap();
    sh(&format!(
        "tar --format=posix -C '{mnt}/tarred' -cf - . | tar -C '{}' -xf -",
        back.path().display()
    ));
    same_tree(&sample, back.path());

    sh(&format!("rsync -a '{src}/' '{mnt}/rsynced/'"));
    let out = tempfile::tempdir().unwrap();
    sh(&format!(
        "rsync -a '{mnt}/rsynced/' '{}/'",
        out.path().display()
    ));
    same_tree(&sample, out.path());
    // A second rsync finds nothing to transfer.
    let again = sh(&format!(
        "rsync -a --itemize-changes '{src}/' '{mnt}/rsynced/'"
    ));
    assert!(again.trim().is_empty(), "rsync saw changes: {again}");

    let git = format!(
        "cd '{mnt}' && mkdir repo && cd repo && git init -q && git config user.email t@example.com && git config user.name t \
         && cp -a '{src}/.' . && git add -A && git commit -qm first && echo change >> new.txt && git add new.txt \
         && git commit -qm second && git status --porcelain && git fsck --full 2>&1 && git log --oneline | wc -l"
    );
    let out = sh(&git);
    assert!(
        out.trim_end().ends_with('2'),
        "git log should show two commits: {out}"
    );

    m.unmount();
    let m = mount_table(&table, "");
    same_tree(&sample, &m.join("cp"));
    same_tree(&sample, &m.join("rsynced"));
    let status = sh(&format!("cd '{}/repo' && git status --porcelain && git fsck --full 2>&1 && git log --oneline | wc -l", m.path().display()));
    assert_eq!(status.trim(), "2", "repository after remount: {status}");
    fs::remove_dir_all(&sample).unwrap();
}

#[test]
fn two_mounts_share_files_and_exactly_one_mkdir_wins() {
    let table = unique_table("Shared");
    let a = mount_table(&table, "");
    let b = mount_table(&table, "");
    let content: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|i: u32| (i * 7 % 251) as u8)
        .collect();
    fs::write(a.join("written-on-a"), &content).unwrap();
    assert_eq!(
        fs::read(b.join("written-on-a")).unwrap(),
        content,
        "close-to-open: B reads A's whole file"
    );
    fs::write(b.join("written-on-a"), b"B replaced it").unwrap();
    assert_eq!(fs::read(a.join("written-on-a")).unwrap(), b"B replaced it");

    for round in 0..20 {
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<bool> = [
            a.join(&format!("race{round}")),
            b.join(&format!("race{round}")),
        ]
        .into_iter()
        .map(|path| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                match fs::create_dir(&path) {
                    Ok(()) => true,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
                        false
                    }
                }
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
        assert_eq!(
            results.iter().filter(|won| **won).count(),
            1,
            "round {round}: exactly one mkdir succeeds"
        );
    }
}
