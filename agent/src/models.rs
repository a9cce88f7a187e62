//! Sealed models named in `[[model]]`: loaded in the background once wardd serves, from a
//! registry (decrypted while downloading) or a local sealed layout, with the KEK released by the
//! KBS, every file checked against the pinned digests, into guest memory only. Each load is
//! audited and measured (`LoadModel`, by manifest and file digests); a failure leaves that model
//! unavailable and says why, without stopping wardd.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tracing::Instrument as _;
use ward_image::kbs::KbsResources;
use ward_image::model_artifact::{LoadedModel, ModelError, fetch_model, load_layout};
use ward_image::sealed::Kek;
use ward_kbs_wire::ResourceUri;

use crate::access::AccessPolicy;
use crate::attestation::Attestation;
use crate::audit::Audit;
use crate::config::{
    AccessPolicySource, ConnectedEngine, EngineSettings, ModelDevice, ModelSettings, ModelSource,
    StartedEngine,
};
use crate::images::{Images, KbsKek};
use crate::inference_api::openai::Serving;

/// Where one model stands.
#[derive(Clone, Debug)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedInfo>),
    Failed(String),
}

/// What wardd keeps of a loaded model once its engine has the weights: its manifest digest,
/// for the audit of each request, not the plaintext. The decrypted files live only as long as
/// it takes to hand them over (candle's tensors, or an external engine's sealed memfds);
/// keeping them after would double the guest memory a model costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedInfo {
    pub manifest_digest: ward_image::digest::Digest,
}

/// The models wardd holds.
pub struct Models {
    settings: Vec<ModelSettings>,
    audit: Audit,
    states: RwLock<BTreeMap<String, ModelState>>,
    /// Engines wardd started (kept alive here; dropping one stops its process).
    started: std::sync::Mutex<Vec<crate::external::Started>>,
    /// Where started engines' weight links go (`[inference] engine_dir`).
    engine_dir: std::path::PathBuf,
}

impl Models {
    pub fn new(settings: &[ModelSettings], audit: Audit, engine_dir: &std::path::Path) -> Models {
        let states = settings
            .iter()
            .map(|m| (m.name.clone(), ModelState::Loading))
            .collect();
        Models {
            settings: settings.to_vec(),
            audit,
            states: RwLock::new(states),
            started: std::sync::Mutex::new(Vec::new()),
            engine_dir: engine_dir.to_path_buf(),
        }
    }

    /// Every model's state, by name.
    pub fn states(&self) -> BTreeMap<String, ModelState> {
        self.states
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What was loaded for `name`, when it was.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedInfo>> {
        match self
            .states
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            Some(ModelState::Ready(m)) => Some(m.clone()),
            _ => None,
        }
    }

