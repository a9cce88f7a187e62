//! Image references (`[domain/]path[:tag][@digest]`), parsed by hand into oci-client's
//! [`Reference`] with the same result as its own `FromStr` (oci-spec 0.10), without its regex.
//!
//! Why not the crate's parser: oci-spec compiles the distribution grammar as one regex on first
//! use, and its `\w` is Unicode-aware, so the automaton is large. In a pull of a one-file image,
//! heaptrack put 17 of the process's 20.8 MiB of peak heap in that compile, about 7 MiB of it
//! kept for the process's life. A guest's memory is what the workload runs in, and wardd lives
//! as long as the guest.
//!
//! The grammar is distribution's `reference/regexp.go`, the same as oci-spec's regex, with one
//! difference on purpose: a tag's `\w` is ASCII, as in Go's regexp (oci-spec, through Rust's
//! Unicode `\w`, also takes tags such as `ü`, which no registry serves). Normalisation (`docker.io`,
//! `library/`, `latest`) and the checks after the match (name length, digest lengths) follow
//! oci-spec's `TryFrom<&str>`; the tests compare both parsers on generated references.

use oci_client::{ParseError, Reference};

const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Parses `s` as oci-spec's `Reference::from_str` does (ASCII tags only).
pub fn parse(s: &str) -> Result<Reference, ParseError> {
    if s.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    // Neither a name nor a tag holds `@`; a digest holds neither `@` nor `/`.
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    // A `:` in the name is a domain's port, which a `/` follows; the tag holds no `/`.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if !valid_name(name)
        || tag.is_some_and(|t| !valid_tag(t))
        || digest.is_some_and(|d| !valid_digest_syntax(d))
    {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ParseError::NameTooLong);
    }
    if let Some(d) = digest {
        let (algorithm, hex) = d.split_once(':').ok_or(ParseError::DigestInvalidFormat)?;
        let expected = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(ParseError::DigestUnsupported),
        };
        if hex.len() != expected {
            return Err(ParseError::DigestInvalidLength);
        }
    }
    let (tag, digest) = (tag.map(str::to_string), digest.map(str::to_string));
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (t, None) => {
            Reference::with_tag(registry, repository, t.unwrap_or_else(|| "latest".into()))
        }
    })
}

/// `[domain "/"] path`: a path alone, or a domain before the first `/` and a path after it.
fn valid_name(name: &str) -> bool {
    valid_path(name)
        || name
            .split_once('/')
            .is_some_and(|(domain, path)| valid_domain(domain) && valid_path(path))
}

/// `component ("/" component)*`.
fn valid_path(path: &str) -> bool {
    path.split('/').all(valid_path_component)
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*`, a separator being `.`, `_`, `__` or any run of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !b.first().is_some_and(|x| alnum(*x)) || !b.last().is_some_and(|x| alnum(*x)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|x| *x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `component ("." component)* [":" [0-9]+]`, a component being `[a-zA-Z0-9]` or
/// `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|x| x.is_ascii_digit())) {
        return false;
    }
    host.split('.').all(|c| {
        let b = c.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    })
}

/// `[\w][\w.-]{0,127}`, `\w` being ASCII `[0-9A-Za-z_]`.
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    b.first().is_some_and(|x| word(*x))
        && b.len() <= TAG_MAX
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm ":" [0-9a-fA-F]{32,}`, the algorithm being
/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*`.
fn valid_digest_syntax(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        let b = c.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
    };
    hex.len() >= 32
        && hex.bytes().all(|x| x.is_ascii_hexdigit())
        && algorithm.split(['-', '_', '+', '.']).all(component)
}

/// The registry and the repository of a valid name, as distribution's `splitDomain`
/// (normalize.go) and oci-spec's `split_domain`: no domain (no `.` or `:` before the first
/// `/`, and not `localhost`) is Docker Hub, whose one-component names are under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
#[path = "reference_tests.rs"]
mod tests;
