//! Where each layer of a pull is read from: the store, a download this pull starts, or a
//! download another pull started (followed as it grows), and the progress reports of downloads.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{MAX_LAYER, PullError, Puller, io};
use crate::digest::Digest;
use crate::follow::{FollowReader, Growing, ProgressWriter};
use crate::progress::PullProgress;
use crate::registry::{Descriptor, RegistryError, ResolvedImage};

/// Reports the bytes downloaded of each followed layer every 100 ms until all have ended.
pub(super) async fn report_downloads(
    layers: Vec<(usize, Arc<Growing>)>,
    progress: Arc<dyn PullProgress>,
) {
    loop {
        let mut open = false;
        for (index, g) in &layers {
            progress.layer_fetched(*index, g.written());
            open |= g.outcome().is_none();
        }
        if !open {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Where the unpacker reads a layer from.
pub(super) enum Source {
    /// A verified blob already in the store.
    Stored(PathBuf),
    /// A blob still downloading (by this pull or another): followed as it grows.
    Follow {
        partial: PathBuf,
        done: PathBuf,
        growing: Arc<Growing>,
    },
}

impl Source {
    pub(super) fn open(&self) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Source::Stored(p) => Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(p)?,
            )),
            Source::Follow {
                partial,
                done,
                growing,
            } => {
                // The download renames the file into place when it has verified it.
                let file = std::fs::File::open(partial).or_else(|_| std::fs::File::open(done))?;
                Box::new(std::io::BufReader::with_capacity(
                    1 << 20,
                    FollowReader::new(file, growing.clone()),
                ))
            }
        })
    }

    /// Whether the whole blob is there and verified (so its HMAC can be checked), waiting for a
    /// download still in progress to end: a reader can fail on altered bytes before the last
    /// byte arrives, and the HMAC check must then wait for it.
    pub(super) fn wait_complete(&self) -> bool {
        match self {
            Source::Stored(_) => true,
            Source::Follow { growing, .. } => growing.wait_outcome().is_ok(),
        }
    }
}

impl Puller {
    pub(super) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.opts.store.join("blobs").join(digest.hex())
    }

    /// Where layer `desc` will be read from: the store, a download already under way, or a new
    /// download started here (returned as a task yielding the bytes fetched).
    #[allow(clippy::type_complexity)]
    pub(super) fn start_blob(
        self: &Arc<Self>,
        image: &Arc<ResolvedImage>,
        desc: &Descriptor,
        permits: &Arc<Semaphore>,
    ) -> Result<
        (
            Source,
            Option<tokio::task::JoinHandle<Result<u64, PullError>>>,
        ),
        PullError,
    > {
        let digest = Digest::parse(&desc.digest).map_err(|e| RegistryError::Malformed {
            what: "layer digest".into(),
            reference: image.reference.whole(),
            detail: e.to_string(),
        })?;
        let done = self.blob_path(&digest);
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((partial, growing)) = inflight.get(&digest.to_string()) {
            return Ok((
                Source::Follow {
                    partial: partial.clone(),
                    done,
                    growing: growing.clone(),
                },
                None,
            ));
        }
        if done.exists() {
            return Ok((Source::Stored(done), None));
        }
        let partial = done.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
        let file = std::fs::File::create(&partial)
            .map_err(io(format!("creating {}", partial.display())))?;
        let growing = Growing::new();
        inflight.insert(digest.to_string(), (partial.clone(), growing.clone()));
        drop(inflight);

        let me = self.clone();
        let image = image.clone();
        let desc = desc.clone();
        let permits = permits.clone();
        let (task_partial, task_done, task_growing) =
            (partial.clone(), done.clone(), growing.clone());
        let task = tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut sink = ProgressWriter::new(file, task_growing.clone());
            let result = me
                .registry
                .stream_blob(&image.reference, &desc, &digest, &mut sink, MAX_LAYER)
                .await
                .map_err(PullError::from)
                .and_then(|()| {
                    std::fs::rename(&task_partial, &task_done)
                        .map_err(io(format!("storing blob {digest}")))
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&task_partial);
            }
            me.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&digest.to_string());
            task_growing.finish(result.as_ref().map(|_| ()).map_err(ToString::to_string));
            result.map(|()| u64::try_from(desc.size).unwrap_or(0))
        });
        Ok((
            Source::Follow {
                partial,
                done,
                growing,
            },
            Some(task),
        ))
    }
}
