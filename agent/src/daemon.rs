//! The daemon's life: bind every listener, serve, report readiness, wait for a stop signal,
//! drain, and record it all in the audit log.

use std::sync::Arc;
use std::time::Duration;

use ttrpc::asynchronous::Server;

use crate::attestation::{Attestation, AttestationSetupError};
use crate::audit::{Audit, AuditError, AuditLog};
use crate::config::{AfterSelfCheck, Config, Listener, Protocol};
use crate::listen::{self, ListenAddr, ListenError};
use crate::selfcheck::{SelfCheckError, SelfCheckReport};
use crate::services::{self, Context, DaemonState, Mode, RequestPolicy};
use crate::systemd::Notifier;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The audit log could not be opened or written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A ttrpc server would not start.
    #[error("{addr}: cannot start serving: {source}")]
    Serve {
        addr: ListenAddr,
        #[source]
        source: ttrpc::Error,
    },
    /// The TEE or KBS settings cannot be used.
    #[error(transparent)]
    Attestation(#[from] AttestationSetupError),
    /// The image settings cannot be used (a key file, the store directory).
    #[error("images: {0}")]
    Images(String),
    /// The boot initdata does not match what the TEE measured (or cannot be checked).
    #[error("initdata: {0}")]
    InitData(String),
    /// The settings could not be extended into the runtime measurement.
    #[error("measuring the settings: {0}")]
    Measurement(String),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The start-up self-check failed (`ward.self_check=poweroff`).
    #[error("self-check failed: {0}")]
    SelfCheck(#[source] crate::selfcheck::SelfCheckError),
}

enum Running {
    Ttrpc {
        addr: ListenAddr,
        server: Server,
    },
    Http {
        addr: ListenAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    },
}

impl Running {
    fn addr(&self) -> &ListenAddr {
        match self {
            Running::Ttrpc { addr, .. } | Running::Http { addr, .. } => addr,
        }
    }
}

/// Serves `config` until SIGTERM or SIGINT, then drains in-flight requests for at most
/// `config.shutdown_timeout`. Must run inside a tokio runtime.
pub async fn run(config: &Config, mode: Mode) -> Result<(), DaemonError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(DaemonError::Signals)?;

    let audit = Audit::new(match &config.audit_log {
        Some(path) => {
            let mut log = AuditLog::open(path)?;
            if let Some(target) = &config.audit_export {
                let exporter = crate::audit::export::Exporter::start(target).map_err(|source| {
                    AuditError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                log = log.with_export(exporter);
            }
            Some(Arc::new(log))
        }
        None => None,
    });
    let state = Arc::new(DaemonState::new(mode));
    let attestation = Arc::new(Attestation::from_config(config, audit.clone()).await?);
    match attestation.bind_boot_initdata().await {
        Ok(Some(binding)) => tracing::info!(?binding, "initdata bound to the launch measurement"),
        Ok(None) => {}
        Err(e) => return Err(DaemonError::InitData(e.to_string())),
    }
    // Before anything attests: a verifier must see which KBS and switches this guest runs with.
    match attestation.measure_settings().await {
        Ok(done) => tracing::debug!(?done, "settings measured"),
        Err(e) => return Err(DaemonError::Measurement(e.to_string())),
    }
    match attestation.tee() {
        Ok(tee) => {
            tracing::info!(%tee, kbs = config.kbs.as_ref().map(|k| k.url.as_str()), "attestation ready")
        }
        Err(e) => tracing::warn!(error = %e, "attestation unavailable"),
    }
    if attestation.has_gpus() && config.kbs.is_some() {
        // GPUs get no work until the KBS accepted them: attest now rather than at first use.
        let a = attestation.clone();
        tokio::spawn(async move {
            match a.make_gpus_ready().await {
                Ok(()) => tracing::info!("GPUs attested by the KBS and set ready"),
                Err(e) => tracing::error!(error = %e, "GPUs left not ready"),
            }
        });
    }
    let images = Arc::new(
        crate::images::Images::new(&config.images, attestation.clone(), audit.clone())
            .map_err(|e| DaemonError::Images(e.to_string()))?,
    );
    let models = Arc::new(crate::models::Models::new(
        &config.models,
        audit.clone(),
        &config.engine_dir,
    ));
    let serving = crate::inference_api::openai::Serving::default();
    let inference = Arc::new(crate::inference_api::Shared {
        e2e: Arc::new(crate::inference_api::e2e::E2e {
            key: ward_e2e::ServerKey::generate(config.e2e_suite),
            attestation: attestation.clone(),
        }),
        serving: serving.clone(),
        models: models.clone(),
        audit: audit.clone(),
    });
    let secure_mounts = Arc::new(crate::secure_mount::SecureMounts::new(
        attestation.clone(),
        audit.clone(),
        crate::secure_mount::SecureMountSettings {
            allow_file_keys: config.secure_mount_file_keys,
            ..Default::default()
        },
    ));
    let ctx = Context {
        inference,
        secure_mounts,
        daemon: state.clone(),
        attestation: attestation.clone(),
        images: images.clone(),
    };
    let policy = RequestPolicy {
        max_duration: config.request_timeout,
        max_stream_duration: config.stream_timeout,
    };

    // Every socket is bound before any is served: kata-agent launches wardd and looks for the
    // CDH socket once (Kata 4 extension images, `rootfs/kata-extension/`), and a client that
    // connects as soon as a socket exists waits in the listen backlog until serving starts,
    // instead of being refused while later listeners are still being bound.
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        match bind(l).await {
            Ok(b) => bound.push((l, b)),
            Err(e) => {
                for (l, _) in &bound {
                    listen::cleanup(&l.addr);
                }
                return Err(e);
            }
        }
    }
    state.set_serving(true);
    let mut running = Vec::with_capacity(bound.len());
    let mut pending = bound.into_iter();
    while let Some((l, b)) = pending.next() {
        let name = l.addr.to_string();
        match serve(l, b, &name, &ctx, policy).await {
            Ok(r) => running.push(r),
            Err(e) => {
                stop_all(&mut running, config.shutdown_timeout).await;
                listen::cleanup(&l.addr);
                for (l, _) in pending {
                    listen::cleanup(&l.addr);
                }
                return Err(e);
            }
        }
        let served: Vec<_> = l.services.iter().map(|s| s.config_name()).collect();
        let inference = l.services.contains(&crate::config::ServiceKind::Inference);
        tracing::info!(addr = %l.addr, protocol = ?l.protocol, services = ?served,
            encrypted_only = inference.then_some(l.encrypted_only), "listening");
        if inference && !l.encrypted_only && !l.addr.is_in_guest() {
            tracing::warn!(addr = %l.addr, "plaintext inference on vsock: prompts and answers \
                in clear are visible to the host (encrypted_only = false)");
        }
    }

    let listeners: Vec<_> = running.iter().map(|r| r.addr().to_string()).collect();
    audit.record(
        "agent.start",
        "wardd",
        serde_json::json!({
            "version": crate::VERSION,
            "mode": mode.as_str(),
            "listeners": listeners,
        }),
    )?;
    let head_measurer = {
        let (a, log) = (attestation.clone(), audit.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AUDIT_HEAD_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                measure_audit_head(&a, &log).await;
            }
        })
    };
    let notifier = Notifier::from_env();
    if let Err(e) = notifier.notify("READY=1\nSTATUS=serving") {
        tracing::warn!(error = %e, "could not tell systemd we are ready");
    }
    let watchdog = notifier.watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let n = Notifier::from_env();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = n.notify("WATCHDOG=1") {
                    tracing::warn!(error = %e, "watchdog ping failed");
                }
            }
        })
    });
    tracing::info!(
        version = crate::VERSION,
        mode = mode.as_str(),
        "wardd ready"
    );
    if mode == Mode::Pid1 {
        // On the console with the kernel's timestamp: boot tests measure boot-to-ready by it.
        crate::init::kmsg(5, "wardd: ready");
    }
    if !config.models.is_empty() {
        // Models load after READY: the APIs serve meanwhile, and a model that fails to load
        // is reported (audit, logs) without taking wardd down.
        let (m, i, a) = (models.clone(), images.clone(), attestation.clone());
        tokio::spawn(async move { m.load_all(&i, &a, &serving).await });
    }

    let (check, stop_after_check) = match &config.self_check {
        Some(settings) => {
            let poweroff = settings.then == AfterSelfCheck::PowerOff;
            let (listeners, settings, a, i) = (
                config.listeners.clone(),
                settings.clone(),
                attestation.clone(),
                images.clone(),
            );
            let timeout = config.request_timeout;
            let task = tokio::spawn(async move {
                let outcome = crate::selfcheck::run(&listeners, &settings, &a, &i, timeout).await;
                report_self_check(&outcome, mode);
                outcome
            });
            (Some(task), poweroff)
        }
        None => (None, false),
    };
    let mut check_failure = None;
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        outcome = self_check_done(check), if stop_after_check => {
            check_failure = outcome.err();
            "self-check done"
        }
    };
    tracing::info!(signal, "stopping");
    let _ = notifier.notify("STOPPING=1\nSTATUS=stopping");
    if let Some(w) = watchdog {
        w.abort();
    }
    state.set_serving(false);
    stop_all(&mut running, config.shutdown_timeout).await;
    head_measurer.abort();
    audit.record(
        "agent.stop",
        "wardd",
        serde_json::json!({ "signal": signal }),
    )?;
    measure_audit_head(&attestation, &audit).await;
    if let Some(audit) = audit.log() {
        let (head, entries) = audit.head();
        tracing::info!(path = %audit.path().display(), entries, head, "audit log closed");
    }
    tracing::info!("wardd stopped");
    match check_failure {
        Some(e) => Err(DaemonError::SelfCheck(e)),
        None => Ok(()),
    }
}

