//! NVSwitch evidence through NSCQ (`libnvidia-nscq.so.2`, the NVSwitch configuration and query
//! library of the fabric manager packages), loaded at run time like NVML so ward builds and runs
//! where there is none. The calls are the ones NVIDIA's attestation SDK makes for CoCo's
//! attester (github.com/NVIDIA/attestation-sdk tag 2026.06.09,
//! `nv-attestation-sdk-cpp/src/switch/nscq_client.cpp`): one session created with
//! `NSCQ_SESSION_CREATE_MOUNT_DEVICES`, the switches' labels from `/drv/nvswitch/{device}/uuid`,
//! their architecture from `/{nvswitch}/id/arch`, and per switch `/<label>/config/pcie_mode`,
//! `/<label>/config/certificate` and, after `nscq_session_set_input(nonce)`,
//! `/<label>/config/attestation_report`. Every value arrives through a callback; the structs
//! below follow NSCQ's C layout. Not exercised here: there is no NVSwitch (nor NSCQ) on this
//! machine, so only the scripted backend drives the collection logic in tests.

use std::ffi::{CString, c_char, c_void};
use std::sync::Mutex;

use super::GpuError;
use super::backend::{SwitchInfo, TnvlMode};

type NscqRc = i8;
const NSCQ_RC_SUCCESS: NscqRc = 0;
const NSCQ_SESSION_CREATE_MOUNT_DEVICES: u32 = 1;
const NSCQ_PATH_NVSWITCH_UUID: &str = "/drv/nvswitch/{device}/uuid";
const NSCQ_PATH_NVSWITCH_ARCH: &str = "/{nvswitch}/id/arch";
const NSCQ_LIBRARY: &str = "libnvidia-nscq.so.2";

#[repr(C)]
struct NscqUuid {
    bytes: [u8; 16],
}

#[repr(C)]
struct NscqLabel {
    data: [c_char; 64],
}

#[repr(C)]
struct NscqSessionResult {
    rc: NscqRc,
    session: *mut c_void,
}

const REPORT_SIZE: usize = super::MAX_SWITCH_REPORT;
const CERT_CHAIN_SIZE: usize = 0x1400;

#[repr(C)]
struct NscqAttestationReport {
    report_size: u32,
    report: [u8; REPORT_SIZE],
}

#[repr(C)]
struct NscqAttestationCertificate {
    cert_chain: [u8; CERT_CHAIN_SIZE],
    cert_chain_size: u32,
}

type SessionCreate = unsafe extern "C" fn(u32) -> NscqSessionResult;
type SessionDestroy = unsafe extern "C" fn(*mut c_void);
type Callback = unsafe extern "C" fn();
type PathObserve =
    unsafe extern "C" fn(*mut c_void, *const c_char, Option<Callback>, *mut c_void, u32) -> NscqRc;
type SetInput = unsafe extern "C" fn(*mut c_void, u32, *mut c_void, u32) -> NscqRc;
type UuidToLabel = unsafe extern "C" fn(*const NscqUuid, *mut NscqLabel, u32) -> NscqRc;

type UuidCallback = unsafe extern "C" fn(*const NscqUuid, NscqRc, *const NscqUuid, *mut c_void);
type I8Callback = unsafe extern "C" fn(*const NscqUuid, NscqRc, i8, *mut c_void);
type ReportCallback =
    unsafe extern "C" fn(*const NscqUuid, NscqRc, NscqAttestationReport, *mut c_void);
type CertificateCallback =
    unsafe extern "C" fn(*const NscqUuid, NscqRc, NscqAttestationCertificate, *mut c_void);

/// NSCQ takes every callback as `nscq_fn_t` and calls it with the signature of the path's
/// values; these erase the signature (function pointers all have the same size).
fn erase_uuid(cb: UuidCallback) -> Callback {
    // SAFETY: a function pointer to a function pointer of the same size; it is called only by
    // NSCQ, with the signature it was made with (see `observe`).
    unsafe { std::mem::transmute::<UuidCallback, Callback>(cb) }
}

