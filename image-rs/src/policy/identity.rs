//! Image references as containers-policy.json(5) sees them: the scopes a reference falls under,
//! and the `signedIdentity` rules that decide whether a signature's claimed reference matches the
//! image being pulled.

use oci_client::Reference;

use super::PolicyError;

/// A normalised docker reference: `registry/repository` plus a tag or a digest (a digest wins
/// when both are given, as the pull itself is by digest then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Named {
    pub fn from_reference(r: &Reference) -> Named {
        let digest = r.digest().map(str::to_string);
        Named {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: if digest.is_some() {
                None
            } else {
                r.tag().map(str::to_string)
            },
            digest,
        }
    }

    /// Parses a reference as written in a signature or a policy (`latest` when neither a tag
    /// nor a digest is given).
    pub fn parse(s: &str) -> Result<Named, String> {
        crate::registry::reference::parse(s)
            .map(|r| Named::from_reference(&r))
            .map_err(|e| format!("`{s}` is not a docker reference: {e}"))
    }

    /// Parses a reference as a signature claims it: without a tag or digest it names only the
    /// repository (cosign signs `registry/repository`, tagless).
    pub fn parse_claimed(s: &str) -> Result<Named, String> {
        let mut n = Named::parse(s)?;
        let last = s.rsplit('/').next().unwrap_or(s);
        if !last.contains(':') && !last.contains('@') {
            n.tag = None;
        }
        Ok(n)
    }

    /// `registry/repository`.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` or `registry/repository@digest`.
    pub fn full(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.repository_name()),
            (None, Some(t)) => format!("{}:{t}", self.repository_name()),
            (None, None) => self.repository_name(),
        }
    }

    /// The policy scopes this reference falls under, most specific first: the full reference,
    /// the repository, each parent namespace, the registry, then `*.domain` wildcards of the
    /// registry's host name.
    pub fn scopes(&self) -> Vec<String> {
        let mut out = vec![self.full()];
        let mut name = self.repository_name();
        loop {
            out.push(name.clone());
            match name.rfind('/') {
                Some(i) => name.truncate(i),
                None => break,
            }
        }
        let host = self.registry.split(':').next().unwrap_or_default();
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() > 1 && host.parse::<std::net::IpAddr>().is_err() {
            for i in 1..labels.len() {
                out.push(format!("*.{}", labels[i..].join(".")));
            }
        }
        out
    }
}

/// How a signature's claimed reference must relate to the pulled image (`signedIdentity`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedIdentity {
    /// Same reference; for references by digest, the same repository (the default).
    MatchRepoDigestOrExact,
    /// The same reference, tag or digest included.
    MatchExact,
    /// The same repository, any tag.
    MatchRepository,
    /// The signature must claim exactly this reference.
    ExactReference(Named),
    /// The signature must claim this repository.
    ExactRepository(String),
    /// Images under `prefix` were signed under `signed_prefix`; then as `MatchRepoDigestOrExact`.
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

impl SignedIdentity {
    pub fn from_json(v: Option<&serde_json::Value>) -> Result<SignedIdentity, PolicyError> {
        let Some(v) = v else {
            return Ok(SignedIdentity::MatchRepoDigestOrExact);
        };
        let bad = |d: String| PolicyError::Invalid(format!("signedIdentity: {d}"));
        let field = |name: &str| {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| bad(format!("`{name}` is missing or not a string")))
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("matchRepoDigestOrExact") => Ok(SignedIdentity::MatchRepoDigestOrExact),
            Some("matchExact") => Ok(SignedIdentity::MatchExact),
            Some("matchRepository") => Ok(SignedIdentity::MatchRepository),
            Some("exactReference") => {
                let r = field("dockerReference")?;
                let named = Named::parse(&r).map_err(bad)?;
                Ok(SignedIdentity::ExactReference(named))
            }
            Some("exactRepository") => {
                let r = field("dockerRepository")?;
                let named = Named::parse(&r).map_err(bad)?;
                Ok(SignedIdentity::ExactRepository(named.repository_name()))
            }
            Some("remapIdentity") => Ok(SignedIdentity::RemapIdentity {
                prefix: field("prefix")?,
                signed_prefix: field("signedPrefix")?,
            }),
            Some(other) => Err(bad(format!("unknown type `{other}`"))),
            None => Err(bad("`type` is missing".into())),
        }
    }

    /// Whether a signature claiming `signed` is acceptable for `image`; the reason when not.
    pub fn check(&self, image: &Named, signed: &Named) -> Result<(), String> {
        let ok = match self {
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(image, signed),
            SignedIdentity::MatchExact => image == signed,
            SignedIdentity::MatchRepository => image.repository_name() == signed.repository_name(),
            SignedIdentity::ExactReference(want) => want == signed,
            SignedIdentity::ExactRepository(want) => *want == signed.repository_name(),
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let full = image.full();
                match remap(&full, prefix, signed_prefix) {
                    Some(mapped) => {
                        let mapped = Named::parse(&mapped)?;
                        repo_digest_or_exact(&mapped, signed)
                    }
                    None => repo_digest_or_exact(image, signed),
                }
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the signature claims `{}`, which does not match `{}` under {}",
                signed.full(),
                image.full(),
                self.name()
            ))
        }
    }

    fn name(&self) -> &'static str {
        match self {
            SignedIdentity::MatchRepoDigestOrExact => "matchRepoDigestOrExact",
            SignedIdentity::MatchExact => "matchExact",
            SignedIdentity::MatchRepository => "matchRepository",
            SignedIdentity::ExactReference(_) => "exactReference",
            SignedIdentity::ExactRepository(_) => "exactRepository",
            SignedIdentity::RemapIdentity { .. } => "remapIdentity",
        }
    }
}