/// How often the audit chain's head is extended into the runtime measurement while serving.
const AUDIT_HEAD_EVERY: Duration = Duration::from_secs(3600);

/// Extends the audit chain's head (its hash and entry count) into the runtime measurement, so
/// the log can be held against the evidence: entries cut off the end, which the chain alone
/// cannot show, no longer go unseen. The measurement itself adds a `runtime.extend` entry after
/// the head it names. Done hourly and at stop; a failure is logged (the log stays verifiable).
async fn measure_audit_head(attestation: &Attestation, audit: &Audit) {
    let Some(log) = audit.log() else {
        return;
    };
    let (head, entries) = log.head();
    let content = serde_json::json!({"head": head, "entries": entries}).to_string();
    match attestation
        .extend_runtime_measurement("github.com/ward", "AuditHead", &content, None)
        .await
    {
        Ok(done) => tracing::debug!(?done, entries, head, "audit head measured"),
        Err(e) => tracing::warn!(error = %e, "the audit head could not be measured"),
    }
}

/// The self-check's outcome; a task that died counts as a failure, and no task never ends.
async fn self_check_done(
    task: Option<tokio::task::JoinHandle<Result<SelfCheckReport, SelfCheckError>>>,
) -> Result<SelfCheckReport, SelfCheckError> {
    match task {
        Some(t) => match t.await {
            Ok(outcome) => outcome,
            Err(e) => Err(SelfCheckError::Aborted(e.to_string())),
        },
        None => std::future::pending().await,
    }
}

