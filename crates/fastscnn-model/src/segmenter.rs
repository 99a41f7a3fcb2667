//! The common case in plain buffers: 8-bit RGB pixels in; a label map of bytes, or per-class
//! scores as f32 planes, out; the class names and colours to show them. No tensor in sight, for
//! programs that have a camera frame and want its classes.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fastscnn_data::palette::Palette;
use fastscnn_data::{ClassTable, MAX_CLASSES};
use image::{GrayImage, RgbImage};

use crate::error::{ModelError, Result};
use crate::fast_scnn::class_softmax;
use crate::preprocess::pixels_to_tensor;
use crate::{resize_image, ExecutionContext, FastScnn, Isa, LoadOptions, DEFAULT_MAX_PIXELS};

/// 8-bit RGB pixels row by row, three bytes a pixel, borrowed: an [`RgbImage`] (`From`) or a
/// caller's buffer ([`RgbFrame::new`]), such as a camera frame.
#[derive(Debug, Clone, Copy)]
pub struct RgbFrame<'a> {
    pixels: &'a [u8],
    width: u32,
    height: u32,
}

impl<'a> RgbFrame<'a> {
    /// A `width` x `height` frame over `pixels`, which must hold exactly `3 * width * height`
    /// bytes.
    pub fn new(pixels: &'a [u8], width: u32, height: u32) -> Result<Self> {
        // At most 3 * (2^32 - 1)^2 < 2^66: in u128 it cannot wrap.
        let expected = 3 * u128::from(width) * u128::from(height);
        if pixels.len() as u128 != expected {
            return Err(ModelError::Input(format!(
                "a {width}x{height} RGB frame is {expected} bytes (3 a pixel); got {}",
                pixels.len()
            )));
        }
        Ok(Self {
            pixels,
            width,
            height,
        })
    }

    /// The pixels, row by row, R, G, B.
    pub fn pixels(&self) -> &'a [u8] {
        self.pixels
    }

    /// Pixels per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }
}

impl<'a> From<&'a RgbImage> for RgbFrame<'a> {
    fn from(image: &'a RgbImage) -> Self {
        let (width, height) = image.dimensions();
        Self {
            pixels: image.as_raw(),
            width,
            height,
        }
    }
}

/// A class index per pixel, row by row, at the size of the frame it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    labels: Vec<u8>,
    width: u32,
    height: u32,
}

impl LabelMap {
    /// A label map of `width * height` class indices, row by row: to colour or lay over an image
    /// labels that did not come from a [`Segmenter`].
    pub fn new(labels: Vec<u8>, width: u32, height: u32) -> Result<Self> {
        let expected = u128::from(width) * u128::from(height);
        if labels.len() as u128 != expected {
            return Err(ModelError::Input(format!(
                "a {width}x{height} label map holds {expected} labels; got {}",
                labels.len()
            )));
        }
        Ok(Self {
            labels,
            width,
            height,
        })
    }

    /// Pixels per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The class indices, `width * height` of them, row by row.
    pub fn as_slice(&self) -> &[u8] {
        &self.labels
    }

    /// The class indices, without a copy.
    pub fn into_vec(self) -> Vec<u8> {
        self.labels
    }

    /// The class at column `x` of row `y`; `None` outside the map.
    pub fn get(&self, x: u32, y: u32) -> Option<u8> {
        (x < self.width && y < self.height)
            .then(|| self.labels[y as usize * self.width as usize + x as usize])
    }

    /// The map as a greyscale image whose values are the class indices.
    pub fn to_image(&self) -> GrayImage {
        GrayImage::from_raw(self.width, self.height, self.labels.clone())
            .expect("a label map holds width * height labels")
    }
}

/// A score per class and pixel as f32: `classes` planes of `height` rows of `width`, the
/// (C, H, W) layout of the network's output.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScores {
    scores: Vec<f32>,
    classes: usize,
    width: u32,
    height: u32,
}

impl ClassScores {
    /// The number of planes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Pixels per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Every score, plane after plane.
    pub fn as_slice(&self) -> &[f32] {
        &self.scores
    }

    /// Every score, plane after plane, without a copy.
    pub fn into_vec(self) -> Vec<f32> {
        self.scores
    }

    /// The scores of `class` for every pixel, row by row; `None` past the last class.
    pub fn plane(&self, class: usize) -> Option<&[f32]> {
        let area = self.width as usize * self.height as usize;
        (class < self.classes).then(|| &self.scores[class * area..(class + 1) * area])
    }

