//! Filesystem without FUSE: random operation sequences applied to dynamofs (on the
//! embedded store) and to an ordinary directory must give the same results, errno
//! for errno, and leave the same tree behind.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use dynamofs::fs::{Caller, Fs, FsConfig, FsError, RenameMode, SetAttr};
use dynamofs::keys::ROOT_INO;
use dynamofs::records::{FileKind, Inode};
use dynamofs::store::embedded::EmbeddedStore;
use proptest::prelude::*;

const ME: Caller = Caller::ROOT;

#[derive(Clone, Debug)]
enum Op {
    Write {
        path: String,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        path: String,
    },
}

fn path() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        name.clone().prop_map(String::from),
        (name.clone(), name).prop_map(|(x, y)| format!("{x}/{y}")),
        prop::sample::select(vec!["l1", "l2"]).prop_map(String::from),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), 0u64..700_000, 0usize..300_000, any::<u8>()).prop_map(|(path, offset, len, byte)| Op::Write { path, offset, len, byte }),
        1 => (path(), 0u64..600_000).prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => path().prop_map(|path| Op::Mkdir { path }),
        1 => path().prop_map(|path| Op::Unlink { path }),
        1 => path().prop_map(|path| Op::Rmdir { path }),
        2 => (path(), path()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => prop::sample::select(vec!["l1", "l2"]).prop_map(|p| Op::Symlink { path: p.to_string() }),
    ]
}

fn os_errno(r: std::io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| e.raw_os_error().expect("an OS error"))
}

/// The operation on an ordinary directory.
fn apply_reference(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |s: &str| root.join(s);
    os_errno(match op {
        Op::Write {
            path,
            offset,
            len,
            byte,
        } => (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(p(path))?;
            f.seek(SeekFrom::Start(*offset))?;
            f.write_all(&vec![*byte; *len])
        })(),
        Op::Truncate { path, size } => fs::OpenOptions::new()
            .write(true)
            .open(p(path))
            .and_then(|f| f.set_len(*size)),
        Op::Mkdir { path } => fs::create_dir(p(path)),
        Op::Unlink { path } => fs::remove_file(p(path)),
        Op::Rmdir { path } => fs::remove_dir(p(path)),
        Op::Rename { from, to } => fs::rename(p(from), p(to)),
        Op::Link { from, to } => fs::hard_link(p(from), p(to)),
        Op::Symlink { path } => std::os::unix::fs::symlink("/nonexistent/target", p(path)),
    })
}

/// Resolve all but the last component; symlinks are dangling (their targets never
/// exist), so following one as a directory gives ENOENT, as the kernel would.
async fn parent_of<'a>(fs: &Fs, path: &'a str) -> Result<(u64, &'a str), i32> {
    let mut dir = ROOT_INO;
    let mut parts: Vec<&str> = path.split('/').collect();
    let leaf = parts.pop().unwrap();
    for part in parts {
        let inode = fs
            .lookup(dir, part.as_bytes())
            .await
            .map_err(|e| e.errno())?;
        match inode.kind {
            FileKind::Dir => dir = inode.ino,
            FileKind::Symlink => return Err(libc::ENOENT),
            _ => return Err(libc::ENOTDIR),
        }
    }
    Ok((dir, leaf))
}

async fn leaf(fs: &Fs, path: &str) -> Result<Option<Inode>, i32> {
    let (dir, name) = parent_of(fs, path).await?;
    match fs.lookup(dir, name.as_bytes()).await {
        Ok(inode) => Ok(Some(inode)),
        Err(FsError::NotFound) => Ok(None),
        Err(e) => Err(e.errno()),
    }
}

