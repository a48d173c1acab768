//! Owner names: uid/gid ↔ user/group names through the system's user
//! database (NSS), as tar stores and restores them.

use nix::unistd::{Gid, Group, Uid, User};

/// The name of user `uid`, or empty when it has none.
pub fn user_name(uid: u32) -> Vec<u8> {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name.into_bytes(),
        _ => Vec::new(),
    }
}

/// The name of group `gid`, or empty when it has none.
pub fn group_name(gid: u32) -> Vec<u8> {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name.into_bytes(),
        _ => Vec::new(),
    }
}

/// The uid of user `name`, if this system has one by that name.
pub fn user_id(name: &[u8]) -> Option<u32> {
    let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty())?;
    User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// The gid of group `name`, if this system has one by that name.
pub fn group_id(name: &[u8]) -> Option<u32> {
    let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty())?;
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}