fn repo_digest_or_exact(image: &Named, signed: &Named) -> bool {
    if image.digest.is_some() {
        image.repository_name() == signed.repository_name()
    } else {
        image == signed
    }
}

/// `full` with `prefix` replaced by `signed_prefix`, when `prefix` ends at a name boundary.
fn remap(full: &str, prefix: &str, signed_prefix: &str) -> Option<String> {
    let rest = full.strip_prefix(prefix)?;
    let boundary = rest.is_empty()
        || prefix.ends_with('/')
        || rest.starts_with('/')
        || rest.starts_with(':')
        || rest.starts_with('@');
    boundary.then(|| format!("{signed_prefix}{rest}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn scopes_go_from_the_reference_to_wildcards() {
        let n = Named::parse("registry.example.com/team/app/web:v1").unwrap();
        assert_eq!(
            n.scopes(),
            [
                "registry.example.com/team/app/web:v1",
                "registry.example.com/team/app/web",
                "registry.example.com/team/app",
                "registry.example.com/team",
                "registry.example.com",
                "*.example.com",
                "*.com",
            ]
        );
        let short = Named::parse("busybox").unwrap();
        assert_eq!(short.scopes()[0], "docker.io/library/busybox:latest");
        let ip = Named::parse(&format!("127.0.0.1:5000/app@{D}")).unwrap();
        assert_eq!(
            ip.scopes(),
            [
                format!("127.0.0.1:5000/app@{D}"),
                "127.0.0.1:5000/app".into(),
                "127.0.0.1:5000".into()
            ]
        );
    }

    #[test]
    fn repo_digest_or_exact_needs_the_tag_unless_pulled_by_digest() {
        let id = SignedIdentity::MatchRepoDigestOrExact;
        let signed = Named::parse("r.io/app:v1").unwrap();
        id.check(&Named::parse("r.io/app:v1").unwrap(), &signed)
            .unwrap();
        let err = id
            .check(&Named::parse("r.io/app:v2").unwrap(), &signed)
            .unwrap_err();
        assert!(err.contains("r.io/app:v1") && err.contains("matchRepoDigestOrExact"));
        id.check(&Named::parse(&format!("r.io/app@{D}")).unwrap(), &signed)
            .unwrap();
        id.check(&Named::parse(&format!("r.io/other@{D}")).unwrap(), &signed)
            .unwrap_err();
    }

    #[test]
    fn cosign_claims_name_only_the_repository() {
        let claimed = Named::parse_claimed("localhost:15381/tobby/fixture").unwrap();
        assert_eq!(claimed.tag, None);
        assert_eq!(claimed.full(), "localhost:15381/tobby/fixture");
        let image = Named::parse("localhost:15381/tobby/fixture:v1").unwrap();
        SignedIdentity::MatchRepository
            .check(&image, &claimed)
            .unwrap();
        // matchRepoDigestOrExact needs the tag to be signed too.
        SignedIdentity::MatchRepoDigestOrExact
            .check(&image, &claimed)
            .unwrap_err();
        let tagged = Named::parse_claimed("r.io/app:v1").unwrap();
        assert_eq!(tagged.tag.as_deref(), Some("v1"));
    }

    #[test]
    fn the_other_identities() {
        let image = Named::parse("r.io/app:v2").unwrap();
        let signed = Named::parse("r.io/app:v1").unwrap();
        SignedIdentity::MatchExact
            .check(&image, &signed)
            .unwrap_err();
        SignedIdentity::MatchRepository
            .check(&image, &signed)
            .unwrap();
        SignedIdentity::ExactReference(Named::parse("r.io/app:v1").unwrap())
            .check(&image, &signed)
            .unwrap();
        SignedIdentity::ExactRepository("r.io/app".into())
            .check(&image, &signed)
            .unwrap();
        SignedIdentity::ExactRepository("r.io/else".into())
            .check(&image, &signed)
            .unwrap_err();
        let remap = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/app".into(),
            signed_prefix: "r.io/app".into(),
        };
        remap
            .check(&Named::parse("mirror.local/app:v1").unwrap(), &signed)
            .unwrap();
        remap
            .check(&Named::parse("mirror.local/apple:v1").unwrap(), &signed)
            .unwrap_err();
    }

    #[test]
    fn identities_parse_from_json() {
        let v = serde_json::json!({"type": "exactReference", "dockerReference": "r.io/a:1"});
        assert_eq!(
            SignedIdentity::from_json(Some(&v)).unwrap(),
            SignedIdentity::ExactReference(Named::parse("r.io/a:1").unwrap())
        );
        let v = serde_json::json!({"type": "remapIdentity", "prefix": "a"});
        let e = SignedIdentity::from_json(Some(&v)).unwrap_err().to_string();
        assert!(e.contains("signedPrefix"), "{e}");
        let v = serde_json::json!({"type": "matchSomething"});
        assert!(SignedIdentity::from_json(Some(&v)).is_err());
        assert_eq!(
            SignedIdentity::from_json(None).unwrap(),
            SignedIdentity::MatchRepoDigestOrExact
        );
    }
}
