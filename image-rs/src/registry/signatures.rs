//! Sigstore signatures stored beside an image (`<repo>:sha256-<hex>.sig`), fetched for the
//! signature policy from the same place as the image (its mirror, when it came from one).

use async_trait::async_trait;
use oci_client::Reference;

use super::transport::Fetched;
use super::{Descriptor, MAX_MANIFEST, OCI_MANIFEST, Registry};
use crate::digest::Digest;
use crate::policy::SignatureSource;
use crate::policy::sigstore::{
    MAX_PAYLOAD, MAX_SIGNATURES, PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION, UntrustedSignature,
    signature_tag,
};

#[derive(serde::Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[async_trait]
impl SignatureSource for Registry {
    async fn sigstore_signatures(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Vec<UntrustedSignature>, String> {
        let mut at = Reference::with_tag(
            reference.registry().to_string(),
            reference.repository().to_string(),
            signature_tag(digest),
        );
        if reference.namespace().is_some() {
            at.set_mirror_registry(reference.resolve_registry().to_string());
        }
        let tag = signature_tag(digest);
        let bytes = match self
            .transport
            .manifest(&at, &tag, &[OCI_MANIFEST], MAX_MANIFEST)
            .await
        {
            Ok(Fetched::Found(bytes)) => bytes,
            Ok(Fetched::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", at.whole())),
        };
        let manifest: SignatureManifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a signature manifest: {e}", at.whole()))?;
        let mut out = Vec::new();
        for layer in manifest
            .layers
            .iter()
            .filter(|l| l.media_type == PAYLOAD_MEDIA_TYPE)
            .take(MAX_SIGNATURES)
        {
            let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
                continue;
            };
            let d = Digest::parse(&layer.digest)
                .map_err(|e| format!("{}: payload digest: {e}", at.whole()))?;
            if layer.size < 0 || layer.size as u64 > MAX_PAYLOAD {
                return Err(format!(
                    "{}: payload of {} bytes is out of range",
                    at.whole(),
                    layer.size
                ));
            }
            let mut payload = Vec::new();
            self.stream_blob(&at, layer, &d, &mut payload, MAX_PAYLOAD)
                .await
                .map_err(|e| e.to_string())?;
            out.push(UntrustedSignature {
                payload,
                signature_b64: sig.clone(),
            });
        }
        Ok(out)
    }
}