    /// The best-scoring class of every pixel (the first of equal scores, as the network's own
    /// argmax).
    pub fn argmax(&self) -> LabelMap {
        let area = self.width as usize * self.height as usize;
        let mut best = vec![0u8; area];
        let mut top = self.scores[..area].to_vec();
        for class in 1..self.classes {
            let plane = &self.scores[class * area..(class + 1) * area];
            for ((label, top), &score) in best.iter_mut().zip(&mut top).zip(plane) {
                if score > *top {
                    *top = score;
                    *label = class as u8;
                }
            }
        }
        LabelMap {
            labels: best,
            width: self.width,
            height: self.height,
        }
    }
}

/// Where a [`Segmenter`] runs, at what resolution, and the largest frame it takes.
#[derive(Debug, Clone)]
pub struct SegmenterOptions {
    device: Device,
    dtype: DType,
    threads: Option<usize>,
    isa: Option<Isa>,
    input_scale: f32,
    max_pixels: u64,
}

impl Default for SegmenterOptions {
    /// The CPU in f32, one thread per core, the processor's best instruction set, full
    /// resolution, frames up to [`DEFAULT_MAX_PIXELS`].
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            threads: None,
            isa: None,
            input_scale: 1.0,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl SegmenterOptions {
    /// The device the weights are loaded on and the network runs on.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The dtype of the weights and the computation: f32 (the CPU's fused kernels) or, on a
    /// GPU, f16 or bf16.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The CPU threads the network runs on: a pool of the segmenter's own (the caller's threads
    /// are left alone; each segmenter loaded has its pool, so a program with several shares the
    /// cores between them). Default: one per core. Only the CPU has threads to choose.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// The instruction set of the CPU kernels. Default: the best the processor has. Only the
    /// CPU has kernels to choose.
    pub fn isa(mut self, isa: Isa) -> Self {
        self.isa = Some(isa);
        self
    }

    /// Run the network on frames scaled by this factor in (0, 1] (the paper's ½ and ¼ modes:
    /// about 4x and 16x fewer pixels to compute); outputs keep the frame's size.
    pub fn input_scale(mut self, scale: f32) -> Self {
        self.input_scale = scale;
        self
    }

    /// The largest frame taken, in pixels: the network's memory grows with them, and a frame
    /// over this is an error rather than an allocation that fails.
    pub fn max_pixels(mut self, pixels: u64) -> Self {
        self.max_pixels = pixels;
        self
    }
}

/// A Fast-SCNN model ready for frames: RGB pixels in, plain buffers out. Load it once and call
/// it for every frame; it is `Send + Sync`, and frames from several threads at once run side by
/// side in its thread pool.
///
/// ```no_run
/// use fastscnn_model::{Segmenter, SegmenterOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let segmenter = Segmenter::from_file("fastscnn.safetensors", &SegmenterOptions::default())?;
/// let (width, height) = (640, 480);
/// let camera_frame = vec![0u8; 3 * width * height];
/// let labels = segmenter.segment_rgb(&camera_frame, width as u32, height as u32)?;
/// let road = segmenter.class_names()[usize::from(labels.get(320, 400).unwrap())].clone();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Segmenter {
    model: FastScnn,
    palette: Palette,
    input_scale: f32,
    max_pixels: u64,
}

impl Segmenter {
    /// Loads weights in either public layout (safetensors or PyTorch) to run as `options` say.
    pub fn from_file(path: impl AsRef<Path>, options: &SegmenterOptions) -> Result<Self> {
        check_input_scale(options.input_scale)?;
        let context = match (options.device.is_cpu(), options.isa) {
            (false, _) => None,
            (true, Some(isa)) => Some(ExecutionContext::new(isa, options.threads)?),
            (true, None) => Some(ExecutionContext::detected(options.threads)?),
        };
        let load = LoadOptions {
            device: options.device.clone(),
            dtype: options.dtype,
            context,
            ..LoadOptions::default()
        };
        Ok(Self::new(FastScnn::from_file(path, &load)?)?
            .with_input_scale(options.input_scale)?
            .with_max_pixels(options.max_pixels))
    }

    /// A segmenter over a model already built, at full resolution, taking frames up to
    /// [`DEFAULT_MAX_PIXELS`]. The model's classes must fit in a byte below the ignore value
    /// (1 to [`MAX_CLASSES`]).
    pub fn new(model: FastScnn) -> Result<Self> {
        let classes = model.num_classes();
        if !(1..=MAX_CLASSES).contains(&classes) {
            return Err(ModelError::ClassCount { classes });
        }
        Ok(Self {
            palette: model.classes().palette(),
            model,
            input_scale: 1.0,
            max_pixels: DEFAULT_MAX_PIXELS,
        })
    }