    fn set(&self, name: &str, state: ModelState) {
        self.states
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), state);
    }

    /// Loads every model, one after the other (each uses every core while it decrypts), and
    /// starts an inference engine for each one whose files the runtime can run.
    pub async fn load_all(
        &self,
        images: &Images,
        attestation: &Arc<Attestation>,
        serving: &Serving,
    ) {
        for m in &self.settings {
            let span = tracing::info_span!("model.load", model = %m.name);
            if let EngineSettings::Connected(c) = &m.engine {
                if self
                    .policy(m, attestation, serving)
                    .instrument(span.clone())
                    .await
                {
                    self.connect(m, c, serving).instrument(span).await;
                }
                continue;
            }
            let Some(model) = self
                .load_and_record(m, images, attestation)
                .instrument(span.clone())
                .await
            else {
                continue;
            };
            // Released in the session that released the KEK; no policy, no service.
            if !self
                .policy(m, attestation, serving)
                .instrument(span.clone())
                .await
            {
                continue;
            }
            if let EngineSettings::Started(s) = &m.engine {
                self.start(m, s, &model, attestation, serving)
                    .instrument(span)
                    .await;
                // The engine has its memfds; wardd's copy goes now.
                drop(model);
                continue;
            }
            let (name, config, device) = (m.name.clone(), engine_config(m), device_kind(m.device));
            let started = std::time::Instant::now();
            let engine =
                tokio::task::spawn_blocking(move || serve(&name, model, config, device)).await;
            let _enter = span.enter();
            match engine {
                Ok(Ok(Some(engine))) => {
                    tracing::info!(
                        secs = started.elapsed().as_secs_f64(),
                        device = %m.device,
                        "inference engine ready"
                    );
                    if let Ok(mut e) = serving.engines.write() {
                        e.insert(
                            m.name.clone(),
                            crate::inference_api::openai::Backend::Embedded(Arc::new(engine)),
                        );
                    }
                }
                Ok(Ok(None)) => tracing::info!(
                    "no runnable weights (GGUF or safetensors llama): loaded, not served"
                ),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the inference runtime refused the model")
                }
                Err(e) => tracing::error!(error = %e, "inference engine task failed"),
            }
        }
    }

    /// Puts `m`'s access policy in place before its engine is served: fetched from the KBS or
    /// taken from the config, checked, audited. `false` (the model failed and is not served)
    /// when it cannot be had or cannot be enforced.
    async fn policy(
        &self,
        m: &ModelSettings,
        attestation: &Attestation,
        serving: &Serving,
    ) -> bool {
        let Some(source) = &m.policy else {
            return true;
        };
        let (from, policy) = match source {
            AccessPolicySource::Inline(doc) => (
                "config".to_string(),
                AccessPolicy::from_doc(doc.clone()).map_err(|e| e.to_string()),
            ),
            AccessPolicySource::Kbs(uri) => (
                uri.to_string(),
                match attestation.resource(&uri.to_string()).await {
                    Ok(bytes) => AccessPolicy::from_bytes(&bytes).map_err(|e| e.to_string()),
                    Err(e) => Err(format!("the KBS did not release it: {e}")),
                },
            ),
        };
        let policy = policy.and_then(|p| {
            // An external engine tokenizes out of wardd's sight: a prompt limit would be a
            // promise nobody keeps.
            if p.limits_prompts() && m.engine != EngineSettings::Embedded {
                Err("max_prompt_tokens needs the embedded engine (an external one tokenizes where wardd cannot check)".into())
            } else {
                Ok(p)
            }
        });
        match policy {
            Ok(p) => {
                tracing::info!(source = %from, digest = p.digest(), "model policy in place");
                self.audit.note(
                    "model.policy",
                    &m.name,
                    serde_json::json!({"source": from, "sha256": p.digest()}),
                );
                if let Ok(mut all) = serving.policies.write() {
                    all.insert(m.name.clone(), Arc::new(p));
                }
                true
            }
            Err(why) => {
                tracing::error!(source = %from, reason = %why, "model policy refused: the model is not served");
                self.audit.note(
                    "model.policy_failed",
                    &m.name,
                    serde_json::json!({"source": from, "reason": why}),
                );
                self.set(&m.name, ModelState::Failed(format!("policy: {why}")));
                false
            }
        }
    }

    /// Starts `m`'s engine on its opened weights and serves it once it answers.
    async fn start(
        &self,
        m: &ModelSettings,
        s: &StartedEngine,
        model: &LoadedModel,
        attestation: &Attestation,
        serving: &Serving,
    ) {
        let started = std::time::Instant::now();
        // GPUs get no work before the KBS accepted them (composite evidence, every GPU
        // appraised): the engine would compute on devices nobody vouched for.
        if !s.gpus.is_empty() {
            let ready = if attestation.has_gpus() {
                attestation
                    .make_gpus_ready()
                    .await
                    .map_err(|e| e.to_string())
            } else {
                Err("no attested GPUs ([attestation] gpus)".to_string())
            };
            if let Err(why) = ready {
                tracing::error!(reason = %why, "external engine not started: its GPUs are not ready");
                self.set(
                    &m.name,
                    ModelState::Failed(format!("GPUs not ready: {why}")),
                );
                return;
            }
        }
        match crate::external::start(&m.name, model, s, capacity(m), &self.engine_dir).await {
            Ok(engine) => {
                tracing::info!(
                    engine = s.preset.as_str(),
                    secs = started.elapsed().as_secs_f64(),
                    "external engine serving"
                );
                self.audit.note(
                    "engine.start",
                    &m.name,
                    serde_json::json!({"engine": s.preset.as_str(),
                        "manifest": model.manifest_digest.to_string()}),
                );
                if let Ok(mut e) = serving.engines.write() {
                    e.insert(
                        m.name.clone(),
                        crate::inference_api::openai::Backend::External(engine.upstream.clone()),
                    );
                }
                if let Ok(mut all) = self.started.lock() {
                    all.push(engine);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, engine = s.preset.as_str(), "external engine not started");
                self.audit.note(
                    "engine.start_failed",
                    &m.name,
                    serde_json::json!({"engine": s.preset.as_str(), "reason": e.to_string()}),
                );
                self.set(&m.name, ModelState::Failed(e.to_string()));
            }
        }
    }

    /// Reaches `m`'s running engine (`engine = "openai"`) and serves it once it answers.
    async fn connect(&self, m: &ModelSettings, c: &ConnectedEngine, serving: &Serving) {
        match crate::external::connect(&m.name, c, capacity(m)).await {
            Ok(up) => {
                tracing::info!(upstream = %c.upstream, "external engine reached");
                self.audit.note(
                    "engine.connect",
                    &m.name,
                    serde_json::json!({"upstream": c.upstream}),
                );
                if let Ok(mut e) = serving.engines.write() {
                    e.insert(
                        m.name.clone(),
                        crate::inference_api::openai::Backend::External(up),
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, upstream = %c.upstream, "external engine not reached");
                self.set(&m.name, ModelState::Failed(e.to_string()));
            }
        }
    }

    /// Loads `m`, audits and measures it, and records what was loaded; the plaintext is the
    /// caller's to hand to an engine and drop.
    async fn load_and_record(
        &self,
        m: &ModelSettings,
        images: &Images,
        attestation: &Arc<Attestation>,
    ) -> Option<LoadedModel> {
        let started = std::time::Instant::now();
        let loaded = load_one(m, images, attestation).await;
        crate::metrics::metrics().model_load(started.elapsed(), loaded.is_ok());
        match loaded {
            Ok(model) => {
                let files: BTreeMap<&str, String> = model
                    .files
                    .iter()
                    .map(|f| (f.name.as_str(), f.digest.to_string()))
                    .collect();
                let bytes: usize = model.files.iter().map(|f| f.data.len()).sum();
                tracing::info!(
                    manifest = %model.manifest_digest,
                    files = model.files.len(),
                    bytes,
                    secs = started.elapsed().as_secs_f64(),
                    "model loaded into guest memory"
                );
                let content = serde_json::json!({
                    "model": m.name,
                    "manifest": model.manifest_digest.to_string(),
                    "files": files,
                })
                .to_string();
                if let Err(e) = attestation
                    .extend_runtime_measurement("github.com/ward", "LoadModel", &content, None)
                    .await
                {
                    tracing::warn!(error = %e, "LoadModel runtime measurement failed");
                }
                self.audit.note(
                    "model.load",
                    &m.name,
                    serde_json::json!({
                        "source": model.reference,
                        "manifest": model.manifest_digest.to_string(),
                        "kek": model.kek_id,
                        "files": files,
                        "bytes": bytes,
                        "mlocked": model.files.iter().all(|f| f.data.locked()),
                    }),
                );
                self.set(
                    &m.name,
                    ModelState::Ready(Arc::new(LoadedInfo {
                        manifest_digest: model.manifest_digest.clone(),
                    })),
                );
                Some(model)
            }
            Err(e) => {
                tracing::error!(error = %e, "model not loaded");
                self.audit.note(
                    "model.load_failed",
                    &m.name,
                    serde_json::json!({"reason": e.to_string()}),
                );
                self.set(&m.name, ModelState::Failed(e.to_string()));
                None
            }
        }
    }
}