fn report_self_check(outcome: &Result<SelfCheckReport, SelfCheckError>, mode: Mode) {
    let line = match outcome {
        Ok(r) => {
            tracing::info!(
                healthy = ?r.healthy,
                inference = ?r.inference,
                resource = r.resource.as_ref().map(|(uri, _)| uri.as_str()),
                bytes = r.resource.as_ref().map(|(_, n)| *n),
                image = r.image.as_ref().map(|(image, _)| image.as_str()),
                "self-check passed"
            );
            "wardd: self-check passed".to_string()
        }
        Err(e) => {
            tracing::error!(error = %e, "self-check failed");
            format!("wardd: self-check failed: {e}")
        }
    };
    if mode == Mode::Pid1 {
        crate::init::kmsg(if outcome.is_ok() { 5 } else { 3 }, &line);
    }
}

/// A listener's socket, bound and not yet served.
enum BoundListener {
    Ttrpc(listen::Bound),
    Http(listen::HttpListener),
}

async fn bind(l: &Listener) -> Result<BoundListener, DaemonError> {
    Ok(match l.protocol {
        Protocol::Ttrpc => BoundListener::Ttrpc(listen::bind(&l.addr, l.mode)?),
        Protocol::Http => BoundListener::Http(listen::bind_http(&l.addr, l.mode).await?),
    })
}

async fn serve(
    l: &Listener,
    bound: BoundListener,
    name: &str,
    ctx: &Context,
    policy: RequestPolicy,
) -> Result<Running, DaemonError> {
    match bound {
        BoundListener::Ttrpc(bound) => start_ttrpc(l, bound, ctx, policy).await,
        BoundListener::Http(listener) => Ok(start_http(l, listener, name, ctx)),
    }
}

async fn start_ttrpc(
    l: &Listener,
    bound: listen::Bound,
    ctx: &Context,
    policy: RequestPolicy,
) -> Result<Running, DaemonError> {
    let mut server = Server::new()
        .add_listener(bound.listener)
        .register_service(services::services_for(l, ctx, policy));
    server.start().await.map_err(|source| DaemonError::Serve {
        addr: l.addr.clone(),
        source,
    })?;
    Ok(Running::Ttrpc {
        addr: l.addr.clone(),
        server,
    })
}

fn start_http(l: &Listener, listener: listen::HttpListener, name: &str, ctx: &Context) -> Running {
    let inference = l
        .services
        .contains(&crate::config::ServiceKind::Inference)
        .then(|| crate::inference_api::router(&ctx.inference, name, l.encrypted_only));
    let router = crate::http::router(
        ctx.attestation.clone(),
        l.services.clone(),
        name.to_string(),
        l.addr.is_in_guest(),
        inference,
        &ctx.inference.serving,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(crate::http::serve(listener, router, stopped));
    Running::Http {
        addr: l.addr.clone(),
        stop,
        task,
    }
}

/// Stops accepting, lets in-flight requests finish within `deadline`, and removes socket files.
async fn stop_all(running: &mut Vec<Running>, deadline: Duration) {
    let drain = async {
        for r in running.iter_mut() {
            match r {
                Running::Ttrpc { addr, server } => {
                    if let Err(e) = server.shutdown().await {
                        tracing::warn!(%addr, error = %e, "unclean listener shutdown");
                    }
                }
                Running::Http { addr, stop, task } => {
                    let (tx, _) = tokio::sync::oneshot::channel();
                    let _ = std::mem::replace(stop, tx).send(());
                    match task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(%addr, error = %e, "HTTP listener failed"),
                        Err(e) => tracing::warn!(%addr, error = %e, "HTTP listener task failed"),
                    }
                }
            }
        }
    };
    if tokio::time::timeout(deadline, drain).await.is_err() {
        tracing::warn!(?deadline, "in-flight requests did not finish in time");
    }
    for r in running.drain(..) {
        listen::cleanup(r.addr());
    }
}
