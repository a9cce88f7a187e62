//! Where each layer of a pull is read from: the blob cache (when one is configured and holds
//! it), a download another pull of the same blob has under way (joined while it can be, see
//! [`super::download`]), or a download of its own; and the tasks that download.
//!
//! A download task reads the registry's socket, hashes the blob once (in
//! [`crate::registry::BlobStream`]), hands each piece to its readers, and with a blob cache
//! also writes it to `<cache>/blobs/<hex>.partial-*`, renamed into place only once the digest
//! held. Without a cache nothing of the blob touches a filesystem.
//!
//! Layer `i` of a pull starts downloading once its layer `i - concurrency` is unpacked, so at
//! most `concurrency` layers are in flight per pull, each at most
//! [`super::download::READ_AHEAD`] bytes ahead of its reader.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::download::{Download, DownloadReader, evicted};
use super::{MAX_LAYER, PullError, Puller, io};
use crate::digest::Digest;
use crate::progress::PullProgress;
use crate::registry::{Descriptor, RegistryError, ResolvedImage};

/// Downloads under way, by blob digest: the download and the pull that started it.
pub(super) type Inflight = Mutex<HashMap<Digest, (u64, Arc<Download>)>>;

/// Download tasks of one pull (the fallbacks of evicted readers included): each yields the
/// bytes it fetched.
pub(super) type Tasks = Arc<Mutex<Vec<JoinHandle<Result<u64, PullError>>>>>;

