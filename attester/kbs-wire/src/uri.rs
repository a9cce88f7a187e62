//! Resource URIs: `kbs:///repo/type/tag` (the host part is ignored) and
//! `kbs+<plugin>://host/...?query`. A [`ResourceUri`] is valid once constructed: three segments
//! (or more for plugins) matching `[A-Za-z0-9_-]+[A-Za-z0-9_.-]*`, so no `..`, no empty segment.

use std::fmt;

/// Why a resource URI was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    /// Not `kbs://` or `kbs+<plugin>://`.
    #[error("`{0}` is not a KBS resource URI (kbs:///repo/type/tag)")]
    Scheme(String),
    /// A path segment is empty, `.`/`..`, or holds a character the KBS refuses.
    #[error(
        "`{uri}`: path segment `{segment}` is not allowed (letters, digits, _ - and . after the first character)"
    )]
    Segment { uri: String, segment: String },
    /// The plain `kbs` resource path needs exactly repo/type/tag.
    #[error("`{0}`: expected exactly three path segments: repo/type/tag")]
    Shape(String),
}

/// A validated KBS resource URI.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResourceUri {
    plugin: String,
    segments: Vec<String>,
    query: Option<String>,
}

fn segment_ok(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl ResourceUri {
    /// Parses `kbs:///repo/type/tag`, `kbs+plugin://host/a/b?q`, or a bare `repo/type/tag`
    /// (as CoCo's GetResource accepts it).
    pub fn parse(input: &str) -> Result<ResourceUri, UriError> {
        let (plugin, rest) = if let Some(rest) = input.strip_prefix("kbs://") {
            ("resource".to_string(), rest)
        } else if let Some(rest) = input.strip_prefix("kbs+") {
            let (plugin, rest) = rest
                .split_once("://")
                .ok_or_else(|| UriError::Scheme(input.to_string()))?;
            if !segment_ok(plugin) || plugin.contains('.') {
                return Err(UriError::Scheme(input.to_string()));
            }
            (plugin.to_string(), rest)
        } else if !input.contains("://") {
            ("resource".to_string(), input)
        } else {
            return Err(UriError::Scheme(input.to_string()));
        };
        // Drop the host part: everything up to the first '/'. A bare path has none.
        let path_and_query = if input.contains("://") {
            rest.find('/').map_or("", |i| &rest[i..])
        } else {
            rest
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path_and_query, None),
        };
        let path = path.strip_prefix('/').unwrap_or(path);
        let segments: Vec<String> = path.split('/').map(str::to_string).collect();
        for s in &segments {
            if !segment_ok(s) {
                return Err(UriError::Segment {
                    uri: input.to_string(),
                    segment: s.clone(),
                });
            }
        }
        if plugin == "resource" && segments.len() != 3 {
            return Err(UriError::Shape(input.to_string()));
        }
        if let Some(q) = &query
            && q.chars().any(|c| c.is_whitespace() || c == '#')
        {
            return Err(UriError::Scheme(input.to_string()));
        }
        Ok(ResourceUri {
            plugin,
            segments,
            query,
        })
    }

    /// The path under `/kbs/v0/`: `resource/repo/type/tag[?query]`.
    pub fn kbs_path(&self) -> String {
        let mut p = format!("{}/{}", self.plugin, self.segments.join("/"));
        if let Some(q) = &self.query {
            p.push('?');
            p.push_str(q);
        }
        p
    }

    /// `repo/type/tag` (the segments joined).
    pub fn path(&self) -> String {
        self.segments.join("/")
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plugin == "resource" {
            write!(f, "kbs:///{}", self.segments.join("/"))?;
        } else {
            write!(f, "kbs+{}:///{}", self.plugin, self.segments.join("/"))?;
        }
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceUri({self})")
    }
}

impl std::str::FromStr for ResourceUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceUri::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_uris() {
        let cases = [
            (
                "kbs:///default/key/1",
                "resource/default/key/1",
                "kbs:///default/key/1",
            ),
            (
                "kbs://any.host:8080/a/b/c",
                "resource/a/b/c",
                "kbs:///a/b/c",
            ),
            (
                "default/key/1",
                "resource/default/key/1",
                "kbs:///default/key/1",
            ),
            (
                "kbs:///my_repo/type-x/v1.2",
                "resource/my_repo/type-x/v1.2",
                "kbs:///my_repo/type-x/v1.2",
            ),
            ("kbs+pkcs11:///a/b", "pkcs11/a/b", "kbs+pkcs11:///a/b"),
            (
                "kbs:///a/b/c?version=2",
                "resource/a/b/c?version=2",
                "kbs:///a/b/c?version=2",
            ),
        ];
        for (input, path, display) in cases {
            let u = ResourceUri::parse(input).unwrap();
            assert_eq!(u.kbs_path(), path, "{input}");
            assert_eq!(u.to_string(), display, "{input}");
        }
    }

    #[test]
    fn invalid_uris() {
        let cases = [
            "http:///a/b/c",
            "kbs:///a/b",
            "kbs:///a/b/c/d",
            "kbs:///a//c",
            "kbs:///../b/c",
            "kbs:///a/../c",
            "kbs:///a/./c",
            "kbs:///.hidden/b/c",
            "kbs:///a/b/c%2F",
            "kbs:///a/b/ c",
            "kbs:///",
            "kbs://",
            "kbs+:///a/b/c",
            "kbs+x.y:///a/b",
            "a/b",
            "",
        ];
        for input in cases {
            assert!(ResourceUri::parse(input).is_err(), "{input} accepted");
        }
    }
}
