//! Data for Fast-SCNN: Cityscapes' official label table (ids, train ids, categories, colours) and
//! its mappings, dataset discovery in Cityscapes' layout and in a plain folder layout of any
//! classes (`images/`, `masks/`, `classes.json`: [`folder`], [`classes`]), `labelTrainIds`
//! preparation, the paper's training augmentation, image resampling, and batches built on worker
//! threads.

#![warn(missing_docs)]

pub mod augment;
pub mod classes;
pub mod dataset;
mod error;
pub mod folder;
pub mod image_io;
mod jpeg;
pub mod labels;
pub mod loader;
pub mod palette;
pub mod prepare;
pub mod resample;
pub mod rng;

pub use augment::{AugmentConfig, Augmentation};
pub use classes::{ClassInfo, ClassTable, MAX_CLASSES};
pub use dataset::{
    available_splits, discover, DiscoverOptions, Discovery, LabelEncoding, LabelFile, LoadedSample,
    Sample,
};
pub use error::{format_pixels, DataError, Result};
pub use folder::{discover_folder, Dataset, DatasetFormat};
pub use labels::{Label, IGNORE_TRAIN_ID, LABELS, NUM_TRAIN_CLASSES};
pub use loader::{Batch, Batches, Loader, LoaderConfig};
pub use palette::{colorize_train_ids, label_id_image, overlay_train_ids, train_id_image, Palette};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
