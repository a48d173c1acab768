//! Folder packing: files, folders and symlinks as a tar stream (names,
//! modes, mtimes, symlink targets, empty folders, non-UTF-8 names), and
//! unpacking it safely.
//!
//! Unpacking refuses, rather than skips, any entry that would land outside
//! the target folder: absolute paths, `..`, or a path through a symlink the
//! archive itself created. Only files, folders and symlinks are unpacked.
//!
//! Must never: follow a symlink while packing or unpacking.

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

fn refuse(what: String) -> Error {
    Error::ArchiveCorrupt { what }
}

/// The name a sealed path is stored under: its last component.
fn top_name(p: &Path) -> Result<OsString> {
    if let Some(n) = p.file_name() {
        return Ok(n.to_owned());
    }
    // ".", "..", "/": use the real folder's name.
    let canon = p.canonicalize().map_err(|e| Error::io(p, e))?;
    canon.file_name().map(|n| n.to_owned()).ok_or_else(|| {
        Error::Usage(format!(
            "{}: cannot seal the root folder by that name",
            p.display()
        ))
    })
}

/// Write `paths` as a tar stream into `w`. Each path is stored under its
/// own name; two paths with the same name are refused. `exclude` (the
/// archive being written) is left out if it lies inside a sealed folder.
pub fn pack<W: Write>(paths: &[PathBuf], w: W, exclude: Option<&Path>) -> Result<W> {
    use std::os::unix::fs::MetadataExt;
    let exclude = exclude
        .and_then(|p| p.metadata().ok())
        .map(|m| (m.dev(), m.ino()));
    let mut names = BTreeSet::new();
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for p in paths {
        let name = top_name(p)?;
        if !names.insert(name.clone()) {
            return Err(Error::Usage(format!(
                "two paths are named {}; seal them from different folders or in separate archives",
                Path::new(&name).display()
            )));
        }
        add(&mut b, p, Path::new(&name), exclude)?;
    }
    b.into_inner().map_err(|e| Error::io("<archive output>", e))
}

fn add<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    exclude: Option<(u64, u64)>,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = path.symlink_metadata().map_err(|e| Error::io(path, e))?;
    if exclude == Some((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let ft = meta.file_type();
    let err = |e| Error::io(path, e);
    if ft.is_dir() {
        b.append_dir(name, path).map_err(err)?;
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(err)?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(err)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            add(b, &e.path(), &name.join(e.file_name()), exclude)?;
        }
        Ok(())
    } else if ft.is_file() || ft.is_symlink() {
        b.append_path_with_name(path, name).map_err(err)
    } else {
        Err(Error::Refused(format!(
            "{}: not a file, folder or symlink (sockets, fifos and devices are not sealed)",
            path.display()
        )))
    }
}

/// Check an entry's path: relative, no `..`, not empty.
fn check_path(path: &Path) -> Result<()> {
    let mut any = false;
    for c in path.components() {
        match c {
            Component::Normal(_) => any = true,
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(format!(
                    "entry {} goes up with `..`: refusing to write outside the target folder",
                    path.display()
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(format!(
                    "entry {} is an absolute path: refusing to write outside the target folder",
                    path.display()
                )));
            }
        }
    }
    if !any {
        return Err(refuse("an entry has an empty path".into()));
    }
    Ok(())
}

/// Refuse a path whose folders (inside `dst`) include a symlink.
fn check_no_symlink_parents(dst: &Path, path: &Path) -> Result<()> {
    let mut cur = dst.to_path_buf();
    if let Some(parent) = path.parent() {
        for c in parent.components() {
            cur.push(c);
            if cur
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(refuse(format!(
                    "entry {} goes through a symlink: refusing to write outside the target folder",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Unpack a tar stream into the (new, empty) folder `dst`.
pub fn unpack<R: Read>(r: R, dst: &Path) -> Result<()> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_mtime(true);
    ar.set_preserve_permissions(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let io_err = |e| Error::io(dst, e);
    let mut dirs: Vec<(PathBuf, u32, Option<u64>)> = Vec::new();
    for entry in ar.entries().map_err(io_err)? {
        let mut e = entry.map_err(io_err)?;
        let path = e.path().map_err(io_err)?.into_owned();
        check_path(&path)?;
        check_no_symlink_parents(dst, &path)?;
        let kind = e.header().entry_type();
        if kind.is_dir() {
            let full = dst.join(&path);
            std::fs::create_dir_all(&full).map_err(|e| Error::io(&full, e))?;
            let mode = e.header().mode().unwrap_or(0o755);
            dirs.push((full, mode, e.header().mtime().ok()));
        } else if kind.is_file() || kind.is_symlink() {
            if !e.unpack_in(dst).map_err(io_err)? {
                return Err(refuse(format!(
                    "entry {} would land outside the target folder",
                    path.display()
                )));
            }
        } else {
            return Err(refuse(format!(
                "entry {} is of a type coffer does not unpack ({:?})",
                path.display(),
                kind
            )));
        }
    }
    // Folder modes and times last (deepest first), so a read-only folder
    // does not stop its own contents from being written.
    for (dir, mode, mtime) in dirs.into_iter().rev() {
        use std::os::unix::fs::PermissionsExt;
        if let Some(t) = mtime {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
            let f = std::fs::File::open(&dir).map_err(|e| Error::io(&dir, e))?;
            f.set_modified(when).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| Error::io(&dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(if kind.is_file() { 2 } else { 0 });
            h.set_mode(0o644);
            // Write the raw name, bypassing the builder's own checks, as a
            // hostile archive would.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            let data: &[u8] = if kind.is_file() { b"hi" } else { b"" };
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack_err(t: Vec<u8>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out");
        std::fs::create_dir(&dst).unwrap();
        let e = unpack(&t[..], &dst).unwrap_err();
        assert!(matches!(e, Error::ArchiveCorrupt { .. }), "{e}");
        // Nothing escaped.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        e.to_string()
    }

    #[test]
    fn dot_dot_is_refused() {
        let e = unpack_err(tar_with(&[("a/../../evil", tar::EntryType::Regular, None)]));
        assert!(e.contains(".."), "{e}");
    }

    #[test]
    fn absolute_paths_are_refused() {
        let e = unpack_err(tar_with(&[("/tmp/evil", tar::EntryType::Regular, None)]));
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_owned();
        let e = unpack_err(tar_with(&[
            ("link", tar::EntryType::Symlink, Some(&target)),
            ("link/evil", tar::EntryType::Regular, None),
        ]));
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn devices_and_hard_links_are_refused() {
        unpack_err(tar_with(&[("dev", tar::EntryType::Char, None)]));
        unpack_err(tar_with(&[(
            "hl",
            tar::EntryType::Link,
            Some("/etc/passwd"),
        )]));
    }
}