/// Requests an external engine may have in flight: its batch and its queue.
fn capacity(m: &ModelSettings) -> usize {
    let c = engine_config(m);
    c.max_concurrent.saturating_add(c.queue_capacity)
}

/// The engine sizes a `[[model]]` asks for, the runtime's defaults where it names none.
fn engine_config(m: &ModelSettings) -> ward_inference::EngineConfig {
    let defaults = ward_inference::EngineConfig::default();
    ward_inference::EngineConfig {
        max_concurrent: m.max_batch.unwrap_or(defaults.max_concurrent),
        queue_capacity: m.queue.unwrap_or(defaults.queue_capacity),
    }
}

/// The runtime's name for the device a `[[model]]` names.
fn device_kind(device: ModelDevice) -> ward_inference::DeviceKind {
    match device {
        ModelDevice::Cpu => ward_inference::DeviceKind::Cpu,
        ModelDevice::Cuda(n) => ward_inference::DeviceKind::Cuda(n),
    }
}

/// An inference engine for `model`: a `.gguf` file, or `config.json` + `tokenizer.json` +
/// `*.safetensors` (llama family). `None` when the model has neither.
fn serve(
    name: &str,
    mut model: LoadedModel,
    config: ward_inference::EngineConfig,
    device: ward_inference::DeviceKind,
) -> Result<Option<ward_inference::Engine>, ward_inference::InferenceError> {
    use ward_inference::{Engine, LoadOptions, Model, SafetensorsFiles};
    let options = LoadOptions {
        name: Some(name.to_string()),
        device,
    };
    // Files are found by their base name, so that a model image's `models/x/config.json` serves
    // as well as a sealed model's `config.json`.
    let by_name = |n: &str| {
        model
            .files
            .iter()
            .find(|f| f.name == n || f.name.ends_with(&format!("/{n}")))
            .map(|f| f.data.to_vec())
    };
    let loaded = if let Some(at) = model.files.iter().position(|f| f.name.ends_with(".gguf")) {
        // The model keeps the plaintext buffer itself (locked, zeroized when the model goes)
        // and runs its matrices from it: no second copy of the weights in guest memory.
        let gguf = model.files.swap_remove(at);
        Model::from_gguf_buffer(bytes::Bytes::from_owner(gguf.data), &options)?
    } else if let (Some(config_json), Some(tokenizer_json)) =
        (by_name("config.json"), by_name("tokenizer.json"))
    {
        // Borrowed: the shards are read from the locked, zeroized buffers, never copied.
        let weights: Vec<std::borrow::Cow<'_, [u8]>> = model
            .files
            .iter()
            .filter(|f| f.name.ends_with(".safetensors"))
            .map(|f| std::borrow::Cow::Borrowed(&f.data[..]))
            .collect();
        if weights.is_empty() {
            return Ok(None);
        }
        Model::from_safetensors(
            SafetensorsFiles {
                config_json,
                tokenizer_json,
                tokenizer_config_json: by_name("tokenizer_config.json"),
                weights,
            },
            &options,
        )?
    } else {
        return Ok(None);
    };
    Engine::new(loaded, config).map(Some)
}