    /// Runs the network on frames scaled by `scale`, in (0, 1]; see
    /// [`SegmenterOptions::input_scale`].
    pub fn with_input_scale(mut self, scale: f32) -> Result<Self> {
        check_input_scale(scale)?;
        self.input_scale = scale;
        Ok(self)
    }

    /// Takes frames up to `pixels`; see [`SegmenterOptions::max_pixels`].
    pub fn with_max_pixels(mut self, pixels: u64) -> Self {
        self.max_pixels = pixels;
        self
    }

    /// The network, for the tensor API.
    pub fn model(&self) -> &FastScnn {
        &self.model
    }

    /// The names and colours of the classes, in index order ([`FastScnn::classes`]).
    pub fn classes(&self) -> &ClassTable {
        self.model.classes()
    }

    /// The name of every class, in index order.
    pub fn class_names(&self) -> Vec<&str> {
        self.model.classes().names()
    }

    /// The classes' colours, as [`Segmenter::colorize`] and [`Segmenter::overlay`] draw them.
    pub fn palette(&self) -> &Palette {
        &self.palette
    }

    /// The class of every pixel of `frame`.
    pub fn segment<'a>(&self, frame: impl Into<RgbFrame<'a>>) -> Result<LabelMap> {
        let frame = frame.into();
        let (input, height, width) = self.input(frame)?;
        let labels = self.model.predict_at(&input, height, width)?;
        Ok(LabelMap {
            labels: labels.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?,
            width: frame.width,
            height: frame.height,
        })
    }

    /// The class of every pixel of `width` x `height` RGB bytes, row by row.
    pub fn segment_rgb(&self, pixels: &[u8], width: u32, height: u32) -> Result<LabelMap> {
        self.segment(RgbFrame::new(pixels, width, height)?)
    }

    /// The softmax probability of every class at every pixel of `frame`.
    pub fn probabilities<'a>(&self, frame: impl Into<RgbFrame<'a>>) -> Result<ClassScores> {
        let frame = frame.into();
        let (input, height, width) = self.input(frame)?;
        let probabilities = if self.input_scale == 1.0 {
            self.model.probabilities(&input)?
        } else {
            class_softmax(&self.model.logits_at(&input, height, width)?)?
        };
        self.scores(frame, &probabilities)
    }

    /// The network's scores (logits) for every class at every pixel of `frame`.
    pub fn logits<'a>(&self, frame: impl Into<RgbFrame<'a>>) -> Result<ClassScores> {
        let frame = frame.into();
        let (input, height, width) = self.input(frame)?;
        let logits = self.model.logits_at(&input, height, width)?;
        self.scores(frame, &logits)
    }

    /// `labels` in the palette's colours.
    pub fn colorize(&self, labels: &LabelMap) -> RgbImage {
        self.palette
            .colorize(&labels.labels, labels.width, labels.height)
    }

    /// The palette's colours blended over `image`: `alpha` of the colour, `1 - alpha` of the
    /// photo. `image` must be the frame `labels` were made from (same size).
    pub fn overlay(&self, image: &RgbImage, labels: &LabelMap, alpha: f32) -> Result<RgbImage> {
        let mismatch = || {
            ModelError::Input(format!(
                "a {}x{} label map cannot be laid over a {}x{} image",
                labels.width,
                labels.height,
                image.width(),
                image.height()
            ))
        };
        if image.dimensions() != (labels.width, labels.height) {
            return Err(mismatch());
        }
        self.palette
            .overlay(image, &labels.labels, alpha)
            .ok_or_else(mismatch)
    }

    /// The network's input for `frame` (scaled as asked), and the size outputs are wanted at.
    fn input(&self, frame: RgbFrame<'_>) -> Result<(Tensor, usize, usize)> {
        let (width, height) = (frame.width, frame.height);
        let pixels = u64::from(width) * u64::from(height);
        if pixels == 0 {
            return Err(ModelError::Input(format!(
                "the frame is empty ({width}x{height})"
            )));
        }
        if pixels > self.max_pixels {
            return Err(ModelError::Input(format!(
                "a {width}x{height} frame is over the {} pixels the segmenter takes \
                 (SegmenterOptions::max_pixels)",
                self.max_pixels
            )));
        }
        let norm = &self.model.config().normalization;
        let device = self.model.device();
        let input = if self.input_scale < 1.0 {
            let image = RgbImage::from_raw(width, height, frame.pixels.to_vec())
                .expect("an RgbFrame holds 3 * width * height bytes");
            let scaled = resize_image(&image, self.input_scale);
            let (w, h) = scaled.dimensions();
            let reach = self.model.min_input_size() as u32;
            if w < reach || h < reach {
                return Err(ModelError::Input(format!(
                    "at input scale {} the {width}x{height} frame is {w}x{h}, smaller than \
                     the network's {reach}x{reach} first window",
                    self.input_scale
                )));
            }
            pixels_to_tensor(scaled.as_raw(), w, h, norm, device)?
        } else {
            pixels_to_tensor(frame.pixels, width, height, norm, device)?
        };
        let input = input.to_dtype(self.model.dtype())?;
        Ok((input, height as usize, width as usize))
    }

    /// A (1, C, H, W) output as plain f32 planes.
    fn scores(&self, frame: RgbFrame<'_>, scores: &Tensor) -> Result<ClassScores> {
        Ok(ClassScores {
            scores: scores.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            classes: self.model.num_classes(),
            width: frame.width,
            height: frame.height,
        })
    }
}

