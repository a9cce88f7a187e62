//! wardd, the agent inside a confidential VM, and the library behind the `ward` CLI.
//!
//! Layout, by concept:
//! - [`config`]: the TOML file, `ward.*` kernel command-line overrides, validation;
//! - [`listen`]: listener addresses (`unix://`, `vsock://`) and binding them;
//! - [`services`]: the ttrpc services, per-listener allow-lists, request spans and deadlines;
//! - [`init`]: PID-1 duties (mounts, reaping, power-off on fatal error);
//! - [`systemd`]: `sd_notify` readiness, stopping and watchdog;
//! - [`audit`]: the append-only, hash-chained audit log;
//! - [`http`]: CoCo's api-server-rest paths over in-guest HTTP listeners;
//! - [`inference_api`]: the OpenAI-compatible API (its handlers, and their routes per listener),
//!   end-to-end encryption, the encrypted-only gate and per-request audit entries (HTTP and
//!   ttrpc share it);
//! - [`attestation`]: the TEE, the shared KBS session, runtime measurements (proves and releases);
//! - [`images`]: image pulls into bundles and ocicrypt key unwrapping, keys from the KBS;
//! - [`models`]: the sealed models of `[[model]]`, loaded into guest memory and served;
//! - [`daemon`]: the wiring that runs all of the above until a stop signal;
//! - [`client`]: small clients for wardd's own services (the CLI and tests use them);
//! - [`unseal`]: CoCo sealed secrets (ES256 JWS), verified before use;
//! - [`logging`]: `tracing` output, human or JSON;
//! - [`selfcheck`]: the start-up self-check a booted image runs on itself (`ward.self_check=`).

pub mod access;
pub mod attestation;
pub mod audit;
pub mod client;
pub mod config;
pub mod daemon;
pub mod external;
pub mod http;
pub mod images;
pub mod inference_api;
pub mod init;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod secure_mount;
pub mod selfcheck;
pub mod services;
pub mod systemd;
pub mod unseal;

/// wardd's version, as reported by the health service.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    /// serde_json must sort object members (its map without `preserve_order`): CoCo's replies
    /// that ward reproduces byte for byte (the sample evidence, GetToken's JSON) are sorted so,
    /// and the KBS binding hashes JSON both sides serialise. A dependency that turns
    /// `preserve_order` on for the whole build (dcap-qvl's `std` feature did) breaks both.
    #[test]
    fn json_objects_serialise_sorted() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).unwrap_or_default();
        assert_eq!(v.to_string(), r#"{"a":{"c":3,"d":2},"b":1}"#);
    }
}
