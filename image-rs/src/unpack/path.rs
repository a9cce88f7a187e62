//! Entry paths: the lexical normalization every tar entry name and hard-link target goes through
//! before it touches the filesystem. An [`EntryPath`] is relative, free of `.`, `..`, empty and
//! NUL-bearing components once constructed. This module never touches the filesystem and never
//! silently drops a `..` that would leave the root: such a path is refused.

/// Why a path from the archive was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathRefusal {
    /// Starts with `/`.
    Absolute,
    /// A `..` climbs above the root.
    Escape,
    /// Holds a NUL byte (the C path would be cut short).
    Nul,
}

/// A normalized path relative to the unpack root. Empty means the root itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EntryPath {
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    /// Normalizes `raw` (bytes as stored in the archive): `./a//b/../c` becomes `a/c`.
    pub(crate) fn parse(raw: &[u8]) -> Result<EntryPath, PathRefusal> {
        if raw.contains(&0) {
            return Err(PathRefusal::Nul);
        }
        if raw.first() == Some(&b'/') {
            return Err(PathRefusal::Absolute);
        }
        let mut components: Vec<Vec<u8>> = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if components.pop().is_none() {
                        return Err(PathRefusal::Escape);
                    }
                }
                name => components.push(name.to_vec()),
            }
        }
        Ok(EntryPath { components })
    }

    /// The root itself.
    pub(crate) fn root() -> EntryPath {
        EntryPath {
            components: Vec::new(),
        }
    }

    /// True for the root itself (`./`, `.`).
    pub(crate) fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The last component, or `None` for the root.
    pub(crate) fn file_name(&self) -> Option<&[u8]> {
        self.components.last().map(Vec::as_slice)
    }

    /// The path without its last component (the root's parent is the root).
    pub(crate) fn parent(&self) -> EntryPath {
        let mut components = self.components.clone();
        components.pop();
        EntryPath { components }
    }

    /// Number of components: the root is 0.
    pub(crate) fn depth(&self) -> usize {
        self.components.len()
    }

    /// The components, outermost first.
    pub(crate) fn components(&self) -> &[Vec<u8>] {
        &self.components
    }

    /// The first `n` components (all of them when `n` is larger).
    pub(crate) fn prefix(&self, n: usize) -> EntryPath {
        EntryPath {
            components: self.components.iter().take(n).cloned().collect(),
        }
    }

    /// The path as bytes for `openat2` relative to the root: `.` for the root, else `a/b/c`.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        if self.components.is_empty() {
            return b".".to_vec();
        }
        self.components.join(&b'/')
    }
}

impl std::fmt::Display for EntryPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// A single name that is safe as the last argument of a `*at` call: not empty, not `.`/`..`,
/// no `/` and no NUL.
pub(crate) fn is_plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(raw: &str) -> Result<String, PathRefusal> {
        EntryPath::parse(raw.as_bytes()).map(|p| p.to_string())
    }

    #[test]
    fn normalizes_inside_paths() {
        let cases = [
            ("a", "a"),
            ("./a/b", "a/b"),
            ("a//b/./c/", "a/b/c"),
            ("a/b/../c", "a/c"),
            ("a/..", "."),
            ("./", "."),
            (".", "."),
            ("a/.../b", "a/.../b"),
            ("..a/b..", "..a/b.."),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw), Ok(want.to_string()), "{raw}");
        }
    }

    #[test]
    fn refuses_escapes_and_absolutes() {
        let cases = [
            ("../escape", PathRefusal::Escape),
            ("a/../../escape", PathRefusal::Escape),
            ("./..", PathRefusal::Escape),
            ("a/b/../../..", PathRefusal::Escape),
            ("/abs/path", PathRefusal::Absolute),
            ("/", PathRefusal::Absolute),
            ("//etc", PathRefusal::Absolute),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw), Err(want), "{raw}");
        }
        assert_eq!(EntryPath::parse(b"a\0b"), Err(PathRefusal::Nul));
    }

    #[test]
    fn parent_name_and_prefix() {
        let p = EntryPath::parse(b"a/b/c").unwrap();
        assert_eq!(p.file_name(), Some(&b"c"[..]));
        assert_eq!(p.parent().to_string(), "a/b");
        assert_eq!(p.prefix(1).to_string(), "a");
        assert_eq!(p.depth(), 3);
        let root = EntryPath::parse(b"./").unwrap();
        assert!(root.is_root());
        assert_eq!(root.file_name(), None);
        assert_eq!(root.parent(), root);
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_name(b"passwd"));
        assert!(is_plain_name(b"..."));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever comes in, what comes out is relative and has no `.`/`..`/empty components,
        /// and it is refused exactly when a lexical walk would climb above the root.
        #[test]
        fn normalized_paths_stay_below_root(parts in proptest::collection::vec(
            prop_oneof![Just("..".to_string()), Just(".".to_string()), Just(String::new()),
                        "[a-c]{1,2}"], 0..8),
            absolute in any::<bool>())
        {
            let raw = format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"));
            // An empty first part also makes the joined path start with '/'.
            let absolute = raw.starts_with('/');
            let mut depth: i64 = 0;
            let mut escapes = false;
            for p in &parts {
                match p.as_str() {
                    "" | "." => {}
                    ".." => { depth -= 1; if depth < 0 { escapes = true; } }
                    _ => depth += 1,
                }
            }
            match EntryPath::parse(raw.as_bytes()) {
                Ok(p) => {
                    prop_assert!(!absolute && !escapes);
                    prop_assert_eq!(p.depth() as i64, depth);
                    for c in p.components() {
                        prop_assert!(is_plain_name(c));
                    }
                }
                Err(PathRefusal::Absolute) => prop_assert!(absolute),
                Err(PathRefusal::Escape) => prop_assert!(escapes && !absolute),
                Err(PathRefusal::Nul) => prop_assert!(false, "no NUL in input"),
            }
        }
    }
}