fn erase_i8(cb: I8Callback) -> Callback {
    // SAFETY: as in `erase_uuid`.
    unsafe { std::mem::transmute::<I8Callback, Callback>(cb) }
}

fn erase_report(cb: ReportCallback) -> Callback {
    // SAFETY: as in `erase_uuid`.
    unsafe { std::mem::transmute::<ReportCallback, Callback>(cb) }
}

fn erase_certificate(cb: CertificateCallback) -> Callback {
    // SAFETY: as in `erase_uuid`.
    unsafe { std::mem::transmute::<CertificateCallback, Callback>(cb) }
}

/// The session pointer, used only under the mutex.
struct Session(*mut c_void);

// SAFETY: the NSCQ session is a heap object of the library, not tied to the creating thread;
// ward uses it from one thread at a time (it lives in a Mutex).
unsafe impl Send for Session {}

/// An open NSCQ session.
pub struct NscqSwitches {
    session: Mutex<Session>,
    destroy: SessionDestroy,
    observe: PathObserve,
    set_input: SetInput,
    uuid_to_label: UuidToLabel,
    // last: the symbols above point into it
    _lib: libloading::Library,
}

fn nscq_error(call: &str, rc: NscqRc) -> GpuError {
    GpuError::NoSwitches(format!("{call} failed: NSCQ error {rc}"))
}

fn switch_error(uuid: &str, call: &str, rc: NscqRc) -> GpuError {
    GpuError::Switch {
        uuid: uuid.to_string(),
        detail: format!("{call} failed: NSCQ error {rc}"),
    }
}

fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, GpuError> {
    // SAFETY: each `T` is the C signature NSCQ's header gives the symbol `name`.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| GpuError::SymbolMissing(format!("{name}: {e}")))
}

/// What a callback hands back: the values and the first failure NSCQ reported.
struct Sink<T> {
    values: Vec<T>,
    rc: NscqRc,
    to_label: Option<UuidToLabel>,
}

impl<T> Sink<T> {
    fn new() -> Sink<T> {
        Sink {
            values: Vec::new(),
            rc: NSCQ_RC_SUCCESS,
            to_label: None,
        }
    }

    /// # Safety
    /// `user` must be the `&mut Sink<T>` passed to `nscq_session_path_observe`.
    unsafe fn from<'a>(user: *mut c_void, rc: NscqRc) -> Option<&'a mut Sink<T>> {
        // SAFETY: by the caller's contract, `user` is a live, exclusive `Sink<T>` (or null).
        let sink = unsafe { user.cast::<Sink<T>>().as_mut() }?;
        if rc != NSCQ_RC_SUCCESS {
            if sink.rc == NSCQ_RC_SUCCESS {
                sink.rc = rc;
            }
            return None;
        }
        Some(sink)
    }
}

unsafe extern "C" fn on_uuid(
    _device: *const NscqUuid,
    rc: NscqRc,
    uuid: *const NscqUuid,
    user: *mut c_void,
) {
    // SAFETY: NSCQ passes back the `Sink<String>` given for this path.
    let Some(sink) = (unsafe { Sink::<String>::from(user, rc) }) else {
        return;
    };
    let Some(to_label) = sink.to_label else {
        return;
    };
    if uuid.is_null() {
        return;
    }
    let mut label = NscqLabel { data: [0; 64] };
    // SAFETY: `uuid` is NSCQ's own non-null value; `label` is a writable label struct.
    let rc = unsafe { to_label(uuid, &mut label, 0) };
    if rc != NSCQ_RC_SUCCESS {
        sink.rc = rc;
        return;
    }
    let bytes: Vec<u8> = label
        .data
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| c.to_ne_bytes()[0])
        .collect();
    sink.values
        .push(String::from_utf8_lossy(&bytes).into_owned());
}

unsafe extern "C" fn on_i8(_device: *const NscqUuid, rc: NscqRc, value: i8, user: *mut c_void) {
    // SAFETY: NSCQ passes back the `Sink<i8>` given for this path.
    if let Some(sink) = unsafe { Sink::<i8>::from(user, rc) } {
        sink.values.push(value);
    }
}

