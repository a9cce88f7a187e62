//! What a pull reports while it runs, for progress bars (`ward pull`) and logs. Every method has
//! a default that does nothing; calls come from the pull's own tasks, so implementations must be
//! quick and must not block.

/// A layer as the progress reporter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: String,
    /// Size of the blob as stored in the registry (compressed, encrypted).
    pub size: u64,
    pub encrypted: bool,
}

/// Receives a pull's progress.
pub trait PullProgress: Send + Sync {
    /// The image resolved and passed the signature policy; these are its layers, in order.
    fn resolved(&self, _image: &str, _layers: &[LayerInfo]) {}
    /// Layer `index` is already in the store (verified before): nothing to download.
    fn layer_cached(&self, _index: usize) {}
    /// `bytes` of layer `index` have been downloaded (and are being verified as they arrive).
    fn layer_fetched(&self, _index: usize, _bytes: u64) {}
    /// Layer `index` is decrypted, unpacked and its diff_id held.
    fn layer_done(&self, _index: usize) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl PullProgress for NoProgress {}
