//! Arbitrary bytes as a layer's tar stream into the unpack planner and applier
//! (`ward_image::unpack::apply_layer`), onto a fresh temporary root: errors are fine, panics and
//! writes outside the root are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_image::unpack::{UnpackPolicy, apply_layer};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let root = dir.path().join("rootfs");
    if std::fs::create_dir(&root).is_err() {
        return;
    }
    let _ = apply_layer(data, &root, &UnpackPolicy::default());
    // Nothing may land beside the root.
    let beside = std::fs::read_dir(dir.path())
        .map(|d| d.count())
        .unwrap_or(1);
    assert_eq!(beside, 1, "the layer wrote outside its root");
});
