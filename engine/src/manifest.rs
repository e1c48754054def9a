//! The data model a session transfers: entries (files, directories,
//! symlinks) with ids, kinds, modes, times and sparse data extents; the
//! rule for which relative paths a peer may name and its limits; the
//! receiver's reserved names; and the arithmetic on extents. A leaf: it
//! imports nothing of the crate, so the wire layout, the block queue and
//! the journal all build on it.

/// Longest relative path accepted in a manifest (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest single path component (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// Most data extents one file may list; the sender coalesces beyond that.
pub const MAX_EXTENTS: usize = 1 << 16;

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
}

/// A range of a file that holds data; everything outside is a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// One file, directory or symlink of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index of the entry in the manifest, starting at 0.
    pub id: u32,
    pub kind: EntryKind,
    /// Relative path with `/` separators, validated by [`validate_rel_path`].
    pub path: Vec<u8>,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Logical size (regular files only).
    pub size: u64,
    /// Sorted, non-overlapping data ranges within `size` (regular files only).
    pub extents: Vec<Extent>,
    /// Symlink target, stored verbatim and never followed by the receiver.
    pub link_target: Vec<u8>,
}

impl Entry {
    /// An entry with mode 0644, owner 0:0, mtime 0, and — for a regular file
    /// of `size` bytes — one data extent covering it all.
    pub fn new(id: u32, kind: EntryKind, path: &[u8], size: u64) -> Self {
        let extents = if kind == EntryKind::File && size > 0 { vec![Extent { offset: 0, len: size }] } else { Vec::new() };
        Self {
            id,
            kind,
            path: path.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            size,
            extents,
            link_target: Vec::new(),
        }
    }

    /// Bytes of data (not holes) this entry carries.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|x| x.len).sum()
    }

    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Name of the marker the receiver keeps in its destination until the
/// session is verified and durable; a manifest may not use it.
pub const INCOMPLETE_MARKER: &str = ".sluice-incomplete";

/// Name of the receiver's journal of verified, durable ranges (see
/// the journal module); a manifest may not use it, nor its temporary name.
pub const JOURNAL_FILE: &str = ".sluice-journal";

/// The journal's name while it is rewritten.
pub const JOURNAL_TEMP: &str = ".sluice-journal.tmp";

/// Checks that a peer-supplied path stays inside the destination: relative,
/// no `.` or `..` or empty components, no NUL, bounded lengths, and not the
/// receiver's own marker.
pub fn validate_rel_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PATH {
        return Err("path too long");
    }
    if path[0] == b'/' {
        return Err("absolute path");
    }
    if path.contains(&0) {
        return Err("NUL byte in path");
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("empty path component"),
            b"." | b".." => return Err("`.` or `..` component"),
            c if c.len() > MAX_COMPONENT => return Err("path component too long"),
            _ => {}
        }
    }
    if [INCOMPLETE_MARKER, JOURNAL_FILE, JOURNAL_TEMP].iter().any(|n| path == n.as_bytes()) {
        return Err("reserved name");
    }
    Ok(())
}

/// Merges extents until at most `max` remain, so a badly fragmented sparse
/// file still fits in one manifest entry (merged gaps are sent as zeros).
pub fn coalesce_extents(mut extents: Vec<Extent>, max: usize) -> Vec<Extent> {
    if extents.len() <= max || extents.is_empty() {
        return extents;
    }
    // Merge across the smallest gaps first: pick the gap threshold that
    // leaves at most `max` extents.
    let mut gaps: Vec<u64> = extents.windows(2).map(|w| w[1].offset - (w[0].offset + w[0].len)).collect();
    gaps.sort_unstable();
    let threshold = gaps[extents.len() - max - 1];
    let mut out: Vec<Extent> = Vec::with_capacity(max);
    for x in extents.drain(..) {
        let full = out.len() >= max;
        if let Some(last) = out.last_mut() {
            let gap = x.offset - (last.offset + last.len);
            if gap <= threshold || full {
                last.len = x.offset + x.len - last.offset;
                continue;
            }
        }
        out.push(x);
    }
    out
}

