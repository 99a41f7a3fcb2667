//! Getting Fast-SCNN weights onto the machine: the folder they are installed in, files from the
//! Hugging Face Hub (through its shared cache, offline when `HF_HUB_OFFLINE` says so), downloads
//! checked against their sha256, and conversion of any checkpoint `fastscnn-model` reads to
//! safetensors with its layout, class count and origin recorded.
//!
//! The `fastscnn` command (`--weights`, `--hf-repo`, `fastscnn download`) and `cargo xtask` are
//! thin layers over this crate. It is a crate of its own because it brings an HTTP client and TLS
//! (C code in `ring`), which the inference crates have no use for.
//!
//! ```no_run
//! use fastscnn_weights::{install, Origin, Replace};
//!
//! # fn main() -> Result<(), fastscnn_weights::WeightsError> {
//! let output = fastscnn_weights::default_weights_path().expect("a home folder");
//! let installed = install(&Origin::published(), None, &output, Replace::Never)?;
//! println!("{installed}");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod checksum;
mod convert;
mod error;
mod home;
mod hub;
mod install;
mod source;

pub use checksum::{expected_sha256, sha256_of};
pub use convert::{convert, Converted, Replace};
pub use error::{Result, WeightsError};
pub use home::{default_weights_path, fastscnn_home, HOME_VAR};
pub use hub::{HubFile, OFFLINE_VAR};
pub use install::{install, Installed, Origin, PUBLISHED_URL};
pub use source::WeightSource;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
