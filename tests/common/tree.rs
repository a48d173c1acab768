//! Compare two folder trees attribute by attribute: what a restore must
//! keep (GNU tar as root, `--xattrs --acls`, is the reference). Walks with
//! descriptor-relative calls, so paths longer than PATH_MAX work.
#![allow(dead_code)]

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What is compared for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    pub kind: &'static str,
    /// Permission bits with set-id and sticky (none for symlinks).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// mtime in nanoseconds since the epoch (folders and symlinks too).
    pub mtime_ns: i128,
    pub size: u64,
    /// SHA-256 of a file's content; a symlink's target.
    pub content: String,
    /// Device numbers of device nodes.
    pub rdev: (u32, u32),
    /// xattrs, ACLs included (as `system.posix_acl_*`), sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The first path (in walk order) of this entry's inode, for hard links.
    pub link_group: String,
}

/// Options for [`snapshot`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ignore {
    /// Leave out owners (a restore as non-root).
    pub owners: bool,
}

/// Every entry under `root` (not `root` itself), by relative path.
pub fn snapshot(root: &Path, ignore: Ignore) -> BTreeMap<String, Attrs> {
    let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    // The walk recurses per level: give it a stack for deep trees.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(512 << 20)
            .spawn_scoped(s, || {
                let mut out = BTreeMap::new();
                let mut inodes = HashMap::new();
                walk(&fd, "", &mut out, &mut inodes, ignore);
                out
            })
            .unwrap()
            .join()
            .unwrap()
    })
}

fn walk(
    dir: &OwnedFd,
    prefix: &str,
    out: &mut BTreeMap<String, Attrs>,
    inodes: &mut HashMap<(u64, u64), String>,
    ignore: Ignore,
) {
    let mut names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    for n in names {
        let rel = format!("{prefix}{}", String::from_utf8_lossy(&n).escape_debug());
        let st = rustix::fs::statat(dir, &n[..], AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let ft = FileType::from_raw_mode(st.st_mode);
        let first = inodes
            .entry((st.st_dev, st.st_ino))
            .or_insert_with(|| rel.clone())
            .clone();
        let mut a = Attrs {
            kind: match ft {
                FileType::RegularFile => "file",
                FileType::Directory => "dir",
                FileType::Symlink => "symlink",
                FileType::Fifo => "fifo",
                FileType::CharacterDevice => "char",
                FileType::BlockDevice => "block",
                _ => "other",
            },
            mode: if ft == FileType::Symlink {
                0
            } else {
                st.st_mode & 0o7777
            },
            uid: if ignore.owners { 0 } else { st.st_uid },
            gid: if ignore.owners { 0 } else { st.st_gid },
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            size: if ft == FileType::Directory {
                0
            } else {
                st.st_size as u64
            },
            content: String::new(),
            rdev: match ft {
                FileType::CharacterDevice | FileType::BlockDevice => {
                    (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev))
                }
                _ => (0, 0),
            },
            xattrs: Vec::new(),
            link_group: first,
        };
        match ft {
            FileType::RegularFile => {
                let fd = rustix::fs::openat(
                    dir,
                    &n[..],
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .unwrap();
                let mut f = std::fs::File::from(fd);
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = std::io::Read::read(&mut f, &mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                a.content = hex::encode(h.finalize());
                a.xattrs = xattrs(f.as_fd());
            }
            FileType::Symlink => {
                a.content = String::from_utf8_lossy(
                    rustix::fs::readlinkat(dir, &n[..], Vec::new())
                        .unwrap()
                        .as_bytes(),
                )
                .into_owned();
                // The link's own xattrs (the /proc path of an O_PATH |
                // O_NOFOLLOW descriptor names the link, not its target).
                let fd =
                    rustix::fs::openat(dir, &n[..], OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())
                        .unwrap();
                use std::os::fd::AsRawFd;
                a.xattrs = xattrs_by_path(&format!("/proc/self/fd/{}", fd.as_raw_fd()));
            }
            FileType::Directory => {
                let sub = rustix::fs::openat(
                    dir,
                    &n[..],
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .unwrap();
                a.xattrs = xattrs(sub.as_fd());
                out.insert(rel.clone(), a);
                walk(&sub, &format!("{rel}/"), out, inodes, ignore);
                continue;
            }
            FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
                // Never opened for reading (a FIFO blocks): through the
                // /proc path of an O_PATH descriptor.
                let fd =
                    rustix::fs::openat(dir, &n[..], OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())
                        .unwrap();
                use std::os::fd::AsRawFd;
                let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
                a.xattrs = xattrs_by_path(&via);
            }
            _ => {}
        }
        out.insert(rel, a);
    }
}

fn xattrs(fd: rustix::fd::BorrowedFd<'_>) -> Vec<(String, Vec<u8>)> {
    sorted_xattrs(
        |buf| rustix::fs::flistxattr(fd, buf).unwrap_or(0),
        |name, buf| rustix::fs::fgetxattr(fd, name, buf).unwrap(),
    )
}

/// The xattrs of the node a `/proc/self/fd/N` path names (an `O_PATH`
/// descriptor: a FIFO, device or the symlink itself).
fn xattrs_by_path(p: &str) -> Vec<(String, Vec<u8>)> {
    sorted_xattrs(
        |buf| rustix::fs::listxattr(p, buf).unwrap_or(0),
        |name, buf| rustix::fs::getxattr(p, name, buf).unwrap(),
    )
}

fn sorted_xattrs(
    list: impl Fn(&mut [u8]) -> usize,
    get: impl Fn(&[u8], &mut [u8]) -> usize,
) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = list(&mut names[..]);
    let mut v: Vec<(String, Vec<u8>)> = names[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        // security.selinux and the like belong to the machine, not the tree.
        .filter(|n| !n.starts_with(b"security.selinux"))
        .map(|name| {
            let mut val = vec![0u8; 65536];
            let k = get(name, &mut val[..]);
            val.truncate(k);
            (String::from_utf8_lossy(name).into_owned(), val)
        })
        .collect();
    v.sort();
    v
}

/// Differences between two snapshots, one line each (empty when equal).
pub fn diff(a: &BTreeMap<String, Attrs>, b: &BTreeMap<String, Attrs>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => d.push(format!("{k}: missing")),
            Some(vb) if va != vb => d.push(format!("{k}:\n  want {va:?}\n  got  {vb:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        d.push(format!("{k}: extra"));
    }
    d
}

/// Assert two trees are the same, naming every difference.
pub fn assert_same(want: &Path, got: &Path, ignore: Ignore) {
    let d = diff(&snapshot(want, ignore), &snapshot(got, ignore));
    assert!(
        d.is_empty(),
        "{} and {} differ:\n{}",
        want.display(),
        got.display(),
        d.join("\n")
    );
}