/// The same operation on dynamofs, through the filesystem layer.
async fn apply_dynamofs(fs: &Fs, op: &Op) -> Result<(), i32> {
    let errno = |e: FsError| e.errno();
    match op {
        Op::Write {
            path,
            offset,
            len,
            byte,
        } => {
            let fh = match leaf(fs, path).await? {
                Some(inode) if inode.kind == FileKind::Symlink => return Err(libc::ENOENT),
                Some(inode) => {
                    fs.open(ME, inode.ino, libc::O_WRONLY)
                        .await
                        .map_err(errno)?
                        .fh
                }
                None => {
                    let (dir, name) = parent_of(fs, path).await?;
                    fs.create(ME, dir, name.as_bytes(), 0o644, libc::O_WRONLY)
                        .await
                        .map_err(errno)?
                        .1
                        .fh
                }
            };
            let written = fs
                .write(fh, *offset, &vec![*byte; *len])
                .await
                .map_err(errno);
            fs.release(fh).await.map_err(errno)?;
            written.map(|_| ())
        }
        Op::Truncate { path, size } => match leaf(fs, path).await? {
            None => Err(libc::ENOENT),
            Some(inode) if inode.kind == FileKind::Symlink => Err(libc::ENOENT),
            Some(inode) => fs
                .setattr(
                    ME,
                    inode.ino,
                    SetAttr {
                        size: Some(*size),
                        ..SetAttr::default()
                    },
                )
                .await
                .map(|_| ())
                .map_err(errno),
        },
        Op::Mkdir { path } => {
            let (dir, name) = parent_of(fs, path).await?;
            fs.mkdir(ME, dir, name.as_bytes(), 0o755)
                .await
                .map(|_| ())
                .map_err(errno)
        }
        Op::Unlink { path } => {
            let (dir, name) = parent_of(fs, path).await?;
            fs.unlink(dir, name.as_bytes()).await.map_err(errno)
        }
        Op::Rmdir { path } => {
            let (dir, name) = parent_of(fs, path).await?;
            fs.rmdir(dir, name.as_bytes()).await.map_err(errno)
        }
        Op::Rename { from, to } => {
            let (a, an) = parent_of(fs, from).await?;
            let (b, bn) = parent_of(fs, to).await?;
            fs.rename(a, an.as_bytes(), b, bn.as_bytes(), RenameMode::Replace)
                .await
                .map_err(errno)
        }
        Op::Link { from, to } => {
            let source = leaf(fs, from).await?.ok_or(libc::ENOENT)?;
            let (b, bn) = parent_of(fs, to).await?;
            fs.link(source.ino, b, bn.as_bytes())
                .await
                .map(|_| ())
                .map_err(errno)
        }
        Op::Symlink { path } => {
            let (dir, name) = parent_of(fs, path).await?;
            fs.symlink(ME, dir, name.as_bytes(), b"/nonexistent/target")
                .await
                .map(|_| ())
                .map_err(errno)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { content: Vec<u8>, nlink: u64 },
    Dir { nlink: u64 },
    Symlink { target: Vec<u8> },
}

fn snapshot_reference(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            out.insert(
                name.clone(),
                Node::Dir {
                    nlink: meta.nlink(),
                },
            );
            snapshot_reference(&entry.path(), &format!("{name}/"), out);
        } else if meta.file_type().is_symlink() {
            out.insert(
                name,
                Node::Symlink {
                    target: fs::read_link(entry.path())
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                },
            );
        } else {
            out.insert(
                name,
                Node::File {
                    content: fs::read(entry.path()).unwrap(),
                    nlink: meta.nlink(),
                },
            );
        }
    }
}

async fn snapshot_dynamofs(fs: &Fs, dir: u64, prefix: &str, out: &mut BTreeMap<String, Node>) {
    let fh = fs.opendir(dir).await.unwrap();
    let entries = fs.readdir(dir, fh, 0).await.unwrap();
    fs.releasedir(fh);
    for entry in entries.into_iter().skip(2) {
        let name = format!("{prefix}{}", String::from_utf8(entry.name).unwrap());
        let inode = fs.getattr(entry.ino).await.unwrap();
        match inode.kind {
            FileKind::Dir => {
                out.insert(
                    name.clone(),
                    Node::Dir {
                        nlink: inode.nlink as u64,
                    },
                );
                Box::pin(snapshot_dynamofs(fs, inode.ino, &format!("{name}/"), out)).await;
            }
            FileKind::Symlink => {
                out.insert(
                    name,
                    Node::Symlink {
                        target: fs.readlink(inode.ino).await.unwrap(),
                    },
                );
            }
            _ => {
                let opened = fs.open(ME, inode.ino, libc::O_RDONLY).await.unwrap();
                let content = fs.read(opened.fh, 0, inode.size as u32 + 1).await.unwrap();
                fs.release(opened.fh).await.unwrap();
                assert_eq!(content.len() as u64, inode.size);
                out.insert(
                    name,
                    Node::File {
                        content,
                        nlink: inode.nlink as u64,
                    },
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Twice: as a bare filesystem, and as a mount has it, with a session and so
    /// with the leases of the directories it makes, whose creates are deferred.
    #[test]
    fn dynamofs_behaves_like_a_local_directory(
        ops in prop::collection::vec(op(), 1..40),
        leased in any::<bool>(),
    ) {
        let reference = tempfile::tempdir().unwrap();
        let storage = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Arc::new(EmbeddedStore::open(&storage.path().join("fs.db")).unwrap());
            let fs = Arc::new(Fs::new(store, FsConfig::default()).await.unwrap());
            if leased {
                fs.register_session("/model", std::time::Duration::from_secs(60))
                    .await
                    .unwrap();
                fs.spawn_create_settler(&tokio::runtime::Handle::current());
            }
            for (i, op) in ops.iter().enumerate() {
                let expected = apply_reference(reference.path(), op);
                let actual = apply_dynamofs(&fs, op).await;
                prop_assert_eq!(actual, expected, "operation {} {:?}", i, op);
            }
            let (mut want, mut got) = (BTreeMap::new(), BTreeMap::new());
            snapshot_reference(reference.path(), "", &mut want);
            snapshot_dynamofs(&fs, ROOT_INO, "", &mut got).await;
            prop_assert_eq!(got, want);
            Ok(())
        })?;
    }
}