unsafe extern "C" fn on_certificate(
    _device: *const NscqUuid,
    rc: NscqRc,
    cert: NscqAttestationCertificate,
    user: *mut c_void,
) {
    // SAFETY: NSCQ passes back the `Sink<Vec<u8>>` given for this path.
    if let Some(sink) = unsafe { Sink::<Vec<u8>>::from(user, rc) } {
        let size = usize::try_from(cert.cert_chain_size).unwrap_or(usize::MAX);
        // an oversized length is kept as empty, refused by the caller
        sink.values
            .push(cert.cert_chain.get(..size).unwrap_or_default().to_vec());
    }
}

unsafe extern "C" fn on_report(
    _device: *const NscqUuid,
    rc: NscqRc,
    report: NscqAttestationReport,
    user: *mut c_void,
) {
    // SAFETY: NSCQ passes back the `Sink<Vec<u8>>` given for this path.
    if let Some(sink) = unsafe { Sink::<Vec<u8>>::from(user, rc) } {
        let size = usize::try_from(report.report_size).unwrap_or(usize::MAX);
        sink.values
            .push(report.report.get(..size).unwrap_or_default().to_vec());
    }
}

impl NscqSwitches {
    /// Loads NSCQ and opens a session.
    pub fn open() -> Result<NscqSwitches, GpuError> {
        // SAFETY: loading NSCQ runs its initialisers, which is what NVIDIA's own tools do.
        let lib = unsafe { libloading::Library::new(NSCQ_LIBRARY) }
            .map_err(|e| GpuError::LibraryMissing(format!("{NSCQ_LIBRARY}: {e}")))?;
        let create: SessionCreate = symbol(&lib, "nscq_session_create")?;
        let destroy: SessionDestroy = symbol(&lib, "nscq_session_destroy")?;
        let observe: PathObserve = symbol(&lib, "nscq_session_path_observe")?;
        let set_input: SetInput = symbol(&lib, "nscq_session_set_input")?;
        let uuid_to_label: UuidToLabel = symbol(&lib, "nscq_uuid_to_label")?;
        // SAFETY: a plain flags argument; the result is a struct returned by value.
        let result = unsafe { create(NSCQ_SESSION_CREATE_MOUNT_DEVICES) };
        if result.rc != NSCQ_RC_SUCCESS || result.session.is_null() {
            return Err(nscq_error("nscq_session_create", result.rc));
        }
        Ok(NscqSwitches {
            session: Mutex::new(Session(result.session)),
            destroy,
            observe,
            set_input,
            uuid_to_label,
            _lib: lib,
        })
    }

