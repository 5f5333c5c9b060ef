//! The `dynamofs` command, also installed as `/sbin/mount.fuse.dynamo` for
//! `mount -t fuse.dynamo` and `/etc/fstab`.

use std::path::Path;

use clap::Parser;
use dynamofs::cli::{Cli, Command, MountArgs};

/// `mount.fuse.dynamo SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`, as util-linux
/// runs mount helpers. `-f` there means "fake": do everything but mount.
fn helper_args(args: &[String]) -> Result<Option<MountArgs>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-o" => options.push(it.next().ok_or("-o needs a value")?.clone()),
            "-t" | "-N" => {
                it.next();
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s => positional.push(s.to_string()),
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        return Err("usage: mount.fuse.dynamo aws:REGION/TABLE MOUNTPOINT [-o OPTIONS]".into());
    };
    if fake {
        return Ok(None);
    }
    Ok(Some(MountArgs {
        source: source.parse()?,
        mountpoint: mountpoint.into(),
        options,
        foreground: false,
        debug: false,
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if invoked_as.starts_with("mount.") {
        match helper_args(&args) {
            Ok(Some(mount)) => std::process::exit(dynamofs::mount::run(mount)),
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("dynamofs: {e}");
                std::process::exit(1);
            }
        }
    }
    let command = Cli::parse().command;
    if matches!(
        command,
        Command::Status(_) | Command::Stat(_) | Command::Fsck(_)
    ) {
        // A report piped into `head` ends quietly when the reader leaves, as other
        // tools' do, instead of panicking on the closed pipe.
        // SAFETY: restoring a signal's default action at startup, before any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match command {
        Command::Mount(mount) => std::process::exit(dynamofs::mount::run(mount)),
        Command::Mkfs(args) => std::process::exit(dynamofs::mkfs::run(args)),
        Command::Status(status) => std::process::exit(dynamofs::status::run(status)),
        Command::Stat(args) => std::process::exit(dynamofs::stat::run(args)),
        Command::Import(args) => std::process::exit(dynamofs::import::run(args)),
        Command::Export(args) => std::process::exit(dynamofs::export::run(args)),
        Command::Fsck(args) => std::process::exit(dynamofs::status::fsck(args)),
        Command::Simulate(args) => std::process::exit(dynamofs::simulator::run(args)),
    }
}
