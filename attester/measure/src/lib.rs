//! Launch measurements computed from the images a ward guest boots, not observed on a first
//! boot: the AMD SEV-SNP launch digest ([`snp`]), the Intel TDX MRTD ([`tdx`]) and RTMR0-2
//! ([`rtmr`]) for the direct-boot shape Kata uses (firmware + kernel + initrd + command line),
//! and the reference values written from them: ward's JSON and Trustee's RVPS message
//! ([`reference`]) and the verifying client's TOML ([`client_reference`]).
//!
//! Never reads hardware and never talks to the network: everything is a function of the bytes
//! it is given.

pub mod client_reference;
pub mod ovmf;
pub mod reference;
pub mod rtmr;
pub mod sbom;
pub mod snp;
pub mod synthetic;
pub mod tdx;