async fn load_one(
    m: &ModelSettings,
    images: &Images,
    attestation: &Arc<Attestation>,
) -> Result<LoadedModel, ModelError> {
    let keks = KbsKek {
        attestation: attestation.clone(),
        scope: Some(images.kek_scope().also(m.kek.as_deref())),
    };
    let model = match &m.source {
        ModelSource::Registry(reference) => {
            let registry = images
                .registry()
                .await
                .map_err(|e| ModelError::Malformed(format!("registry client: {e}")))?;
            fetch_model(
                registry,
                reference,
                &keks,
                images.decryption_keys(),
                Some(&m.digests),
                4,
            )
            .await?
        }
        ModelSource::Engine => {
            return Err(ModelError::Malformed(
                "its engine holds the weights (engine = \"openai\")".into(),
            ));
        }
        ModelSource::Layout(path) => {
            let (_, manifest) = ward_image::model_artifact::layout_kek_id(path)?;
            let kek_error = |detail: String| ModelError::Kek {
                kid: manifest.clone(),
                detail,
            };
            let uri = ResourceUri::parse(&manifest).map_err(|e| kek_error(e.to_string()))?;
            let bytes = keks
                .resource(&uri)
                .await
                .map_err(|e| kek_error(e.to_string()))?;
            let kek = Kek::from_slice(&bytes).map_err(|source| ModelError::Sealed {
                name: "(KEK)".into(),
                source,
            })?;
            let path = path.clone();
            let digests = m.digests.clone();
            tokio::task::spawn_blocking(move || load_layout(&path, &kek, Some(&digests)))
                .await
                .map_err(|e| ModelError::Malformed(e.to_string()))??
        }
    };
    if let Some(k) = &m.kek
        && *k != model.kek_id
    {
        return Err(ModelError::Mismatch {
            name: m.name.clone(),
            detail: format!("sealed under {}, the config pins {k}", model.kek_id),
        });
    }
    Ok(model)
}
