//! Extended attributes and POSIX ACLs of an open file, read for packing
//! and written back at unpacking.
//!
//! ACLs live in the kernel as the binary xattrs `system.posix_acl_access`
//! and `system.posix_acl_default`; tar stores them as text
//! (`SCHILY.acl.access`: `user::rw-,user:1000:r--,group::r--,mask::r--,other::---`).
//! This module converts between the two: one place for the format.
//! Named entries are written with numeric ids; names are accepted when
//! read, as `setfacl` and GNU tar accept them.

use super::owner;
use super::tar::Entry;
use rustix::fd::BorrowedFd;

const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";
/// The version in the binary ACL xattr header.
const ACL_VERSION: u32 = 2;
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
/// Largest xattr list or value read (Linux's own limit is 64 KiB).
const MAX_XATTR: usize = 64 * 1024;

/// Binary ACL (kernel form) → tar's text form; `None` if malformed.
pub fn acl_to_text(bin: &[u8]) -> Option<Vec<u8>> {
    let (head, rest) = bin.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*head) != ACL_VERSION || rest.len() % 8 != 0 {
        return None;
    }
    let mut parts = Vec::new();
    for e in rest.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let p = format!(
            "{}{}{}",
            if perm & 4 != 0 { 'r' } else { '-' },
            if perm & 2 != 0 { 'w' } else { '-' },
            if perm & 1 != 0 { 'x' } else { '-' }
        );
        parts.push(match tag {
            TAG_USER_OBJ => format!("user::{p}"),
            TAG_USER => format!("user:{id}:{p}"),
            TAG_GROUP_OBJ => format!("group::{p}"),
            TAG_GROUP => format!("group:{id}:{p}"),
            TAG_MASK => format!("mask::{p}"),
            TAG_OTHER => format!("other::{p}"),
            _ => return None,
        });
    }
    Some(parts.join(",").into_bytes())
}

/// tar's text form → binary ACL, entries in the order the kernel wants.
/// Names are looked up in this system's user database.
pub fn acl_from_text(text: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "an ACL that is not text".to_string())?;
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for part in text.split([',', '\n']) {
        let part = part.split('#').next().unwrap_or("").trim();
        if part.is_empty() {
            continue;
        }
        let mut f = part.split(':');
        let (Some(tag), Some(q), Some(perm), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            return Err(format!(
                "an ACL entry {part:?} that is not tag:qualifier:perms"
            ));
        };
        let mut bits = 0u16;
        for c in perm.chars() {
            bits |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return Err(format!("an ACL entry {part:?} with bad permissions")),
            };
        }
        let named = |lookup: fn(&[u8]) -> Option<u32>| -> Result<u32, String> {
            q.parse::<u32>()
                .ok()
                .filter(|&id| id != UNDEFINED_ID)
                .or_else(|| lookup(q.as_bytes()))
                .ok_or_else(|| format!("an ACL entry for {q:?}, which this system does not know"))
        };
        let (t, id) = match (tag, q.is_empty()) {
            ("user" | "u", true) => (TAG_USER_OBJ, UNDEFINED_ID),
            ("user" | "u", false) => (TAG_USER, named(owner::user_id)?),
            ("group" | "g", true) => (TAG_GROUP_OBJ, UNDEFINED_ID),
            ("group" | "g", false) => (TAG_GROUP, named(owner::group_id)?),
            ("mask" | "m", true) => (TAG_MASK, UNDEFINED_ID),
            ("other" | "o", true) => (TAG_OTHER, UNDEFINED_ID),
            _ => return Err(format!("an ACL entry {part:?} of unknown kind")),
        };
        entries.push((t, id, bits));
    }
    if entries.len() > MAX_XATTR / 8 {
        return Err("an ACL with too many entries".into());
    }
    entries.sort_by_key(|&(t, id, _)| (t, id));
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for (t, id, p) in entries {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// Where xattrs are read from: an open file or folder, or (for a FIFO or
/// device, which is not opened for reading: that could block or act) the
/// `/proc/self/fd/N` path of an `O_PATH` descriptor to it.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// An open file or folder.
    Fd(BorrowedFd<'a>),
    /// `/proc/self/fd/N` of an `O_PATH` descriptor.
    Proc(&'a std::path::Path),
}

impl Source<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            Source::Fd(fd) => rustix::fs::flistxattr(*fd, buf),
            Source::Proc(p) => rustix::fs::listxattr(*p, buf),
        }
    }

    fn list_into(&self, buf: &mut Vec<u8>) -> rustix::io::Result<usize> {
        match self {
            Source::Fd(fd) => rustix::fs::flistxattr(*fd, rustix::buffer::spare_capacity(buf)),
            Source::Proc(p) => rustix::fs::listxattr(*p, rustix::buffer::spare_capacity(buf)),
        }
    }

    fn get_into(&self, name: &[u8], buf: &mut Vec<u8>) -> rustix::io::Result<usize> {
        match self {
            Source::Fd(fd) => rustix::fs::fgetxattr(*fd, name, rustix::buffer::spare_capacity(buf)),
            Source::Proc(p) => rustix::fs::getxattr(*p, name, rustix::buffer::spare_capacity(buf)),
        }
    }
}

