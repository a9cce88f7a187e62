//! `ward.health.HealthService`, and the daemon state it reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use ttrpc::asynchronous::TtrpcContext;
use ward_protos::ward_health::{
    CheckRequest, CheckResponse, ServingStatus, VersionRequest, VersionResponse,
};
use ward_protos::ward_health_ttrpc::HealthService;

/// How wardd was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a guest (or of a PID namespace).
    Pid1,
    /// A systemd service (`NOTIFY_SOCKET` was set).
    Systemd,
    /// Anything else: a shell, a test, a container.
    Standalone,
}

impl Mode {
    /// The name reported by the health service.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pid1 => "pid1",
            Mode::Systemd => "systemd",
            Mode::Standalone => "standalone",
        }
    }
}

/// State shared by every service: start time, mode, and whether requests are still taken.
#[derive(Debug)]
pub struct DaemonState {
    started: Instant,
    mode: Mode,
    serving: AtomicBool,
    requests: AtomicU64,
}

impl DaemonState {
    /// A daemon that is not serving yet.
    pub fn new(mode: Mode) -> DaemonState {
        DaemonState {
            started: Instant::now(),
            mode,
            serving: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        }
    }

    /// Marks the daemon as serving (after every listener is up) or not (when stopping).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Whether requests are being taken.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// A number for the next request's span.
    pub fn next_request_id(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }

    /// How wardd runs.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

pub(super) struct Health {
    state: Arc<DaemonState>,
    /// ttrpc names of the services the listener that owns this instance serves.
    served: Vec<String>,
}

impl Health {
    pub(super) fn new(state: Arc<DaemonState>, served: Vec<String>) -> Health {
        Health { state, served }
    }
}

#[async_trait]
impl HealthService for Health {
    async fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        let status = if self.state.is_serving() {
            ServingStatus::SERVING_STATUS_SERVING
        } else {
            ServingStatus::SERVING_STATUS_NOT_SERVING
        };
        Ok(CheckResponse {
            status: status.into(),
            version: crate::VERSION.to_string(),
            uptime_ms: u64::try_from(self.state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            mode: self.state.mode.as_str().to_string(),
            ..Default::default()
        })
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: VersionRequest,
    ) -> ttrpc::Result<VersionResponse> {
        Ok(VersionResponse {
            version: crate::VERSION.to_string(),
            // Filled in as wardd learns to speak them (KBS, ocicrypt key providers).
            protocols: Vec::new(),
            services: self.served.clone(),
            ..Default::default()
        })
    }
}
