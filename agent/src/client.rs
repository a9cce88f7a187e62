//! Small clients for wardd's own services, used by the `ward` CLI and by tests.

use std::time::Duration;

use ward_protos::ward_health::{CheckRequest, CheckResponse, VersionRequest, VersionResponse};
use ward_protos::ward_health_ttrpc::HealthServiceClient;

/// Why a call to wardd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made to the address.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: ttrpc::Error,
    },
    /// wardd answered with an error status, or the call failed on the way.
    #[error("{method} on {addr} failed: {source}")]
    Call {
        addr: String,
        method: &'static str,
        #[source]
        source: ttrpc::Error,
    },
}

/// A connected health client.
pub struct HealthClient {
    addr: String,
    inner: HealthServiceClient,
    timeout: Duration,
}

impl HealthClient {
    /// Connects to `addr` (`unix:///path` or `vsock://CID:PORT`).
    pub async fn connect(addr: &str, timeout: Duration) -> Result<HealthClient, ClientError> {
        let client = ttrpc::asynchronous::Client::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(HealthClient {
            addr: addr.to_string(),
            inner: HealthServiceClient::new(client),
            timeout,
        })
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX))
    }

    /// `ward.health.HealthService/Check`.
    pub async fn check(&self) -> Result<CheckResponse, ClientError> {
        self.inner
            .check(self.ctx(), &CheckRequest::new())
            .await
            .map_err(|source| ClientError::Call {
                addr: self.addr.clone(),
                method: "Check",
                source,
            })
    }

    /// `ward.health.HealthService/Version`.
    pub async fn version(&self) -> Result<VersionResponse, ClientError> {
        self.inner
            .version(self.ctx(), &VersionRequest::new())
            .await
            .map_err(|source| ClientError::Call {
                addr: self.addr.clone(),
                method: "Version",
                source,
            })
    }
}
