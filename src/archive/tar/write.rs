//! Encoding entries: a ustar header, preceded by a pax extended header
//! (`x`) for whatever ustar cannot hold exactly — long paths and link
//! targets, sub-second or pre-1970 times, large ids and sizes, long owner
//! names, xattrs (`SCHILY.xattr.*`), ACLs (`SCHILY.acl.*`) and sparse maps
//! (GNU's pax format 1.0: `GNU.sparse.*` records, the map at the start of
//! the data).

use super::{BLOCK, Entry, Kind, Time};

/// Largest value of an octal field `width` bytes wide (one byte for NUL).
fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width - 1))) - 1
}

/// Write `v` as zero-padded octal, NUL-terminated, into `field`.
fn put_octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    field[..w].copy_from_slice(&s.as_bytes()[s.len() - w..]);
    field[w] = 0;
}

/// Copy as much of `v` as fits into `field` (NUL-padded).
fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// One pax record: `"<len> <key>=<value>\n"`, where len counts itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// [`pax_record`], for the reader's tests.
#[cfg(test)]
pub(crate) fn pax_record_for_tests(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    pax_record(out, key, value)
}

/// A time as pax writes it: decimal seconds, a fraction only when needed.
pub fn pax_time(t: Time) -> String {
    if t.nanos == 0 {
        return t.secs.to_string();
    }
    // secs + nanos/1e9, with nanos in 0..1e9: -1 s + 0.5 s prints "-0.5".
    if t.secs >= 0 {
        format!("{}.{:09}", t.secs, t.nanos)
    } else {
        let frac = 1_000_000_000 - t.nanos;
        format!("-{}.{frac:09}", -(t.secs + 1))
    }
}

