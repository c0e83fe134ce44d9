//! [`RemotePath`]: the key of one object, relative to the configured root
//! (a local directory, or an S3 bucket and prefix).
//!
//! Invariants, checked by [`RemotePath::new`] and so true of every value:
//! * non-empty; no leading or trailing `/`; no empty segment (`a//b`);
//! * no `.` or `..` segment, so a key can never name anything outside the
//!   root;
//! * only the characters `A-Z a-z 0-9 . _ - = + @ , :` besides the `/`
//!   separator, so the same key is the same file name under a local root
//!   and the same object key on S3 (nothing is percent-encoded on the way),
//!   and it never clashes with `object_store`'s staging files (`name#N`);
//! * at most 1024 bytes (S3's limit for a key).
//!
//! Not checked, but true of a local root only: a key cannot be both an
//! object and the prefix of another (`a` and `a/b`), since a file is not a
//! directory. Callers keep objects at the leaves of their key layout.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::InvalidPathError;

const MAX_KEY_LEN: usize = 1024;

/// A validated object key relative to the storage root (see the module doc
/// for the rules). Ordered and compared as its string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RemotePath(String);

impl RemotePath {
    /// Validates `key`.
    pub fn new(key: &str) -> Result<Self, InvalidPathError> {
        let bad = |reason| Err(InvalidPathError { path: key.to_string(), reason });
        if key.is_empty() {
            return bad("empty");
        }
        if key.len() > MAX_KEY_LEN {
            return bad("longer than 1024 bytes");
        }
        if key.starts_with('/') {
            return bad("absolute (leading '/')");
        }
        if key.ends_with('/') {
            return bad("trailing '/'");
        }
        for segment in key.split('/') {
            match segment {
                "" => return bad("empty segment ('//')"),
                "." | ".." => return bad("'.' or '..' segment"),
                _ => {}
            }
            if !segment.bytes().all(allowed_byte) {
                return bad("characters other than A-Z a-z 0-9 . _ - = + @ , : and '/'");
            }
        }
        Ok(RemotePath(key.to_string()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self/rest`, where `rest` may itself hold several segments.
    pub fn join(&self, rest: &str) -> Result<Self, InvalidPathError> {
        RemotePath::new(&format!("{}/{rest}", self.0))
    }

    /// The last segment.
    pub fn object_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The key as `object_store` spells it (relative to the store's root).
    pub(crate) fn to_object_path(&self) -> object_store::path::Path {
        // Every allowed character is one that object_store keeps as is.
        object_store::path::Path::parse(&self.0).expect("a RemotePath is a valid object_store path")
    }
}

fn allowed_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'=' | b'+' | b'@' | b',' | b':')
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemotePath({:?})", self.0)
    }
}

impl FromStr for RemotePath {
    type Err = InvalidPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RemotePath::new(s)
    }
}

impl TryFrom<String> for RemotePath {
    type Error = InvalidPathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RemotePath::new(&s)
    }
}

impl From<RemotePath> for String {
    fn from(p: RemotePath) -> String {
        p.0
    }
}

impl AsRef<str> for RemotePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_layer_like_keys() {
        for k in [
            "a",
            "tenants/0123abcd/timelines/89ef/index_part.json-00000001",
            "000000067F-000000067F__0000000001696070-00000000016960E9",
            "x/y=1,z+2@host:5/.hidden",
        ] {
            let p = RemotePath::new(k).unwrap();
            assert_eq!(p.as_str(), k);
            assert_eq!(p.to_object_path().as_ref(), k);
        }
        assert_eq!(RemotePath::new("a/b").unwrap().object_name(), "b");
        assert_eq!(RemotePath::new("a").unwrap().join("b/c").unwrap().as_str(), "a/b/c");
    }

    #[test]
    fn rejects_escapes_and_oddities() {
        for k in [
            "", "/abs", "../x", "a/../x", "a/..", "./a", "a/./b", "a//b", "a/", "a\\b", "a b", "a#1", "a%20", "a~",
            "é",
        ] {
            let e = RemotePath::new(k).unwrap_err();
            assert_eq!(e.path, k);
            assert!(e.to_string().starts_with("invalid remote path"), "{e}");
        }
        assert!(RemotePath::new(&"a".repeat(1025)).is_err());
        assert!(RemotePath::new("a").unwrap().join("../b").is_err());
    }

    #[test]
    fn serde_validates() {
        let p: RemotePath = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(p.as_str(), "a/b");
        assert!(serde_json::from_str::<RemotePath>("\"../b\"").is_err());
    }
}
