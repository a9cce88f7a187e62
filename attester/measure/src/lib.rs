//! Launch measurements computed from the images a ward guest boots, not observed on a first
//! boot: the AMD SEV-SNP launch digest ([`snp`]) and the Intel TDX MRTD ([`tdx`]) for the
//! direct-boot shape Kata uses (firmware + kernel + initrd + command line), and the reference
//! values ([`reference`]) written from them.
//!
//! Never reads hardware and never talks to the network: everything is a function of the bytes
//! it is given.

pub mod ovmf;
pub mod reference;
pub mod sbom;
pub mod snp;
pub mod synthetic;
pub mod tdx;