/// Fill `e.xattrs` and its ACLs from the open file `fd`. Attributes that
/// cannot be read are left out (tar does the same).
pub fn read(fd: BorrowedFd<'_>, e: &mut Entry, is_dir: bool) {
    read_from(Source::Fd(fd), e, is_dir)
}

/// [`read`], from any [`Source`].
pub fn read_from(src: Source<'_>, e: &mut Entry, is_dir: bool) {
    // Most files have no xattrs: a small buffer on the stack answers them
    // in one call; the kernel says ERANGE when a list needs more.
    let mut small = [0u8; 1024];
    let mut big = Vec::new();
    let list: &[u8] = match src.list(&mut small[..]) {
        Ok(0) => return,
        Ok(n) => &small[..n],
        Err(rustix::io::Errno::RANGE) => {
            big.reserve_exact(MAX_XATTR);
            match src.list_into(&mut big) {
                Ok(_) => &big,
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"system.")
            && name != ACL_ACCESS.as_bytes()
            && name != ACL_DEFAULT.as_bytes()
        {
            // Other system.* names are file-system internals (tar skips
            // them too).
            continue;
        }
        let mut value = Vec::with_capacity(MAX_XATTR);
        if src.get_into(name, &mut value).is_err() {
            continue;
        }
        value.shrink_to_fit();
        if name == ACL_ACCESS.as_bytes() {
            e.acl_access = acl_to_text(&value);
        } else if name == ACL_DEFAULT.as_bytes() {
            if is_dir {
                e.acl_default = acl_to_text(&value);
            }
        } else if !name.contains(&b'=') {
            // '=' cannot be written in a pax key.
            e.xattrs.push((name.to_vec(), value));
        }
    }
}

/// Remove the ACLs the folder `fd` inherited when it was made (a default
/// ACL on the folder above it): else every entry restored into it would
/// inherit them, and a file stored `0640` could come back readable by a
/// group named in that default ACL. Entries that carry ACLs of their own
/// get them set as stored; the others get their mode alone, as GNU tar
/// `--acls` leaves them. A file system without ACLs has none to remove.
pub fn drop_inherited_acls(fd: BorrowedFd<'_>) {
    for key in [ACL_DEFAULT, ACL_ACCESS] {
        let _ = rustix::fs::fremovexattr(fd, key);
    }
}

/// Set `e`'s xattrs and ACLs on the open file `fd`. Returns what could
/// not be set, for the caller's notices.
pub fn write(fd: BorrowedFd<'_>, e: &Entry) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, value) in &e.xattrs {
        if let Err(err) =
            rustix::fs::fsetxattr(fd, &name[..], value, rustix::fs::XattrFlags::empty())
        {
            failed.push(format!(
                "xattr {} not restored: {err}",
                super::tar::display_bytes(name)
            ));
        }
    }
    for (key, text) in [(ACL_ACCESS, &e.acl_access), (ACL_DEFAULT, &e.acl_default)] {
        let Some(text) = text else { continue };
        match acl_from_text(text) {
            Ok(bin) => {
                if let Err(err) =
                    rustix::fs::fsetxattr(fd, key, &bin, rustix::fs::XattrFlags::empty())
                {
                    failed.push(format!("ACL not restored: {err}"));
                }
            }
            Err(why) => failed.push(format!("ACL not restored: {why}")),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_text_round_trips() {
        let text = b"user::rw-,user:1000:r--,group::r-x,group:50:rwx,mask::rwx,other::---";
        let bin = acl_from_text(text).unwrap();
        assert_eq!(acl_to_text(&bin).unwrap(), text.to_vec());
        // Order, short forms and comments as getfacl and GNU tar print them.
        let messy =
            b"other::---\nmask::rwx\ngroup:50:rwx\ngroup::r-x #effective:r-x\nu:1000:r\nuser::rw";
        assert_eq!(
            acl_to_text(&acl_from_text(messy).unwrap()).unwrap(),
            text.to_vec()
        );
    }

    #[test]
    fn bad_acls_are_refused() {
        for bad in [
            &b"user:1000"[..],
            b"user::rwq",
            b"wheel::rw-",
            b"user:no-such-user-here:r--",
        ] {
            assert!(
                acl_from_text(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(acl_to_text(b"\x01\0\0\0").is_none());
        assert!(acl_to_text(b"\x02\0\0\0\x40\0\0\0\0\0\0\0").is_none());
    }
}
