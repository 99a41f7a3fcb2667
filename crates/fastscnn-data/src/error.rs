use std::path::PathBuf;

/// Why a dataset could not be read, prepared or batched. Every variant that concerns a file or a
/// folder names it, so the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: dataset root does not exist", path.display())]
    MissingRoot { path: PathBuf },
    #[error("{}: split `{split}` not found (no such folder)", path.display())]
    MissingSplit { split: String, path: PathBuf },
    #[error("{}: no label folder (expected gtFine/<split>/<city>/*_gtFine_labelIds.png)", path.display())]
    MissingLabelFolder { path: PathBuf },
    #[error("{}: no images (`*_leftImg8bit.png`) in this split", path.display())]
    EmptySplit { path: PathBuf },
    #[error("{}: no label for this image (expected {})", image.display(), expected.display())]
    MissingLabel { image: PathBuf, expected: PathBuf },
    #[error(
        "{}: label is {}x{} but its image {} is {}x{}",
        label.display(), label_size.0, label_size.1, image.display(), image_size.0, image_size.1
    )]
    SizeMismatch {
        image: PathBuf,
        label: PathBuf,
        image_size: (u32, u32),
        label_size: (u32, u32),
    },
    #[error("{}: cannot read image", path.display())]
    ReadImage {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "{}: {width}x{height} is {}, over the budget of {}",
        path.display(), format_pixels(u64::from(*width) * u64::from(*height)), format_pixels(*max_pixels)
    )]
    TooManyPixels {
        path: PathBuf,
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error(
        "{}: {bytes} bytes, more than an image within the budget of {} can hold",
        path.display(), format_pixels(*max_pixels)
    )]
    FileTooLarge {
        path: PathBuf,
        bytes: u64,
        max_pixels: u64,
    },
    #[error("{}: the file ends before the image does (truncated JPEG)", path.display())]
    Truncated { path: PathBuf },
    #[error(
        "{}: pixel ({x}, {y}) holds {what} {value}, which the Cityscapes label table does not have",
        path.display()
    )]
    UnknownLabel {
        path: PathBuf,
        what: &'static str,
        value: u8,
        x: u32,
        y: u32,
    },
    #[error("split `{split}`: a split is one folder name, without `/`, `\\` or `..`")]
    InvalidSplit { split: String },
    #[error("{}: expected an 8-bit single-channel label image, found {found}", path.display())]
    LabelFormat { path: PathBuf, found: String },
    #[error("{}: cannot read folder", path.display())]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("images of one batch differ in size: {first} and {other}")]
    UnequalBatch { first: String, other: String },
    #[error("invalid {what}: {why}")]
    InvalidConfig { what: &'static str, why: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DataError>;

/// A pixel count as people read it: megapixels from a tenth of one, otherwise exact.
pub fn format_pixels(count: u64) -> String {
    if count >= 100_000 {
        format!("{:.1} megapixels", count as f64 / 1e6)
    } else {
        format!("{count} pixels")
    }
}