/// A 512-byte ustar header.
fn ustar(name: &[u8], kind_flag: u8, size: u64, e: &Entry, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put_bytes(&mut h[0..100], name);
    put_octal(&mut h[100..108], u64::from(e.mode & 0o7777));
    put_octal(&mut h[108..116], e.uid.min(octal_max(8)));
    put_octal(&mut h[116..124], e.gid.min(octal_max(8)));
    put_octal(&mut h[124..136], size.min(octal_max(12)));
    let secs = u64::try_from(e.mtime.secs).unwrap_or(0);
    put_octal(&mut h[136..148], secs.min(octal_max(12)));
    h[156] = kind_flag;
    put_bytes(&mut h[157..257], link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_bytes(&mut h[265..297], &e.uname);
    put_bytes(&mut h[297..329], &e.gname);
    if matches!(e.kind(), Kind::Char | Kind::Block) {
        put_octal(&mut h[329..337], u64::from(e.dev.0));
        put_octal(&mut h[337..345], u64::from(e.dev.1));
    }
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put_octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    h
}

/// Zero bytes that pad `len` bytes to a whole block.
pub fn padding(len: u64) -> usize {
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// The last component of `path`, for the informative names of pax and
/// sparse headers.
fn base(path: &[u8]) -> &[u8] {
    let p = path.strip_suffix(b"/").unwrap_or(path);
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// Encode `e`: the headers and, for a sparse file, its map, ready to be
/// followed by [`Entry::stored_len`] bytes of content and
/// [`padding`]`(`[`Entry::stored_len`]`)` zero bytes.
pub fn encode(e: &Entry) -> Vec<u8> {
    let (mut out, map) = encode_parts(e);
    out.extend_from_slice(&map);
    out
}

/// [`encode`] in its two parts: the headers (what a reader limits to
/// [`super::MAX_EXTENDED`]), and the sparse map that starts the content
/// (empty unless `e` is sparse; a reader takes up to
/// [`super::MAX_SPARSE_SEGMENTS`] segments there).
pub fn encode_parts(e: &Entry) -> (Vec<u8>, Vec<u8>) {
    let kind = e.kind();
    let mut pax = Vec::new();
    let mut name: Vec<u8> = e.path.clone();
    if kind == Kind::Dir && !name.ends_with(b"/") {
        name.push(b'/');
    }
    let mut map = Vec::new();
    if let (Kind::File, Some(segs)) = (kind, &e.sparse) {
        pax_record(&mut pax, "GNU.sparse.major", b"1");
        pax_record(&mut pax, "GNU.sparse.minor", b"0");
        pax_record(&mut pax, "GNU.sparse.name", &e.path);
        pax_record(
            &mut pax,
            "GNU.sparse.realsize",
            e.size.to_string().as_bytes(),
        );
        map.extend_from_slice(format!("{}\n", segs.len()).as_bytes());
        for s in segs {
            map.extend_from_slice(format!("{}\n{}\n", s.offset, s.len).as_bytes());
        }
        map.resize(map.len() + padding(map.len() as u64), 0);
        let mut n = b"GNUSparseFile.0/".to_vec();
        n.extend_from_slice(base(&e.path));
        name = n;
    } else if name.len() > 100 {
        pax_record(&mut pax, "path", &e.path);
    }
    if e.link.len() > 100 {
        pax_record(&mut pax, "linkpath", &e.link);
    }
    let size = map.len() as u64 + e.stored_len();
    if size > octal_max(12) {
        pax_record(&mut pax, "size", size.to_string().as_bytes());
    }
    let m = e.mtime;
    if m.nanos != 0 || m.secs < 0 || m.secs as u64 > octal_max(12) {
        pax_record(&mut pax, "mtime", pax_time(m).as_bytes());
    }
    if e.uid > octal_max(8) {
        pax_record(&mut pax, "uid", e.uid.to_string().as_bytes());
    }
    if e.gid > octal_max(8) {
        pax_record(&mut pax, "gid", e.gid.to_string().as_bytes());
    }
    if e.uname.len() > 32 {
        pax_record(&mut pax, "uname", &e.uname);
    }
    if e.gname.len() > 32 {
        pax_record(&mut pax, "gname", &e.gname);
    }
    if let Some(a) = &e.acl_access {
        pax_record(&mut pax, "SCHILY.acl.access", a);
    }
    if let Some(a) = &e.acl_default {
        pax_record(&mut pax, "SCHILY.acl.default", a);
    }
    for (k, v) in &e.xattrs {
        // Names are bytes without NUL or '=' (the kernel's rule for
        // names; '=' would end the key).
        let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(k));
        pax_record(&mut pax, &key, v);
    }
    let mut out = Vec::with_capacity(3 * BLOCK + pax.len() + map.len());
    if !pax.is_empty() {
        let mut pname = b"PaxHeaders/".to_vec();
        pname.extend_from_slice(base(&e.path));
        let xe = Entry {
            mode: 0o644,
            kind: Some(Kind::File),
            ..Entry::default()
        };
        out.extend_from_slice(&ustar(&pname, b'x', pax.len() as u64, &xe, b""));
        out.extend_from_slice(&pax);
        out.resize(out.len() + padding(pax.len() as u64), 0);
    }
    out.extend_from_slice(&ustar(&name, kind.flag(), size, e, &e.link));
    (out, map)
}

/// The end-of-archive marker: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", b"a");
        assert_eq!(v, b"9 path=a\n");
        let mut v = Vec::new();
        pax_record(&mut v, "path", &[b'x'; 93]);
        // 93 + "path=" 5 + " " + "\n" = 100, plus "103" = 103.
        assert!(
            v.starts_with(b"103 path="),
            "{}",
            String::from_utf8_lossy(&v)
        );
        assert_eq!(v.len(), 103);
    }

    #[test]
    fn times_before_1970_are_decimal() {
        assert_eq!(
            pax_time(Time {
                secs: -1,
                nanos: 500_000_000
            }),
            "-0.500000000"
        );
        assert_eq!(pax_time(Time { secs: -2, nanos: 0 }), "-2");
        assert_eq!(pax_time(Time { secs: 3, nanos: 7 }), "3.000000007");
    }

    #[test]
    fn checksum_is_valid() {
        let e = Entry {
            kind: Some(Kind::File),
            path: b"a".to_vec(),
            mode: 0o644,
            size: 3,
            ..Entry::default()
        };
        let h = encode(&e);
        assert_eq!(h.len(), BLOCK);
        let mut c = h.clone();
        c[148..156].fill(b' ');
        let sum: u32 = c.iter().map(|&b| u32::from(b)).sum();
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        assert_eq!(sum, stored);
    }
}