/// `extents` less the ranges of `held` (sorted, non-overlapping): what is
/// left to send of a file whose receiver already holds `held`.
pub fn subtract_extents(extents: &[Extent], held: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::with_capacity(extents.len());
    let mut h = 0;
    for x in extents {
        let (mut at, end) = (x.offset, x.offset + x.len);
        // Skip held ranges that end before this extent.
        while h < held.len() && held[h].offset + held[h].len <= at {
            h += 1;
        }
        let mut k = h;
        while at < end {
            match held.get(k) {
                Some(r) if r.offset < end => {
                    if r.offset > at {
                        out.push(Extent { offset: at, len: r.offset - at });
                    }
                    at = at.max(r.offset + r.len);
                    k += 1;
                }
                _ => {
                    out.push(Extent { offset: at, len: end - at });
                    at = end;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined() {
        assert!(validate_rel_path(b"a/b/c.ibd").is_ok());
        assert!(validate_rel_path("données/é x".as_bytes()).is_ok());
        for bad in
            [&b"/a"[..], b"..", b"a/..", b"a//b", b"a/", b"", b"a\0b", b".sluice-incomplete", b".sluice-journal", b".sluice-journal.tmp"]
        {
            assert!(validate_rel_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_rel_path(&vec![b'x'; 256]).is_err());
    }

    #[test]
    fn subtracting_held_ranges_leaves_the_rest() {
        let x = |offset, len| Extent { offset, len };
        let extents = [x(0, 100), x(200, 50), x(300, 10)];
        assert_eq!(subtract_extents(&extents, &[]), extents.to_vec());
        assert_eq!(subtract_extents(&extents, &[x(0, 100), x(200, 50), x(300, 10)]), vec![]);
        assert_eq!(subtract_extents(&extents, &[x(10, 20), x(90, 120)]), vec![x(0, 10), x(30, 60), x(210, 40), x(300, 10)]);
        assert_eq!(subtract_extents(&extents, &[x(0, 1000)]), vec![]);
        assert_eq!(subtract_extents(&extents, &[x(305, 1)]), vec![x(0, 100), x(200, 50), x(300, 5), x(306, 4)]);
    }

    proptest::proptest! {
        /// Held ranges (any, even outside the data) and what is left to
        /// send partition the extents: every data byte exactly once.
        #[test]
        fn what_is_left_and_what_is_held_cover_each_byte_once(
            cuts in proptest::collection::btree_set(0u64..400, 0..24),
            held_cuts in proptest::collection::btree_set(0u64..400, 0..24),
        ) {
            let pairs = |c: &std::collections::BTreeSet<u64>| -> Vec<Extent> {
                let v: Vec<u64> = c.iter().copied().collect();
                v.chunks_exact(2).filter(|p| p[1] > p[0]).map(|p| Extent { offset: p[0], len: p[1] - p[0] }).collect()
            };
            let (extents, held) = (pairs(&cuts), pairs(&held_cuts));
            let left = subtract_extents(&extents, &held);
            let in_any = |xs: &[Extent], b: u64| xs.iter().filter(|x| x.offset <= b && b < x.offset + x.len).count();
            for b in 0..400 {
                let data = in_any(&extents, b);
                proptest::prop_assert_eq!(in_any(&left, b), usize::from(data == 1 && in_any(&held, b) == 0), "byte {}", b);
            }
            // Each piece lies within one extent, so it can be sent as blocks.
            for x in &left {
                proptest::prop_assert!(extents.iter().any(|e| e.offset <= x.offset && x.offset + x.len <= e.offset + e.len));
            }
        }
    }

    #[test]
    fn coalescing_bounds_extent_count() {
        let x: Vec<Extent> = (0..100).map(|i| Extent { offset: i * 10 + (i % 3), len: 5 }).collect();
        let c = coalesce_extents(x.clone(), 10);
        assert!(c.len() <= 10);
        assert_eq!(c[0].offset, x[0].offset);
        let last = c.last().unwrap();
        assert_eq!(last.offset + last.len, x[99].offset + 5);
        assert!(c.windows(2).all(|w| w[0].offset + w[0].len < w[1].offset));
    }
}
