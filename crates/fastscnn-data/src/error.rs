use std::path::PathBuf;

/// Why a dataset could not be read, prepared or batched. Every variant that concerns a file or a
/// folder names it, so the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Returned when the dataset root is not a folder.
    #[error("{}: dataset root does not exist", path.display())]
    MissingRoot {
        /// The dataset root as given.
        path: PathBuf,
    },
    /// Returned when a split has no folder: `leftImg8bit/<split>` for its images, or
    /// `gtFine/<split>` where its labels are needed.
    #[error("{}: split `{split}` not found (no such folder)", path.display())]
    MissingSplit {
        /// The split's name as given.
        split: String,
        /// The folder that does not exist.
        path: PathBuf,
    },
    /// Returned when label files are looked for under a dataset root that has no `gtFine` folder.
    #[error("{}: no label folder (expected gtFine/<split>/<city>/*_gtFine_labelIds.png)", path.display())]
    MissingLabelFolder {
        /// The `gtFine` folder that does not exist.
        path: PathBuf,
    },
    /// Returned when no city folder of a split holds an image and no frame was left out as broken.
    #[error("{}: no images (`*_leftImg8bit.png`) in this split", path.display())]
    EmptySplit {
        /// The split's image folder, `leftImg8bit/<split>`.
        path: PathBuf,
    },
    /// Returned when labels are required and an image has neither a `*_gtFine_labelTrainIds.png`
    /// nor a `*_gtFine_labelIds.png`.
    #[error("{}: no label for this image (expected {})", image.display(), expected.display())]
    MissingLabel {
        /// The image without a label.
        image: PathBuf,
        /// The `*_gtFine_labelIds.png` that was looked for.
        expected: PathBuf,
    },
    /// Returned when a frame's label and image differ in size: from the file headers at
    /// discovery, from the decoded pixels at load.
    #[error(
        "{}: label is {}x{} but its image {} is {}x{}",
        label.display(), label_size.0, label_size.1, image.display(), image_size.0, image_size.1
    )]
    SizeMismatch {
        /// The image file.
        image: PathBuf,
        /// The label file.
        label: PathBuf,
        /// The image's (width, height) in pixels.
        image_size: (u32, u32),
        /// The label's (width, height) in pixels.
        label_size: (u32, u32),
    },
    /// Returned when a file cannot be opened, read or decoded as an image, or is not a regular
    /// file.
    #[error("{}: cannot read image: {cause}", path.display())]
    ReadImage {
        /// The file that could not be read.
        path: PathBuf,
        /// The file system's or the decoder's error.
        cause: image::ImageError,
    },
    /// Returned when an image's header declares more pixels than the budget, before its pixels
    /// are decoded.
    #[error(
        "{}: {width}x{height} is {}, over the budget of {}",
        path.display(), format_pixels(u64::from(*width) * u64::from(*height)), format_pixels(*max_pixels)
    )]
    TooManyPixels {
        /// The image file.
        path: PathBuf,
        /// The width the header declares, in pixels.
        width: u32,
        /// The height the header declares, in pixels.
        height: u32,
        /// The pixel budget the image exceeds.
        max_pixels: u64,
    },
    /// Returned when a file holds more bytes than a PNG or JPEG within the pixel budget can, before
    /// it is decoded.
    #[error(
        "{}: {bytes} bytes, more than an image within the budget of {} can hold",
        path.display(), format_pixels(*max_pixels)
    )]
    FileTooLarge {
        /// The file that was refused.
        path: PathBuf,
        /// The file's size in bytes; the byte limit plus one where the size cannot be read.
        bytes: u64,
        /// The pixel budget from which the byte limit follows.
        max_pixels: u64,
    },
    /// Returned when a JPEG's bytes run out before its end-of-image marker: the decoder would fill
    /// the missing part in and return the image as if whole.
    #[error("{}: the file ends before the image does (truncated JPEG)", path.display())]
    Truncated {
        /// The truncated JPEG file.
        path: PathBuf,
    },
    /// Returned when a label image holds a value its encoding does not have: a label id outside
    /// the official table, or a train id other than 0..19 and 255.
    #[error(
        "{}: pixel ({x}, {y}) holds {what} {value}, which the Cityscapes label table does not have",
        path.display()
    )]
    UnknownLabel {
        /// The label file.
        path: PathBuf,
        /// How the value was read: `"label id"` or `"train id"`.
        what: &'static str,
        /// The value the table does not have.
        value: u8,
        /// Column of the first pixel holding the value.
        x: u32,
        /// Row of the first pixel holding the value.
        y: u32,
    },
    /// Returned when a folder dataset's mask holds a value that is neither a class index nor
    /// the ignore value of its `classes.json`.
    #[error(
        "{}: pixel ({x}, {y}) holds {value}, neither a class (0 to {}) nor the ignore value \
         {ignore} of classes.json",
        path.display(),
        classes - 1
    )]
    UnknownClass {
        /// The mask file.
        path: PathBuf,
        /// The value found.
        value: u8,
        /// The number of classes of the dataset.
        classes: u8,
        /// The dataset's ignore value.
        ignore: u8,
        /// Column of the first pixel holding the value.
        x: u32,
        /// Row of the first pixel holding the value.
        y: u32,
    },
    /// Returned when a folder dataset's mask has no image of the same name beside it.
    #[error(
        "{}: a mask without an image (expected {}.png, .jpg or .jpeg under images/)",
        mask.display(),
        expected.display()
    )]
    MaskWithoutImage {
        /// The mask file.
        mask: PathBuf,
        /// The image it asks for, without its extension.
        expected: PathBuf,
    },
    /// Returned when two images of a folder dataset share one mask (`a.png` and `a.jpg`).
    #[error("{} and {}: two images with one name share a mask", first.display(), second.display())]
    AmbiguousImage {
        /// The first of the two images.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
    /// Returned when a folder dataset's split has no image.
    #[error("{}: no images (*.png, *.jpg, *.jpeg) in this split", path.display())]
    NoImages {
        /// The split's image folder.
        path: PathBuf,
    },
    /// Returned when the folders of a split nest deeper than discovery follows.
    #[error("{}: folders nested deeper than {depth} (a symbolic link loop?)", path.display())]
    TooDeep {
        /// The folder past the limit.
        path: PathBuf,
        /// The limit.
        depth: usize,
    },
    /// Returned when a root is in neither dataset layout.
    #[error(
        "{}: neither a Cityscapes root (leftImg8bit/, gtFine/) nor a folder dataset \
         (images/, masks/, classes.json)",
        path.display()
    )]
    UnknownLayout {
        /// The dataset root.
        path: PathBuf,
    },
    /// Returned when a split name is not one plain folder name (it is empty, `.` or `..`, or
    /// holds `/` or `\`), so that no split reaches outside the dataset root.
    #[error("split `{split}`: a split is one folder name, without `/`, `\\` or `..`")]
    InvalidSplit {
        /// The split name as given.
        split: String,
    },
    /// Returned when a label file decodes to anything but 8-bit single-channel pixels, rather than
    /// converting it into wrong ids.
    #[error("{}: expected an 8-bit single-channel label image, found {found}", path.display())]
    LabelFormat {
        /// The label file.
        path: PathBuf,
        /// The colour type the file decodes to, as `image::ColorType` prints it (e.g. `Rgb8`).
        found: String,
    },
    /// Returned when a classes file is missing, is not JSON, or describes no valid table.
    #[error("{}: {why}", path.display())]
    Classes {
        /// The classes file.
        path: PathBuf,
        /// What is wrong, and where in the file.
        why: String,
    },
    /// Returned when a folder of the dataset cannot be listed.
    #[error("{}: cannot read folder: {cause}", path.display())]
    ReadDir {
        /// The folder that could not be listed.
        path: PathBuf,
        /// The file system's error.
        cause: std::io::Error,
    },
    /// Returned when a prepared `*_gtFine_labelTrainIds.png` cannot be encoded or written.
    #[error("{}: cannot write: {cause}", path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The file system's or the encoder's error.
        cause: std::io::Error,
    },
    /// Returned when the images, or the labels, of one batch differ in size and so cannot be
    /// stacked into one tensor.
    #[error("images of one batch differ in size: {first} and {other}")]
    UnequalBatch {
        /// The batch's first sample, as `IMAGE-PATH (WIDTHxHEIGHT)`.
        first: String,
        /// The first sample whose size differs from it, in the same form.
        other: String,
    },
    /// Returned when an augmentation or loader configuration is invalid, when a loader is given
    /// no samples, or when a loader's worker thread stops without handing over its batch.
    #[error("invalid {what}: {why}")]
    InvalidConfig {
        /// The configuration concerned: `"augmentation"` or `"loader"`.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Returned when candle cannot build a batch's tensors.
    #[error("{}", fastscnn_core::candle_message(.0))]
    Candle(candle_core::Error),
}

/// candle's error as the `Candle` variant, which shows it and is the end of the chain (its
/// `source` is `None`): its message is already in ours.
impl From<candle_core::Error> for DataError {
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(error)
    }
}

/// The result of this crate's fallible functions.
pub type Result<T> = std::result::Result<T, DataError>;

/// A pixel count as people read it: megapixels from a tenth of one, otherwise exact.
pub fn format_pixels(count: u64) -> String {
    if count >= 100_000 {
        format!("{:.1} megapixels", count as f64 / 1e6)
    } else {
        format!("{count} pixels")
    }
}
