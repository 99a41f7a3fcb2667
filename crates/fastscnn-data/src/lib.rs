//! Cityscapes for Fast-SCNN: the official label table (ids, train ids, categories, colours) and the
//! mappings between them.

pub mod labels;
pub mod palette;

pub use labels::{Label, IGNORE_TRAIN_ID, LABELS, NUM_TRAIN_CLASSES};
pub use palette::{colorize_train_ids, train_id_image};
