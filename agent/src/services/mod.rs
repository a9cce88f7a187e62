//! The ttrpc services wardd serves and how each listener gets its own set.
//!
//! For every listener, each known service is registered in one of three forms: its real
//! implementation when the listener allows it, an `UNIMPLEMENTED` answer when it is allowed but
//! not built yet (never a fake success), or a `PERMISSION_DENIED` answer when the listener's
//! allow-list excludes it. Every method handler is wrapped by [`guard`], which gives each request
//! a tracing span and a deadline, streaming methods included. Method names come from the
//! generated code, never from a list kept by hand.

mod attestation_agent;
mod data_hub;
mod guard;
mod health;
mod image_pull;
mod inference;
mod sealed_secret;
mod secure_mount;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use ttrpc::asynchronous::Service;
use ward_protos::{
    attestation_agent_ttrpc, confidential_data_hub_ttrpc, keyprovider_ttrpc, ward_health_ttrpc,
    ward_inference_ttrpc,
};

pub use guard::RequestPolicy;
pub use health::{DaemonState, Mode};

use crate::attestation::Attestation;
use crate::config::{Listener, ServiceKind};

/// What the services share: the daemon's state and its attestation side.
pub struct Context {
    pub daemon: Arc<DaemonState>,
    pub attestation: Arc<Attestation>,
    pub images: Arc<crate::images::Images>,
    /// The inference engines of the loaded models, the boot-time HPKE key of encrypted
    /// inference and its attestation.
    pub inference: Arc<crate::inference_api::Shared>,
    /// Encrypted block volumes (`api.SecureMountService`).
    pub secure_mounts: Arc<crate::secure_mount::SecureMounts>,
}

/// The generated service map for `kind` on `listener`, with real implementations where they
/// exist.
fn generated(
    kind: ServiceKind,
    listener: &Listener,
    ctx: &Context,
) -> (HashMap<String, Service>, bool) {
    let allowed = &listener.services;
    match kind {
        ServiceKind::Health => {
            let served = allowed.iter().map(|k| k.ttrpc_name().to_string()).collect();
            let health = health::Health::new(ctx.daemon.clone(), served);
            (
                ward_health_ttrpc::create_health_service(Arc::new(health)),
                true,
            )
        }
        ServiceKind::AttestationAgent => {
            let aa = attestation_agent::AttestationAgent::new(ctx.attestation.clone());
            (
                attestation_agent_ttrpc::create_attestation_agent_service(Arc::new(aa)),
                true,
            )
        }
        ServiceKind::GetResource => {
            let gr = data_hub::GetResource::new(ctx.attestation.clone());
            (
                confidential_data_hub_ttrpc::create_get_resource_service(Arc::new(gr)),
                true,
            )
        }
        ServiceKind::SealedSecret => {
            let u = sealed_secret::Unsealer::new(ctx.attestation.clone());
            (
                confidential_data_hub_ttrpc::create_sealed_secret_service(Arc::new(u)),
                true,
            )
        }
        ServiceKind::SecureMount => {
            let m = secure_mount::SecureMount::new(ctx.secure_mounts.clone());
            (
                confidential_data_hub_ttrpc::create_secure_mount_service(Arc::new(m)),
                true,
            )
        }
        ServiceKind::ImagePull => {
            let puller = image_pull::ImagePuller::new(ctx.images.clone());
            (
                confidential_data_hub_ttrpc::create_image_pull_service(Arc::new(puller)),
                true,
            )
        }
        ServiceKind::KeyProvider => {
            let puller = image_pull::ImagePuller::new(ctx.images.clone());
            (
                keyprovider_ttrpc::create_key_provider_service(Arc::new(puller)),
                true,
            )
        }
        ServiceKind::Inference => {
            // Built only where served: the router holds this listener's settings.
            let router = if allowed.contains(&kind) {
                crate::inference_api::router(
                    &ctx.inference,
                    &listener.addr.to_string(),
                    listener.encrypted_only,
                )
            } else {
                axum::Router::new()
            };
            let service = inference::Inference::new(router);
            (
                ward_inference_ttrpc::create_inference_service(Arc::new(service)),
                true,
            )
        }
        // HTTP only: a ttrpc listener never lists it (config::listeners::check).
        ServiceKind::Metrics => (HashMap::new(), true),
    }
}

/// Builds the service map for one listener, whose address names it in spans and errors.
pub fn services_for(
    l: &Listener,
    ctx: &Context,
    policy: RequestPolicy,
) -> HashMap<String, Service> {
    let allowed = &l.services;
    let listener: Arc<str> = Arc::from(l.addr.to_string());
    let mut out = HashMap::new();
    for kind in ServiceKind::ALL {
        let (map, implemented) = generated(kind, l, ctx);
        let verdict = if !allowed.contains(&kind) {
            guard::Verdict::Denied
        } else if implemented {
            guard::Verdict::Serve
        } else {
            guard::Verdict::Unimplemented
        };
        for (name, service) in map {
            let methods = service
                .methods
                .into_iter()
                .map(|(method, inner)| {
                    let path: Arc<str> = Arc::from(format!("/{name}/{method}"));
                    let handler = guard::Guarded::new(
                        inner,
                        verdict,
                        kind,
                        path,
                        listener.clone(),
                        ctx.daemon.clone(),
                        policy,
                    );
                    (method, Box::new(handler) as guard::Method)
                })
                .collect();
            let streams = service
                .streams
                .into_iter()
                .map(|(method, inner)| {
                    let path: Arc<str> = Arc::from(format!("/{name}/{method}"));
                    let handler = guard::Guarded::new(
                        inner,
                        verdict,
                        kind,
                        path,
                        listener.clone(),
                        ctx.daemon.clone(),
                        policy,
                    );
                    (method, Arc::new(handler) as guard::Stream)
                })
                .collect();
            out.insert(name, Service { methods, streams });
        }
    }
    out
}
