//! The tar stream inside a folder archive: POSIX pax (ustar headers plus
//! pax extended headers), as GNU tar writes with `--format=posix --xattrs
//! --acls` and reads back (`coffer open -o - | tar -xpf -`).
//!
//! Owns: the byte layout of entries, both directions — [`mod@write`] encodes an
//! [`Entry`], [`read`] parses one with hard limits before any allocation.
//! Walking a folder ([`super::pack`]) and writing a tree
//! ([`super::unpack`]) live elsewhere.
//!
//! Must never: trust a field it read (sizes, counts and lengths are checked
//! against limits and against each other before use), or panic on any
//! input.

pub mod read;
pub mod write;

/// Bytes in a tar block.
pub const BLOCK: usize = 512;

/// Largest pax extended header or GNU long name/link read, bytes. Linux
/// keeps at most 64 KiB of xattrs per file; paths are limited only here.
pub const MAX_EXTENDED: u64 = 1 << 20;

/// Largest number of segments in a sparse map.
pub const MAX_SPARSE_SEGMENTS: u64 = 1 << 20;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (possibly sparse).
    File,
    /// A folder.
    Dir,
    /// A symbolic link; [`Entry::link`] is its target, stored as is.
    Symlink,
    /// A hard link to an earlier entry; [`Entry::link`] is that entry's path.
    HardLink,
    /// A named pipe.
    Fifo,
    /// A character device.
    Char,
    /// A block device.
    Block,
}

impl Kind {
    /// The ustar type flag.
    pub fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }

    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "folder",
            Kind::Symlink => "symlink",
            Kind::HardLink => "hard link",
            Kind::Fifo => "fifo",
            Kind::Char => "character device",
            Kind::Block => "block device",
        }
    }
}

/// A time: seconds since the epoch (negative before 1970) and nanoseconds
/// (always 0..1e9, so -0.5 s is `{ secs: -1, nanos: 500_000_000 }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Whole seconds, rounded towards minus infinity.
    pub secs: i64,
    /// Nanoseconds past `secs`.
    pub nanos: u32,
}

/// One data segment of a sparse file: `len` bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where the segment starts in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// One tar entry's metadata. Its content (for files) follows in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// What it is.
    pub kind: Option<Kind>,
    /// Its path inside the archive, `/`-separated, as raw bytes.
    pub path: Vec<u8>,
    /// Symlink target or hard-link source path.
    pub link: Vec<u8>,
    /// Permission bits including set-id and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Owner's name (may be empty).
    pub uname: Vec<u8>,
    /// Group's name (may be empty).
    pub gname: Vec<u8>,
    /// Modification time.
    pub mtime: Time,
    /// Device numbers, for character and block devices.
    pub dev: (u32, u32),
    /// The file's length (its apparent length, holes included).
    pub size: u64,
    /// Data segments of a sparse file, in order; `None` for a plain file,
    /// whose `size` bytes follow in full.
    pub sparse: Option<Vec<Segment>>,
    /// Extended attributes other than ACLs, by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The access ACL in the long text form (`user::rw-,group::r--,...`).
    pub acl_access: Option<Vec<u8>>,
    /// The default ACL of a folder, same form.
    pub acl_default: Option<Vec<u8>>,
}

impl Entry {
    /// The entry's kind; every parsed or packed entry has one.
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::File)
    }

    /// Content bytes stored in the archive: the whole file, or only a
    /// sparse file's data segments.
    pub fn stored_len(&self) -> u64 {
        match (&self.kind(), &self.sparse) {
            (Kind::File, None) => self.size,
            (Kind::File, Some(s)) => s.iter().map(|s| s.len).sum(),
            _ => 0,
        }
    }
}

/// Bytes as text for a message: lossy UTF-8 with control characters
/// escaped, so a name from an archive cannot drive the terminal.
pub fn display_bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}