/// An input scale [`Segmenter`] can run at: in (0, 1].
fn check_input_scale(scale: f32) -> Result<()> {
    if scale > 0.0 && scale <= 1.0 {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "input scale {scale}: must be in (0, 1]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Module;
    use fastscnn_core::layers::NormOptions;

    use super::*;
    use crate::{image_to_tensor, BatchNormMode, FastScnnConfig};

    /// A reference-layout model of `classes` classes with random weights, on the fused CPU path.
    fn segmenter(classes: usize) -> Segmenter {
        let norm = NormOptions {
            mode: BatchNormMode::Folded,
            ..NormOptions::default()
        };
        let config = FastScnnConfig::reference(classes);
        let model = fastscnn_core::testing::random_layer(5, |vb| FastScnn::new(&config, norm, vb))
            .unwrap()
            .with_cpu_kernels(true)
            .unwrap();
        Segmenter::new(model).unwrap()
    }

    /// A photo-like frame: smooth gradients, so the scaled and full-size runs see the same scene.
    fn frame(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 3 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn labels_are_the_networks_label_map_as_bytes() {
        let segmenter = segmenter(5);
        let image = frame(70, 45);
        let labels = segmenter.segment(&image).unwrap();
        let input = image_to_tensor(
            &image,
            &segmenter.model().config().normalization,
            &Device::Cpu,
        )
        .unwrap();
        let expected: Vec<u32> = segmenter
            .model()
            .predict(&input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!((labels.width(), labels.height()), (70, 45));
        let got: Vec<u32> = labels.as_slice().iter().map(|&l| u32::from(l)).collect();
        assert_eq!(got, expected);
        assert!(
            got.iter().any(|&l| l != got[0]),
            "a constant map agrees with anything"
        );
        assert_eq!(
            segmenter.segment_rgb(image.as_raw(), 70, 45).unwrap(),
            labels
        );
        assert_eq!(labels.get(69, 44), Some(labels.as_slice()[45 * 70 - 1]));
        assert_eq!(labels.get(70, 0), None);
    }

    #[test]
    fn scores_are_the_networks_outputs_in_planes() {
        let segmenter = segmenter(5);
        let image = frame(40, 33);
        let input = image_to_tensor(
            &image,
            &segmenter.model().config().normalization,
            &Device::Cpu,
        )
        .unwrap();
        let logits = segmenter.logits(&image).unwrap();
        let expected: Vec<f32> = segmenter
            .model()
            .forward(&input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(logits.as_slice(), &expected[..]);
        assert_eq!(logits.classes(), 5);
        assert_eq!(logits.argmax(), segmenter.segment(&image).unwrap());
        let probabilities = segmenter.probabilities(&image).unwrap();
        let area = 40 * 33;
        for pixel in [0, 17, area - 1] {
            let sum: f32 = (0..5).map(|c| probabilities.plane(c).unwrap()[pixel]).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        }
        assert_eq!(probabilities.argmax(), logits.argmax());
        assert!(probabilities.plane(5).is_none());
    }

    #[test]
    fn a_scaled_down_run_answers_at_the_frames_size() {
        let full = segmenter(5);
        let half = full.clone().with_input_scale(0.5).unwrap();
        let image = frame(96, 64);
        let labels = half.segment(&image).unwrap();
        assert_eq!((labels.width(), labels.height()), (96, 64));
        let probabilities = half.probabilities(&image).unwrap();
        assert_eq!(probabilities.as_slice().len(), 5 * 96 * 64);
        assert_eq!(probabilities.argmax(), labels);
        assert_ne!(
            labels,
            full.segment(&image).unwrap(),
            "the scale was not applied"
        );
        for scale in [0.0, -1.0, 1.5, f32::NAN] {
            let err = full.clone().with_input_scale(scale).unwrap_err();
            assert!(err.to_string().contains("input scale"), "{err}");
        }
    }

    #[test]
    fn class_names_and_colours_follow_the_class_count() {
        let cityscapes = segmenter(19);
        assert_eq!(cityscapes.class_names()[0], "road");
        assert_eq!(cityscapes.palette().colour(0), [128, 64, 128]);
        let other = segmenter(3);
        assert_eq!(other.class_names(), ["class_0", "class_1", "class_2"]);
        let image = frame(30, 20);
        let labels = other.segment(&image).unwrap();
        let colours = other.colorize(&labels);
        let (x, y) = (7, 11);
        let class = labels.get(x, y).unwrap();
        assert_eq!(colours.get_pixel(x, y).0, other.palette().colour(class));
        assert_eq!(other.overlay(&image, &labels, 1.0).unwrap(), colours);
        let err = other.overlay(&frame(31, 20), &labels, 0.5).unwrap_err();
        assert!(err.to_string().contains("30x20"), "{err}");
    }

    #[test]
    fn bad_frames_get_our_messages() {
        let segmenter = segmenter(5);
        let half = segmenter.clone().with_input_scale(0.5).unwrap();
        let err = segmenter
            .segment_rgb(&[0; 10], 2, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("12 bytes") && err.contains("got 10"), "{err}");
        assert!(RgbFrame::new(&[], u32::MAX, u32::MAX).is_err());
        for s in [&segmenter, &half] {
            for (w, h) in [(0, 0), (0, 480), (640, 0)] {
                let err = s.segment_rgb(&[], w, h).unwrap_err().to_string();
                assert!(err.contains("the frame is empty"), "{err}");
            }
        }
        let err = segmenter
            .segment_rgb(&[0; 6], 2, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("smaller than the stem"), "{err}");
        let err = half.segment(&frame(10, 4)).unwrap_err().to_string();
        assert!(
            err.contains("at input scale 0.5 the 10x4 frame is 5x2"),
            "{err}"
        );
        let err = half.logits(&frame(4, 40)).unwrap_err().to_string();
        assert!(err.contains("frame is 2x20"), "{err}");
        let small = segmenter.clone().with_max_pixels(100);
        let err = small.segment(&frame(11, 10)).unwrap_err().to_string();
        assert!(err.contains("over the 100 pixels"), "{err}");
        assert!(small.segment(&frame(10, 10)).is_ok());
    }

    #[test]
    fn label_maps_from_elsewhere_and_mismatched_overlays() {
        let segmenter = segmenter(3);
        let labels = LabelMap::new(vec![0, 1, 2, 1, 0, 2], 3, 2).unwrap();
        assert_eq!(labels.get(2, 1), Some(2));
        assert_eq!(labels.to_image().get_pixel(1, 1).0, [0]);
        assert!(LabelMap::new(vec![0; 5], 3, 2).is_err());
        // Six pixels either way: only the sizes tell them apart.
        let err = segmenter.overlay(&frame(2, 3), &labels, 0.5).unwrap_err();
        assert!(err.to_string().contains("3x2 label map"), "{err}");
        let scores = segmenter.logits(&frame(16, 16)).unwrap();
        assert!(scores.plane(usize::MAX).is_none() && scores.plane(3).is_none());
    }

    #[test]
    fn a_model_without_classes_or_with_too_many_is_refused() {
        for classes in [0, 256] {
            let norm = NormOptions {
                mode: BatchNormMode::Folded,
                ..NormOptions::default()
            };
            let config = FastScnnConfig::reference(classes);
            let model =
                fastscnn_core::testing::random_layer(5, |vb| FastScnn::new(&config, norm, vb))
                    .unwrap();
            let err = Segmenter::new(model).unwrap_err().to_string();
            assert!(err.contains(&format!("{classes} classes")), "{err}");
        }
    }

    #[test]
    fn a_segmenter_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Segmenter>();
        let segmenter = segmenter(5);
        let image = frame(48, 40);
        let expected = segmenter.segment(&image).unwrap();
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..3)
                .map(|_| s.spawn(|| segmenter.segment(&image)))
                .collect();
            for run in runs {
                assert_eq!(run.join().unwrap().unwrap(), expected);
            }
        });
    }
}
