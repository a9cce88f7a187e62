//! `ward pull`'s progress: a bar per layer on a terminal (bytes fetched, then "unpacked" once
//! its digest, decryption and diff_id held), and one line per finished layer otherwise.

use std::io::IsTerminal as _;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ward_image::progress::{LayerInfo, PullProgress};

pub struct Bars {
    multi: MultiProgress,
    /// Bars on a terminal; lines on anything else.
    terminal: bool,
    layers: Mutex<Vec<(LayerInfo, ProgressBar)>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Bars {
        let terminal = !quiet && std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        Bars {
            multi: MultiProgress::with_draw_target(target),
            terminal,
            layers: Mutex::new(Vec::new()),
        }
    }

    fn with_layer(&self, index: usize, f: impl FnOnce(&LayerInfo, &ProgressBar)) {
        let layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((info, bar)) = layers.get(index) {
            f(info, bar);
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

impl PullProgress for Bars {
    fn resolved(&self, image: &str, layers: &[LayerInfo]) {
        let style =
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        if self.terminal {
            let _ = self
                .multi
                .println(format!("{image}: {} layers", layers.len()));
        }
        let mut bars = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        for (i, l) in layers.iter().enumerate() {
            let bar = self.multi.add(ProgressBar::new(l.size));
            bar.set_style(style.clone());
            bar.set_prefix(format!("[{}/{}] {}", i + 1, layers.len(), short(&l.digest)));
            bar.set_message(if l.encrypted { "encrypted" } else { "" });
            bars.push((l.clone(), bar));
        }
    }

    fn layer_cached(&self, index: usize) {
        self.with_layer(index, |info, bar| {
            bar.set_position(info.size);
            bar.set_message("in the store");
        });
    }

    fn layer_fetched(&self, index: usize, bytes: u64) {
        self.with_layer(index, |_, bar| bar.set_position(bytes));
    }

    fn layer_done(&self, index: usize) {
        let total = self.layers.lock().map(|l| l.len()).unwrap_or(0);
        self.with_layer(index, |info, bar| {
            let what = if info.encrypted {
                "verified, decrypted, unpacked"
            } else {
                "verified, unpacked"
            };
            bar.set_position(info.size);
            bar.finish_with_message(what);
            if !self.terminal {
                eprintln!(
                    "layer {}/{total} {} {:.1} MiB: {what}",
                    index + 1,
                    info.digest,
                    mib(info.size)
                );
            }
        });
    }
}
