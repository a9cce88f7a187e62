//! Engines wardd starts (`[[model]] engine = "llama-server" | "vllm" | "sglang"`) or reaches
//! (`engine = "openai"`): the process, its weights and its health. The front's side (routes,
//! encryption, audit, forwarding) is `inference_api::openai::upstream`.
//!
//! A started engine gets the opened weights through sealed memfds ([`weights`]), listens on a
//! loopback port wardd picked, and is ready once it answers `GET /v1/models`; its output goes
//! to wardd's log (each line cut to 400 characters; the presets turn request logging off, so
//! no prompt is printed by them, but a custom `command` is the operator's to keep quiet). When
//! it exits it is restarted after a backoff (1 s doubling to 30 s) unless `restart = false`;
//! meanwhile requests get 503. It is killed when wardd stops.
//!
//! Never: weights on a disk, a non-loopback engine address, an engine serving before its
//! weights were checked against the pinned digests.

pub mod weights;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use ward_image::model_artifact::LoadedModel;

use crate::config::{ConnectedEngine, StartedEngine};
use crate::inference_api::openai::upstream::Upstream;
use weights::Weights;

/// The longest engine output line logged.
const LINE_KEPT: usize = 400;

/// Why an engine could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("weights handoff: {0}")]
    Weights(String),
    #[error("engine command: {0}")]
    Command(String),
    #[error("engine `{program}` did not start: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the engine exited before it served ({0})")]
    Exited(String),
    #[error("the engine did not answer GET /v1/models within {0} s")]
    NotReady(u64),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// A started engine: the front's handle and the task that keeps it running.
pub struct Started {
    pub upstream: Arc<Upstream>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for Started {
    fn drop(&mut self) {
        // The child is killed with its task (kill_on_drop).
        self.supervisor.abort();
    }
}

/// Reaches an engine already running at `c.upstream`; ready once it answers.
pub async fn connect(
    name: &str,
    c: &ConnectedEngine,
    capacity: usize,
) -> Result<Arc<Upstream>, ExternalError> {
    let up = Upstream::new(
        name,
        &c.upstream,
        c.upstream_model.clone(),
        c.request_timeout,
        capacity,
    )
    .map_err(|e| ExternalError::Client(e.to_string()))?;
    let up = Arc::new(up);
    let deadline = tokio::time::Instant::now() + c.request_timeout;
    while !up.probe().await {
        if tokio::time::Instant::now() >= deadline {
            return Err(ExternalError::NotReady(c.request_timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    up.set_up(true);
    Ok(up)
}

/// Starts the engine of `name` on `model`'s opened weights and waits until it serves.
pub async fn start(
    name: &str,
    model: &LoadedModel,
    s: &StartedEngine,
    capacity: usize,
    run_dir: &Path,
) -> Result<Started, ExternalError> {
    let weights = Arc::new(Weights::open(model, &run_dir.join(name))?);
    let up = Arc::new(
        Upstream::new(
            name,
            "http://127.0.0.1:0",
            s.upstream_model.clone(),
            s.request_timeout,
            capacity,
        )
        .map_err(|e| ExternalError::Client(e.to_string()))?,
    );
    let plan = Plan {
        name: name.to_string(),
        settings: s.clone(),
        weights,
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let supervisor = tokio::spawn(supervise(plan, up.clone(), ready_tx));
    match ready_rx.await {
        Ok(Ok(())) => Ok(Started {
            upstream: up,
            supervisor,
        }),
        Ok(Err(e)) => {
            supervisor.abort();
            Err(e)
        }
        Err(_) => {
            supervisor.abort();
            Err(ExternalError::Exited("the supervisor stopped".into()))
        }
    }
}

struct Plan {
    name: String,
    settings: StartedEngine,
    weights: Arc<Weights>,
}

/// Runs the engine, restarting it as its settings say. Reports the first start on `ready`.
async fn supervise(
    plan: Plan,
    up: Arc<Upstream>,
    ready: tokio::sync::oneshot::Sender<Result<(), ExternalError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = run_once(&plan, &up, &mut ready).await;
        up.set_up(false);
        match outcome {
            Err(e) => {
                tracing::error!(model = %plan.name, error = %e, "engine failed");
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            Ok(status) => {
                tracing::warn!(model = %plan.name, %status, "engine exited");
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(ExternalError::Exited(status)));
                    return;
                }
            }
        }
        if !plan.settings.restart {
            tracing::error!(model = %plan.name, "engine not restarted (restart = false)");
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        tracing::info!(model = %plan.name, "restarting the engine");
    }
}

/// One run of the engine: spawn, wait for readiness (reported once), wait for the exit.
async fn run_once(
    plan: &Plan,
    up: &Upstream,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), ExternalError>>>,
) -> Result<String, ExternalError> {
    let port = free_port()?;
    let argv = fill(&plan.settings.command, plan, port)?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| ExternalError::Command("empty".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    // Only the GPUs the model names (none for a CPU engine).
    let visible: Vec<String> = plan.settings.gpus.iter().map(ToString::to_string).collect();
    cmd.env("CUDA_VISIBLE_DEVICES", visible.join(","));
    let fds = plan.weights.inherit();
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl and
    // dup2, which are async-signal-safe; the source fds are parked above every target fd, so no
    // dup2 overwrites a source still to be copied, and the targets come out without FD_CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            // The engine goes with wardd, even when wardd is killed outright.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (from, to) in &fds {
                if libc::dup2(*from, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (mut child, _owned) =
        crate::init::spawn_owned(&mut cmd).map_err(|source| ExternalError::Spawn {
            program: program.clone(),
            source,
        })?;
    tracing::info!(model = %plan.name, pid = child.id(), port, "engine started");
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let name = plan.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let cut: String = line.chars().take(LINE_KEPT).collect();
                tracing::info!(target: "ward_agent::engine", model = %name, "{cut}");
            }
        });
    }
    up.set_base(&format!("http://127.0.0.1:{port}"));
    let deadline = tokio::time::Instant::now() + plan.settings.ready_timeout;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Ok(status);
            }
            // A probe is a refused connect until the engine listens: cheap enough to ask often,
            // and each interval is start-up time the model is not served (bench-engine).
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if up.probe().await {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(ExternalError::NotReady(
                plan.settings.ready_timeout.as_secs(),
            ));
        }
    }
    up.set_up(true);
    tracing::info!(model = %plan.name, port, "engine serving");
    if let Some(tx) = ready.take() {
        let _ = tx.send(Ok(()));
    }
    let status = child
        .wait()
        .await
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    Ok(status)
}

/// A free loopback port (bound, read, released: the engine binds it next).
fn free_port() -> Result<u16, ExternalError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ExternalError::Command(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ExternalError::Command(format!("no free port: {e}")))
}

/// The command line with its placeholders filled in.
fn fill(command: &[String], plan: &Plan, port: u16) -> Result<Vec<String>, ExternalError> {
    let model = plan.weights.main_file();
    let dir: PathBuf = plan.weights.dir().to_path_buf();
    let mut out = Vec::with_capacity(command.len());
    for word in command {
        let w = word
            .replace("{model_dir}", &dir.to_string_lossy())
            .replace("{model}", &model.to_string_lossy())
            .replace("{port}", &port.to_string())
            .replace("{host}", "127.0.0.1")
            .replace("{gpus}", &plan.settings.gpus.len().max(1).to_string())
            .replace("{name}", &plan.name);
        out.push(w);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