/// Reports the bytes downloaded of each followed layer every 100 ms until all have ended.
pub(super) async fn report_downloads(
    layers: Vec<(usize, Arc<Download>)>,
    progress: Arc<dyn PullProgress>,
) {
    loop {
        let mut open = false;
        for (index, d) in &layers {
            progress.layer_fetched(*index, d.received());
            open |= !d.ended();
        }
        if !open {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What a pull needs to start a download of one of its layers later (an evicted reader's).
pub(super) struct Refetch {
    puller: Arc<Puller>,
    image: Arc<ResolvedImage>,
    desc: Descriptor,
    digest: Digest,
    runtime: tokio::runtime::Handle,
    tasks: Tasks,
}

/// Where the unpacker reads a layer from.
pub(super) enum Source {
    /// A verified blob in the cache.
    Cached(PathBuf),
    /// A download (this pull's or a joined one), with what it takes to start its own if the
    /// reader is evicted before it reads.
    Stream(DownloadReader, Box<Refetch>),
}

/// A layer's bytes as the unpacker reads them.
pub(super) enum LayerReader {
    File(std::io::BufReader<std::fs::File>),
    Stream(DownloadReader, Option<Box<Refetch>>),
}

impl Source {
    pub(super) fn open(self) -> std::io::Result<LayerReader> {
        Ok(match self {
            Source::Cached(p) => LayerReader::File(std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(p)?,
            )),
            Source::Stream(r, refetch) => LayerReader::Stream(r, Some(refetch)),
        })
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            LayerReader::File(f) => f.read(buf),
            LayerReader::Stream(r, refetch) => match r.read(buf) {
                Err(e) if evicted(&e) => {
                    // Nothing was read from the shared download: start over on our own.
                    let rf = refetch
                        .take()
                        .ok_or_else(|| std::io::Error::other("evicted twice from a download"))?;
                    let (download, reader) = Download::start();
                    let task = rf.runtime.spawn(rf.puller.clone().download(
                        rf.image.clone(),
                        rf.desc.clone(),
                        rf.digest.clone(),
                        download,
                        None,
                    ));
                    rf.tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(task);
                    *r = reader;
                    r.read(buf)
                }
                other => other,
            },
        }
    }
}

impl Puller {
    fn cache_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.opts
            .blob_cache
            .as_ref()
            .map(|c| c.join("blobs").join(digest.hex()))
    }

    /// Whether the blob cache holds `digest`.
    pub(super) fn cached(&self, digest: &Digest) -> bool {
        self.cache_path(digest).is_some_and(|p| p.exists())
    }

    /// Where layer `desc` will be read from, and the download it follows (for progress) unless
    /// it comes from the cache. A download started here waits until `window` says the pull's
    /// layer `index - concurrency` is unpacked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_blob(
        self: &Arc<Self>,
        pull_id: u64,
        image: &Arc<ResolvedImage>,
        index: usize,
        desc: &Descriptor,
        window: &tokio::sync::watch::Receiver<usize>,
        tasks: &Tasks,
    ) -> Result<(Source, Option<Arc<Download>>), PullError> {
        let digest = Digest::parse(&desc.digest).map_err(|e| RegistryError::Malformed {
            what: "layer digest".into(),
            reference: image.reference.whole(),
            detail: e.to_string(),
        })?;
        let refetch = Box::new(Refetch {
            puller: self.clone(),
            image: image.clone(),
            desc: desc.clone(),
            digest: digest.clone(),
            runtime: tokio::runtime::Handle::current(),
            tasks: tasks.clone(),
        });
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        // Another pull's download: join it while it can be joined. Never our own (an image
        // that holds one blob twice would wait on itself).
        if let Some((owner, d)) = inflight.get(&digest)
            && *owner != pull_id
            && let Some(reader) = d.join()
        {
            return Ok((Source::Stream(reader, refetch), Some(d.clone())));
        }
        if let Some(p) = self.cache_path(&digest)
            && p.exists()
        {
            return Ok((Source::Cached(p), None));
        }
        let (download, reader) = Download::start();
        inflight.insert(digest.clone(), (pull_id, download.clone()));
        drop(inflight);
        let mut window = window.clone();
        let concurrency = self.opts.concurrency.max(1);
        let task = tokio::spawn({
            let me = self.clone();
            let (image, desc, download) = (image.clone(), desc.clone(), download.clone());
            async move {
                // A closed window (the pull ended) lets joined readers have the blob.
                let _ = window
                    .wait_for(|done| done.saturating_add(concurrency) > index)
                    .await;
                me.download(image, desc, digest, download, Some(pull_id))
                    .await
            }
        });
        tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        Ok((Source::Stream(reader, refetch), Some(download)))
    }

    /// Downloads `desc` into `download` (and the blob cache, if any); `shared` is the id of
    /// the pull whose shared download this is (registered in `inflight`), `None` for a private
    /// one. Returns the bytes fetched.
    pub(super) async fn download(
        self: Arc<Self>,
        image: Arc<ResolvedImage>,
        desc: Descriptor,
        digest: Digest,
        download: Arc<Download>,
        shared: Option<u64>,
    ) -> Result<u64, PullError> {
        let result = if download.wanted() {
            self.fetch_into(&image, &desc, &digest, &download).await
        } else {
            Err(PullError::Io {
                what: format!("blob {digest}"),
                source: std::io::Error::other("no pull reads it any more"),
            })
        };
        if let Some(id) = shared {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight
                .get(&digest)
                .is_some_and(|(owner, d)| *owner == id && Arc::ptr_eq(d, &download))
            {
                inflight.remove(&digest);
            }
        }
        download.finish(result.as_ref().map(|_| ()).map_err(ToString::to_string));
        result
    }

    async fn fetch_into(
        &self,
        image: &ResolvedImage,
        desc: &Descriptor,
        digest: &Digest,
        download: &Download,
    ) -> Result<u64, PullError> {
        let mut cache = match self.cache_path(digest) {
            Some(done) => {
                let partial =
                    done.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
                let file = tokio::fs::File::create(&partial)
                    .await
                    .map_err(io(format!("creating {}", partial.display())))?;
                Some((
                    tokio::io::BufWriter::with_capacity(1 << 20, file),
                    partial,
                    done,
                ))
            }
            None => None,
        };
        let result = async {
            let mut stream = self
                .registry
                .open_blob(&image.reference, desc, digest, MAX_LAYER)
                .await?;
            let mut fetched = 0u64;
            while let Some(piece) = stream.next().await? {
                fetched = fetched.saturating_add(piece.len() as u64);
                if let Some((w, partial, _)) = &mut cache {
                    w.write_all(&piece)
                        .await
                        .map_err(io(format!("writing {}", partial.display())))?;
                }
                if download.push(piece).await.is_err() && cache.is_none() {
                    return Err(PullError::Io {
                        what: format!("blob {digest}"),
                        source: std::io::Error::other("no pull reads it any more"),
                    });
                }
            }
            if let Some((w, partial, done)) = &mut cache {
                w.flush()
                    .await
                    .map_err(io(format!("writing {}", partial.display())))?;
                tokio::fs::rename(&*partial, &*done)
                    .await
                    .map_err(io(format!("caching blob {digest}")))?;
            }
            Ok(fetched)
        }
        .await;
        if result.is_err()
            && let Some((_, partial, _)) = &cache
        {
            let _ = tokio::fs::remove_file(partial).await;
        }
        result
    }
}