    /// Observes `path`, handing each value to `callback` through `sink`.
    ///
    /// # Safety
    /// `callback` must have the signature NSCQ uses for `path`'s values, with a `Sink<T>` as
    /// its user data.
    unsafe fn observe<T>(
        &self,
        path: &str,
        callback: Callback,
        sink: &mut Sink<T>,
    ) -> Result<(), NscqRc> {
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.observe_in(&session, path, callback, sink) }
    }

    /// [`Self::observe`] in a session the caller holds locked.
    ///
    /// # Safety
    /// As for [`Self::observe`].
    unsafe fn observe_in<T>(
        &self,
        session: &Session,
        path: &str,
        callback: Callback,
        sink: &mut Sink<T>,
    ) -> Result<(), NscqRc> {
        let path = CString::new(path).map_err(|_| -1)?;
        // SAFETY: a live session, a NUL-terminated path, a callback of the path's signature (by
        // the caller's contract) and `sink` alive for the whole (synchronous) call.
        let rc = unsafe {
            (self.observe)(
                session.0,
                path.as_ptr(),
                Some(callback),
                (sink as *mut Sink<T>).cast::<c_void>(),
                0,
            )
        };
        match (rc, sink.rc) {
            (NSCQ_RC_SUCCESS, NSCQ_RC_SUCCESS) => Ok(()),
            (NSCQ_RC_SUCCESS, e) | (e, _) => Err(e),
        }
    }

    /// Every switch, with its architecture and TNVL mode.
    pub fn switches(&self) -> Result<Vec<SwitchInfo>, GpuError> {
        let mut labels = Sink::<String>::new();
        labels.to_label = Some(self.uuid_to_label);
        // `on_uuid` has the signature of the uuid path's values
        let cb = erase_uuid(on_uuid);
        // SAFETY: the callback has the signature of the path's values (above).
        unsafe { self.observe(NSCQ_PATH_NVSWITCH_UUID, cb, &mut labels) }
            .map_err(|rc| nscq_error(NSCQ_PATH_NVSWITCH_UUID, rc))?;
        let mut arch = Sink::<i8>::new();
        // `on_i8` has the signature of the architecture path's values
        let cb = erase_i8(on_i8);
        // SAFETY: the callback has the signature of the path's values (above).
        unsafe { self.observe(NSCQ_PATH_NVSWITCH_ARCH, cb, &mut arch) }
            .map_err(|rc| nscq_error(NSCQ_PATH_NVSWITCH_ARCH, rc))?;
        // One architecture for all, as the SDK reads it; a mix is reported as unknown (-1).
        let arch_code = match arch.values.split_first() {
            Some((first, rest)) if rest.iter().all(|a| a == first) => *first,
            _ => -1,
        };
        labels
            .values
            .into_iter()
            .map(|uuid| {
                let path = format!("/{uuid}/config/pcie_mode");
                let mut mode = Sink::<i8>::new();
                // the TNVL status is an `nscq_tnvl_status_t` (i8), like the arch
                let cb = erase_i8(on_i8);
                // SAFETY: the callback has the signature of the path's values (above).
                unsafe { self.observe(&path, cb, &mut mode) }
                    .map_err(|rc| switch_error(&uuid, &path, rc))?;
                let tnvl = mode
                    .values
                    .first()
                    .map_or(TnvlMode::Unknown, |m| TnvlMode::from_nscq(*m));
                Ok(SwitchInfo {
                    uuid,
                    arch_code,
                    tnvl,
                })
            })
            .collect()
    }

    /// A switch's attestation report for `nonce`. The nonce is session input, so the session
    /// stays locked from setting it to reading the report.
    pub fn report(&self, uuid: &str, mut nonce: [u8; 32]) -> Result<Vec<u8>, GpuError> {
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: a live session and a 32-byte buffer NSCQ copies the nonce from.
        let rc = unsafe { (self.set_input)(session.0, 0, nonce.as_mut_ptr().cast::<c_void>(), 32) };
        if rc != NSCQ_RC_SUCCESS {
            return Err(switch_error(uuid, "nscq_session_set_input", rc));
        }
        let path = format!("/{uuid}/config/attestation_report");
        let mut sink = Sink::<Vec<u8>>::new();
        // `on_report` has the signature of the report path's values
        let cb = erase_report(on_report);
        // SAFETY: the callback has the signature of the path's values (above).
        unsafe { self.observe_in(&session, &path, cb, &mut sink) }
            .map_err(|rc| switch_error(uuid, &path, rc))?;
        Ok(sink.values.into_iter().next().unwrap_or_default())
    }

    /// A switch's attestation certificate chain (PEM).
    pub fn certificate(&self, uuid: &str) -> Result<Vec<u8>, GpuError> {
        let path = format!("/{uuid}/config/certificate");
        let mut sink = Sink::<Vec<u8>>::new();
        // `on_certificate` has the signature of the certificate path's values
        let cb = erase_certificate(on_certificate);
        // SAFETY: the callback has the signature of the path's values (above).
        unsafe { self.observe(&path, cb, &mut sink) }
            .map_err(|rc| switch_error(uuid, &path, rc))?;
        Ok(sink.values.into_iter().next().unwrap_or_default())
    }
}

impl Drop for NscqSwitches {
    fn drop(&mut self) {
        let session = self.session.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the session was created by this library and is destroyed once, here.
        unsafe { (self.destroy)(session.0) };
    }
}
