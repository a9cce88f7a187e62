//! wardd's metrics, in the Prometheus/OpenMetrics text format, on `GET /metrics` of HTTP
//! listeners that list the `metrics` service (never in `all`, and never on vsock: the counts
//! and timings describe the guest's work to whoever reads them). `prometheus-client` (the
//! Prometheus project's own Rust client) does the encoding.
//!
//! Labels carry only what the operator chose or a fixed set: outcomes, refusal reasons, request
//! statuses and the names of configured models (a name a client sent for a model wardd does
//! not serve is counted as `unknown`, so clients cannot grow the label set). Never a prompt, a
//! secret, a resource path or a client key.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::inference_api::openai::{Backend, Serving};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    /// The HTTP status class: `2xx`, `4xx`, `5xx`.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every metric wardd keeps.
pub struct Metrics {
    registry: Registry,
    kbs_handshakes: Family<OutcomeLabel, Counter>,
    kbs_handshake_seconds: Histogram,
    kbs_resources: Family<OutcomeLabel, Counter>,
    image_pulls: Family<OutcomeLabel, Counter>,
    image_pull_seconds: Histogram,
    image_pull_bytes: Counter,
    model_loads: Family<OutcomeLabel, Counter>,
    model_load_seconds: Histogram,
    inference_requests: Family<RequestLabels, Counter>,
    inference_seconds: Family<ModelLabel, Histogram>,
    inference_tokens: Family<TokenLabels, Counter>,
    inference_refusals: Family<ReasonLabel, Counter>,
    queue_depth: Family<ModelLabel, Gauge>,
    running: Family<ModelLabel, Gauge>,
}

fn outcome(ok: bool) -> OutcomeLabel {
    OutcomeLabel {
        outcome: if ok { "ok" } else { "failed" },
    }
}

fn seconds(start: f64, length: u16) -> Histogram {
    Histogram::new(exponential_buckets(start, 2.0, length))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ward");
        let m = Metrics {
            kbs_handshakes: Family::default(),
            kbs_handshake_seconds: seconds(0.005, 14),
            kbs_resources: Family::default(),
            image_pulls: Family::default(),
            image_pull_seconds: seconds(0.1, 14),
            image_pull_bytes: Counter::default(),
            model_loads: Family::default(),
            model_load_seconds: seconds(0.1, 14),
            inference_requests: Family::default(),
            inference_seconds: Family::new_with_constructor(|| seconds(0.01, 16)),
            inference_tokens: Family::default(),
            inference_refusals: Family::default(),
            queue_depth: Family::default(),
            running: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "kbs_handshakes",
            "RCAR handshakes with the KBS",
            m.kbs_handshakes.clone(),
        );
        r.register(
            "kbs_handshake_seconds",
            "Time of one RCAR handshake (evidence included)",
            m.kbs_handshake_seconds.clone(),
        );
        r.register(
            "kbs_resources",
            "KBS resources released or refused",
            m.kbs_resources.clone(),
        );
        r.register("image_pulls", "Image pulls", m.image_pulls.clone());
        r.register(
            "image_pull_seconds",
            "Time of one image pull, measurement included",
            m.image_pull_seconds.clone(),
        );
        r.register(
            "image_pull_bytes",
            "Compressed layer bytes of successful pulls",
            m.image_pull_bytes.clone(),
        );
        r.register("model_loads", "Sealed model loads", m.model_loads.clone());
        r.register(
            "model_load_seconds",
            "Time of one model load (download, decryption, digests)",
            m.model_load_seconds.clone(),
        );
        r.register(
            "inference_requests",
            "Inference requests answered, by model and status class",
            m.inference_requests.clone(),
        );
        r.register(
            "inference_request_seconds",
            "Time from request to the end of its answer",
            m.inference_seconds.clone(),
        );
        r.register(
            "inference_tokens",
            "Tokens processed (prompt) and generated (completion); rate() gives tokens/s",
            m.inference_tokens.clone(),
        );
        r.register(
            "inference_refusals",
            "Inference requests refused, by reason",
            m.inference_refusals.clone(),
        );
        r.register(
            "inference_queue_depth",
            "Requests waiting for a generation slot (embedded engines)",
            m.queue_depth.clone(),
        );
        r.register(
            "inference_running",
            "Requests generating now (embedded engines)",
            m.running.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn kbs_handshake(&self, took: Duration, ok: bool) {
        self.kbs_handshakes.get_or_create(&outcome(ok)).inc();
        if ok {
            self.kbs_handshake_seconds.observe(took.as_secs_f64());
        }
    }

    pub fn kbs_resource(&self, ok: bool) {
        self.kbs_resources.get_or_create(&outcome(ok)).inc();
    }

    pub fn image_pull(&self, took: Duration, bytes: Option<u64>) {
        self.image_pulls
            .get_or_create(&outcome(bytes.is_some()))
            .inc();
        if let Some(b) = bytes {
            self.image_pull_seconds.observe(took.as_secs_f64());
            self.image_pull_bytes.inc_by(b);
        }
    }

    pub fn model_load(&self, took: Duration, ok: bool) {
        self.model_loads.get_or_create(&outcome(ok)).inc();
        if ok {
            self.model_load_seconds.observe(took.as_secs_f64());
        }
    }

    /// One answered inference request; `model` must be a served model's name or `unknown`.
    pub fn inference_request(
        &self,
        model: &str,
        status: u16,
        took: Duration,
        tokens: Option<(usize, usize)>,
    ) {
        let status = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let model = model.to_string();
        self.inference_requests
            .get_or_create(&RequestLabels {
                model: model.clone(),
                status,
            })
            .inc();
        self.inference_seconds
            .get_or_create(&ModelLabel {
                model: model.clone(),
            })
            .observe(took.as_secs_f64());
        if let Some((prompt, completion)) = tokens {
            for (kind, n) in [("prompt", prompt), ("completion", completion)] {
                self.inference_tokens
                    .get_or_create(&TokenLabels {
                        model: model.clone(),
                        kind,
                    })
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            }
        }
    }

    pub fn inference_refusal(&self, reason: &'static str) {
        self.inference_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The text a scrape gets, with the engines' queues read now.
    pub fn encode(&self, serving: &Serving) -> String {
        if let Ok(engines) = serving.engines.read() {
            for (name, backend) in engines.iter() {
                if let Backend::Embedded(engine) = backend {
                    let stats = engine.stats();
                    let label = ModelLabel {
                        model: name.clone(),
                    };
                    self.queue_depth
                        .get_or_create(&label)
                        .set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
                    self.running
                        .get_or_create(&label)
                        .set(i64::try_from(stats.running).unwrap_or(i64::MAX));
                }
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// wardd's one set of metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
