//! The whole network.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use fastscnn_core::layers::{BatchNormMode, Mode, NormOptions};
use fastscnn_core::ops::{resize_argmax, resize_bilinear};
use fastscnn_cpu::ExecutionContext;
use fastscnn_data::ClassTable;

use crate::cpu_inference::CpuInference;
use crate::error::{ModelError, Result};
use crate::stages::{
    run_plan, AuxHead, Classifier, FeatureFusion, GlobalFeatureExtractor, LearningToDownsample,
    Stage, StageExecutor, StageInput,
};
use crate::weights::WeightFile;
use crate::{AuxSource, FastScnnConfig};

/// How to build the network from weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Whether each BatchNorm is folded into its convolution (inference: fewer passes, and the
    /// fused CPU path needs it) or kept with its statistics (training). Default: folded.
    pub batch_norm: BatchNormMode,
    /// The weights' dtype, which inputs must have too. Default: f32 (the fused CPU path's).
    pub dtype: DType,
    /// Where the weights live and the network runs. Default: the CPU.
    pub device: Device,
    /// Where the fused CPU path runs: its instruction set and threads. `None`: the 1x1 weights
    /// are packed for the instruction set of the thread that loads the model ([`Isa::current`]:
    /// the processor's best outside any context), whose kernels they then always run on, and the
    /// frames run in the thread pool the calls are made in (rayon's global one unless the caller
    /// installed another).
    ///
    /// [`Isa::current`]: fastscnn_cpu::Isa::current
    pub context: Option<ExecutionContext>,
}

impl LoadOptions {
    /// Whether a network can be built with these options: `dtype` a float type, and not bf16 on
    /// the CPU, where candle's convolution has no bf16 kernel. [`FastScnn::from_file`] checks
    /// this before reading the file; a caller can check it before fetching one.
    pub fn validate(&self) -> Result<()> {
        let error = |device, why| {
            Err(ModelError::DType {
                dtype: self.dtype,
                device,
                why,
            })
        };
        match self.dtype {
            DType::F32 | DType::F64 | DType::F16 => Ok(()),
            DType::BF16 if self.device.is_cpu() => error(
                "the CPU",
                "candle's CPU convolution has no bf16 (f16 runs there, bf16 on a GPU)",
            ),
            DType::BF16 => Ok(()),
            _ => error(
                "any device",
                "the network's weights must be f16, bf16, f32 or f64",
            ),
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            batch_norm: BatchNormMode::Folded,
            dtype: DType::F32,
            device: Device::Cpu,
            context: None,
        }
    }
}

/// Every intermediate of one forward pass, named as the parity fixtures name them.
#[derive(Debug, Clone)]
pub struct FastScnnStages {
    /// Learning-to-downsample output, 1/8 resolution.
    pub higher_res: Tensor,
    /// Global feature extractor output (after pyramid pooling), 1/32 resolution.
    pub global: Tensor,
    /// Feature fusion output, 1/8 resolution.
    pub fused: Tensor,
    /// Classifier output before upsampling, 1/8 resolution.
    pub classifier: Tensor,
    /// Class scores at the input resolution.
    pub logits: Tensor,
    /// Each auxiliary head's scores at the input resolution, in the config's `aux_heads` order;
    /// empty unless asked for.
    pub aux_logits: Vec<Tensor>,
}

/// A training forward pass's class scores, each head's at its own resolution, before the
/// upsampling to the input's size, for a loss that upsamples them in its own pass
/// (`fastscnn_core::ops::resize_cross_entropy`, which on the CPU in f32 stores neither the
/// full-resolution logits nor their gradients).
#[derive(Debug, Clone)]
pub struct TrainingScores {
    /// The classifier's scores, at 1/8 of the input's resolution.
    pub scores: Tensor,
    /// Each auxiliary head's scores at its features' resolution, in the order of
    /// [`FastScnn::aux_heads`].
    pub aux_scores: Vec<Tensor>,
    /// The input's (height, width): the labels'.
    pub size: (usize, usize),
    /// How the scores upsample to `size`: the network's `align_corners`.
    pub align_corners: bool,
}

impl TrainingScores {
    /// Every head's logits at the input's size, the main head's first: what
    /// [`FastScnn::forward_stages`] gives as `logits` and `aux_logits`.
    pub fn logits(&self) -> Result<Vec<Tensor>> {
        let (h, w) = self.size;
        std::iter::once(&self.scores)
            .chain(&self.aux_scores)
            .map(|scores| Ok(resize_bilinear(scores, h, w, self.align_corners)?))
            .collect()
    }
}

/// The network of the paper, with the auxiliary heads its checkpoint has: built from weights
/// ([`FastScnn::from_file`]), it gives logits ([`Module::forward`]), probabilities and label maps
/// for (N, 3, H, W) batches of any size, on the fused CPU path for f32 CPU inputs and through
/// candle's ops elsewhere. Cloning shares the weights.
#[derive(Debug, Clone)]
pub struct FastScnn {
    config: FastScnnConfig,
    learning_to_downsample: LearningToDownsample,
    global_feature_extractor: GlobalFeatureExtractor,
    feature_fusion: FeatureFusion,
    classifier: Classifier,
    aux_heads: Vec<(AuxSource, AuxHead)>,
    /// The names and colours of the classes it scores.
    classes: ClassTable,
    /// The fused CPU path `forward` and `predict` take for f32 CPU inputs; built from the weights
    /// above, so absent while they can still change (training, unfolded BatchNorm).
    cpu: Option<Arc<CpuInference>>,
    /// Where the fused CPU path runs.
    context: Option<ExecutionContext>,
}

impl FastScnn {
    /// Builds the network, auxiliary heads included, from a `VarBuilder` with canonical (reference
    /// layout) key names.
    pub fn new(
        config: &FastScnnConfig,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let aux_heads = config
            .aux_heads
            .iter()
            .map(|&source| {
                let in_channels = match source {
                    AuxSource::HigherRes => config.higher_res_channels(),
                    AuxSource::Global => config.global_channels(),
                };
                let head = AuxHead::new(
                    in_channels,
                    config.aux_hidden_channels,
                    config.num_classes,
                    norm,
                    vb.pp(source.prefix()),
                )?;
                Ok((source, head))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            learning_to_downsample: LearningToDownsample::new(
                config,
                norm,
                vb.pp("learning_to_downsample"),
            )?,
            global_feature_extractor: GlobalFeatureExtractor::new(
                config,
                norm,
                vb.pp("global_feature_extractor"),
            )?,
            feature_fusion: FeatureFusion::new(
                &config.feature_fusion(),
                norm,
                vb.pp("feature_fusion"),
            )?,
            classifier: Classifier::new(
                config.fusion_channels,
                config.num_classes,
                config.classifier_depthwise_relu,
                norm,
                vb.pp("classifier"),
            )?,
            aux_heads,
            classes: ClassTable::for_count(config.num_classes),
            cpu: None,
            context: None,
        })
    }

    /// Loads a checkpoint in either public layout: safetensors or a PyTorch `.pth`/`.pt` file.
    pub fn from_file(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        options.validate()?;
        Self::from_weights(&WeightFile::open(path)?, options)
    }

    /// Builds the network that `weights` describe: the layout from the key names, the number of
    /// classes from the classifier, the auxiliary heads the file has; every key and shape checked.
    pub fn from_weights(weights: &WeightFile, options: &LoadOptions) -> Result<Self> {
        options.validate()?;
        let config = config_for(weights)?;
        let norm = NormOptions {
            mode: options.batch_norm,
            eps: config.bn_eps,
        };
        let mut model = weights.build(config.layout, options.dtype, &options.device, |vb| {
            Self::new(&config, norm, vb)
        })?;
        model.context = options.context.clone();
        model.classes = weights.class_table()?;
        let fast_path = options.device.is_cpu()
            && options.dtype == DType::F32
            && options.batch_norm == BatchNormMode::Folded;
        model.with_cpu_kernels(fast_path)
    }

    /// Turns the fused CPU inference path on or off (on by default for f32 CPU models loaded with
    /// folded BatchNorm); off, `forward` and `predict` run through candle's ops, as training does.
    /// Turning it on snapshots the current weights: turn it on again after changing them.
    pub fn with_cpu_kernels(mut self, enabled: bool) -> Result<Self> {
        self.cpu = if enabled {
            Some(Arc::new(CpuInference::new(
                &self.learning_to_downsample,
                &self.global_feature_extractor,
                &self.feature_fusion,
                &self.classifier,
                self.config.align_corners,
                self.context.as_ref(),
            )?))
        } else {
            None
        };
        Ok(self)
    }

    /// Runs the fused CPU path in `context` from now on: its instruction set's kernels on its
    /// threads (the blocks are built again for them).
    pub fn with_execution_context(mut self, context: ExecutionContext) -> Result<Self> {
        self.context = Some(context);
        let enabled = self.cpu.is_some();
        self.with_cpu_kernels(enabled)
    }

    /// The execution context the fused CPU path runs in, when one was given.
    pub fn execution_context(&self) -> Option<&ExecutionContext> {
        self.context.as_ref()
    }

    /// Whether every BatchNorm was folded into its convolution at load time.
    pub fn is_batch_norm_folded(&self) -> bool {
        self.learning_to_downsample.stem().is_folded()
    }

    /// Whether f32 CPU inputs take the fused CPU path.
    pub fn uses_cpu_kernels(&self) -> bool {
        self.cpu.is_some()
    }

    /// The dtype of the weights, which inputs must have.
    pub fn dtype(&self) -> DType {
        self.learning_to_downsample.stem().conv().weight().dtype()
    }

    /// The device the weights live on, where inputs must be.
    pub fn device(&self) -> &Device {
        self.learning_to_downsample.stem().conv().weight().device()
    }

    /// The smallest height and width the network takes: the stem's 3x3 window, less its
    /// padding (1 with OpenMMLab's, 3 without).
    pub fn min_input_size(&self) -> usize {
        3usize.saturating_sub(2 * self.config.stem_padding).max(1)
    }

    /// An input the network can take: an (N, in_channels, H, W) batch of the weights' dtype on
    /// their device, N at least 1, H and W at least the stem's window (3 without padding, 1 with
    /// OpenMMLab's); candle's conv would panic below it. The messages say what to do, where
    /// candle's would name its own ops.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let input = |why: String| Err(ModelError::Input(why));
        let channels = self.config.in_channels;
        let &[n, c, h, w] = x.dims() else {
            return input(format!(
                "the network takes an (N, {channels}, H, W) batch; got a tensor of shape {:?} \
                 (image_to_tensor makes one from an image)",
                x.dims()
            ));
        };
        if c != channels {
            return input(format!(
                "the network takes {channels} input channels; got a batch of shape {:?}",
                x.dims()
            ));
        }
        if x.dtype() != self.dtype() {
            return input(format!(
                "the network's weights are {:?} and the input is {:?}: convert the input \
                 (image_to_tensor makes a normalised f32 batch from 8-bit pixels)",
                self.dtype(),
                x.dtype()
            ));
        }
        if !x.device().same_device(self.device()) {
            return input(format!(
                "the input is on {:?} and the network on {:?}: move the input with to_device",
                x.device().location(),
                self.device().location()
            ));
        }
        if n == 0 {
            return input("the batch is empty (0 images)".to_string());
        }
        let reach = self.min_input_size();
        if h < reach || w < reach {
            return input(format!(
                "a {h}x{w} input is smaller than the stem's {reach}x{reach} window"
            ));
        }
        Ok(())
    }

    /// The fused CPU path, when it is on and `x` can take it.
    fn cpu_path(&self, x: &Tensor) -> Option<&CpuInference> {
        self.cpu
            .as_deref()
            .filter(|_| x.device().is_cpu() && x.dtype() == DType::F32)
    }

    /// The network's configuration: its layout's preset with the file's class count.
    pub fn config(&self) -> &FastScnnConfig {
        &self.config
    }

    /// The number of classes the network scores.
    pub fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    /// The names and colours of the classes, in index order: the table the weights carry, or,
    /// for weights without one, Cityscapes' for 19 classes and `class_N` otherwise.
    pub fn classes(&self) -> &ClassTable {
        &self.classes
    }

    /// The network with `classes` as its class table, which must have as many classes.
    pub fn with_classes(mut self, classes: ClassTable) -> Result<Self> {
        if classes.len() != self.num_classes() {
            return Err(ModelError::Input(format!(
                "a table of {} classes for a network of {}",
                classes.len(),
                self.num_classes()
            )));
        }
        self.classes = classes;
        Ok(self)
    }

    /// The auxiliary heads loaded, in the order of [`FastScnnStages::aux_logits`].
    pub fn aux_heads(&self) -> Vec<AuxSource> {
        self.aux_heads.iter().map(|(source, _)| *source).collect()
    }

    /// Runs the network on a normalised (N, 3, H, W) batch of any height and width and returns every
    /// intermediate; the auxiliary logits only when `with_aux`.
    pub fn forward_stages(&self, x: &Tensor, with_aux: bool) -> Result<FastScnnStages> {
        self.check_input(x)?;
        let (_, _, h, w) = x.dims4()?;
        let mode = Mode::Inference;
        let mut run = CandleRun::new(self, x, mode, CandleHead::Logits(h, w), true);
        let logits = run_plan(&mut run, x, None)?;
        let aux_logits = if with_aux {
            self.aux_scores(&run, mode)?
                .iter()
                .map(|scores| resize_bilinear(scores, h, w, self.config.align_corners))
                .collect::<candle_core::Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(FastScnnStages {
            higher_res: run.kept(Stage::LearningToDownsample)?,
            global: run.kept(Stage::PyramidPooling)?,
            fused: run.kept(Stage::FeatureFusion)?,
            classifier: run.kept(Stage::Classifier)?,
            logits,
            aux_logits,
        })
    }

    /// A training forward pass: batch statistics in every BatchNorm (whose running statistics are
    /// updated; the network must have been built with [`BatchNormMode::Unfolded`]), every
    /// dropout (before each classifying convolution) at probability `dropout` with masks drawn
    /// from `dropout_seed`, and every head's scores at its own resolution.
    pub fn forward_train(
        &self,
        x: &Tensor,
        dropout: f32,
        dropout_seed: u64,
    ) -> Result<TrainingScores> {
        if !(0.0..1.0).contains(&dropout) {
            return Err(ModelError::Input(format!(
                "dropout probability {dropout} is not in [0, 1)"
            )));
        }
        self.check_input(x)?;
        let (_, _, h, w) = x.dims4()?;
        let mode = Mode::Training {
            dropout,
            dropout_seed,
        };
        let mut run = CandleRun::new(self, x, mode, CandleHead::Scores, true);
        let scores = run_plan(&mut run, x, None)?;
        let aux_scores = self.aux_scores(&run, mode)?;
        Ok(TrainingScores {
            scores,
            aux_scores,
            size: (h, w),
            align_corners: self.config.align_corners,
        })
    }

    /// Every auxiliary head's scores, at its features' resolution, from a run that kept them.
    fn aux_scores(&self, run: &CandleRun, mode: Mode) -> Result<Vec<Tensor>> {
        let higher_res = run.kept(Stage::LearningToDownsample)?;
        let global = run.kept(Stage::PyramidPooling)?;
        let mut scores = Vec::new();
        for (site, (source, head)) in (1..).zip(&self.aux_heads) {
            let features = match source {
                AuxSource::HigherRes => &higher_res,
                AuxSource::Global => &global,
            };
            scores.push(head.forward_mode(features, mode, site)?);
        }
        Ok(scores)
    }

    /// Logits resized to `(height, width)`: for inputs scaled down for speed (the paper's ½ and ¼
    /// resolutions) whose predictions are wanted at the original size.
    pub fn logits_at(&self, x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let logits = self.logits(x)?;
        let (_, _, h, w) = logits.dims4()?;
        if (h, w) == (height, width) {
            Ok(logits)
        } else {
            Ok(resize_bilinear(
                &logits,
                height,
                width,
                self.config.align_corners,
            )?)
        }
    }

    /// The label map (N, height, width) of class indices as u32, for an input of any size. At
    /// the input's own size this is [`FastScnn::predict`]; otherwise the logits at the input size
    /// are resized again, as OpenMMLab's inference does for a rescaled input.
    pub fn predict_at(&self, x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        self.check_input(x)?;
        let (_, _, h, w) = x.dims4()?;
        if (h, w) == (height, width) {
            self.predict(x)
        } else {
            Ok(resize_argmax(
                &self.logits(x)?,
                height,
                width,
                self.config.align_corners,
            )?)
        }
    }

    /// The label map, as [`FastScnn::predict`], timing each stage: `record` gets each stage's
    /// name and wall time, the device synchronised after every stage so the time is its own.
    pub fn predict_profiled(
        &self,
        x: &Tensor,
        mut record: impl FnMut(&'static str, Duration),
    ) -> Result<Tensor> {
        self.check_input(x)?;
        if let Some(cpu) = self.cpu_path(x) {
            return Ok(cpu.labels_profiled(x, &mut record)?);
        }
        let (_, _, h, w) = x.dims4()?;
        let mut run = CandleRun::new(self, x, Mode::Inference, CandleHead::Labels(h, w), false);
        let mut timer = |stage: Stage, time| record(stage.name(), time);
        Ok(run_plan(&mut run, x, Some(&mut timer))?)
    }

    /// The label map (N, H, W) of class indices as u32: the paper's "cls" output. The classifier's
    /// 1/8-resolution scores go through one fused resize + argmax, so the logits are never
    /// stored at full resolution.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        if let Some(cpu) = self.cpu_path(x) {
            return Ok(cpu.labels(x)?);
        }
        let (_, _, h, w) = x.dims4()?;
        let mut run = CandleRun::new(self, x, Mode::Inference, CandleHead::Labels(h, w), false);
        Ok(run_plan(&mut run, x, None)?)
    }

    /// Per-pixel class probabilities (N, C, H, W): the paper's "prob" output.
    pub fn probabilities(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        if let Some(cpu) = self.cpu_path(x) {
            return Ok(cpu.probabilities(x)?);
        }
        class_softmax(&self.logits(x)?)
    }

    /// Logits (N, C, H, W) at the input resolution: [`Module::forward`] with this crate's error.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        if let Some(cpu) = self.cpu_path(x) {
            return Ok(cpu.logits(x)?);
        }
        let (_, _, h, w) = x.dims4()?;
        let mut run = CandleRun::new(self, x, Mode::Inference, CandleHead::Logits(h, w), false);
        Ok(run_plan(&mut run, x, None)?)
    }
}

impl Module for FastScnn {
    /// Logits (N, C, H, W) at the input resolution.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.logits(x)?)
    }
}

/// What the candle network's head makes of the scores: logits or labels at the input's height
/// and width, or the scores themselves (for a loss that upsamples them itself).
#[derive(Debug, Clone, Copy)]
enum CandleHead {
    Logits(usize, usize),
    Labels(usize, usize),
    Scores,
}

/// The candle network as an executor of the stage plan, on (N, C, H, W) tensors.
struct CandleRun<'a> {
    model: &'a FastScnn,
    /// The input's, which every stage runs on.
    device: Device,
    mode: Mode,
    head: CandleHead,
    /// The intermediates released by the plan, kept when the caller wants them: every map but
    /// the bottleneck groups', and the classifier's scores.
    kept: Option<Vec<(Stage, Tensor)>>,
}

impl<'a> CandleRun<'a> {
    fn new(model: &'a FastScnn, x: &Tensor, mode: Mode, head: CandleHead, keep: bool) -> Self {
        Self {
            model,
            device: x.device().clone(),
            mode,
            head,
            kept: keep.then(Vec::new),
        }
    }

    /// The output of `stage`, which the run must have kept.
    fn kept(&self, stage: Stage) -> candle_core::Result<Tensor> {
        self.kept
            .iter()
            .flatten()
            .find(|(kept, _)| *kept == stage)
            .map(|(_, map)| map.clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no {} output kept", stage.name())))
    }
}

impl<'a> StageExecutor for CandleRun<'a> {
    type Input = &'a Tensor;
    type Map = Tensor;
    type Output = Tensor;

    fn bottleneck_groups(&self) -> usize {
        self.model.global_feature_extractor.group_count()
    }

    fn learning_to_downsample(&mut self, x: &'a Tensor) -> candle_core::Result<Tensor> {
        self.model.learning_to_downsample.forward_mode(x, self.mode)
    }

    fn bottleneck_group(
        &mut self,
        group: usize,
        x: StageInput<'_, Tensor>,
    ) -> candle_core::Result<Tensor> {
        let out = self
            .model
            .global_feature_extractor
            .forward_group(group, x.map(), self.mode)?;
        x.release(self);
        Ok(out)
    }

    fn pyramid_pooling(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.model
            .global_feature_extractor
            .forward_pyramid_pooling(x, self.mode)
    }

    fn feature_fusion(
        &mut self,
        higher_res: &Tensor,
        global: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.model
            .feature_fusion
            .forward_mode(higher_res, global, self.mode)
    }

    fn classifier(&mut self, fused: &Tensor) -> candle_core::Result<Tensor> {
        self.model.classifier.forward_mode(fused, self.mode)
    }

    fn head(&mut self, scores: Tensor) -> candle_core::Result<Tensor> {
        let align_corners = self.model.config.align_corners;
        let out = match self.head {
            CandleHead::Logits(h, w) => resize_bilinear(&scores, h, w, align_corners)?,
            CandleHead::Labels(h, w) => resize_argmax(&scores, h, w, align_corners)?,
            CandleHead::Scores => scores.clone(),
        };
        self.release(Stage::Classifier, scores);
        Ok(out)
    }

    fn head_stage(&self) -> Stage {
        match self.head {
            CandleHead::Logits(..) => Stage::Upsample,
            CandleHead::Labels(..) => Stage::UpsampleArgmax,
            // No work of its own: its (nil) time is the classifier's.
            CandleHead::Scores => Stage::Classifier,
        }
    }

    fn release(&mut self, stage: Stage, map: Tensor) {
        if let Some(kept) = &mut self.kept {
            if !matches!(stage, Stage::BottleneckGroup(_)) {
                kept.push((stage, map));
            }
        }
    }

    fn synchronize(&mut self) -> candle_core::Result<()> {
        self.device.synchronize()
    }
}

/// The softmax over the classes (dimension 1) of `logits`, in their dtype, computed in f32 at
/// least: a half-precision sum of exponentials would round at every class.
pub(crate) fn class_softmax(logits: &Tensor) -> Result<Tensor> {
    let dtype = logits.dtype();
    let wide = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    Ok(candle_nn::ops::softmax(&logits.to_dtype(wide)?, 1)?.to_dtype(dtype)?)
}

/// The preset of the file's layout, with the class count its classifier was trained for and the
/// auxiliary heads it has.
fn config_for(weights: &WeightFile) -> Result<FastScnnConfig> {
    let layout = weights.layout()?;
    let mut config = layout.config(weights.num_classes()?);
    config.aux_heads.retain(|source| {
        weights.contains(&layout.file_key(&format!("{}.0.weight", source.prefix())))
    });
    Ok(config)
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    /// A reference-layout model with random weights, BatchNorm folded, on the fused CPU path.
    fn random_model() -> FastScnn {
        let norm = NormOptions {
            mode: BatchNormMode::Folded,
            ..NormOptions::default()
        };
        let config = FastScnnConfig::reference(5);
        fastscnn_core::testing::random_layer(11, |vb| FastScnn::new(&config, norm, vb))
            .unwrap()
            .with_cpu_kernels(true)
            .unwrap()
    }

    fn labels(t: &Tensor) -> Vec<Vec<Vec<u32>>> {
        t.to_vec3::<u32>().unwrap()
    }

    /// The logits and the label map of one frame: the two fused outputs.
    fn outputs(model: &FastScnn, x: &Tensor) -> (Vec<f32>, Vec<Vec<Vec<u32>>>) {
        use candle_core::Module;
        let logits = model.forward(x).unwrap().flatten_all().unwrap();
        (
            logits.to_vec1().unwrap(),
            labels(&model.predict(x).unwrap()),
        )
    }

    #[test]
    fn a_training_pass_gives_each_head_its_scores_at_its_own_resolution() {
        let norm = NormOptions {
            mode: BatchNormMode::Unfolded,
            ..NormOptions::default()
        };
        let config = FastScnnConfig::reference(5);
        let model = fastscnn_core::testing::random_layer(11, |vb| FastScnn::new(&config, norm, vb))
            .unwrap();
        let x = fastscnn_core::testing::random_tensor(&[2, 3, 64, 96], 1).unwrap();
        let out = model.forward_train(&x, 0.0, 0).unwrap();
        assert_eq!(out.scores.dims(), [2, 5, 8, 12]);
        let aux: Vec<_> = out.aux_scores.iter().map(|s| s.dims().to_vec()).collect();
        let want: Vec<_> = model
            .aux_heads()
            .iter()
            .map(|source| match source {
                AuxSource::HigherRes => vec![2, 5, 8, 12],
                AuxSource::Global => vec![2, 5, 2, 3],
            })
            .collect();
        assert!(!want.is_empty());
        assert_eq!(aux, want);
        assert_eq!(
            (out.size, out.align_corners),
            ((64, 96), config.align_corners)
        );
        let logits = out.logits().unwrap();
        assert_eq!(logits.len(), 1 + want.len());
        assert!(logits.iter().all(|l| l.dims() == [2, 5, 64, 96]));
    }

    #[test]
    fn options_take_float_dtypes_and_no_bf16_on_the_cpu() {
        let options = |dtype| LoadOptions {
            dtype,
            ..Default::default()
        };
        for dtype in [DType::F16, DType::F32, DType::F64] {
            options(dtype).validate().unwrap();
        }
        for (dtype, why) in [
            (DType::BF16, "convolution has no bf16"),
            (DType::U8, "must be f16"),
        ] {
            let e = options(dtype).validate().unwrap_err();
            assert!(matches!(e, ModelError::DType { .. }), "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        // Checked before the file is opened.
        let e = FastScnn::from_file("no/such/file.safetensors", &options(DType::BF16)).unwrap_err();
        assert!(matches!(e, ModelError::DType { .. }), "{e}");
    }

    #[test]
    fn inputs_of_another_rank_dtype_or_size_get_our_messages() {
        let model = random_model();
        let cases = [
            (
                Tensor::zeros((3, 64, 64), DType::F32, &Device::Cpu),
                "an (N, 3, H, W) batch",
            ),
            (
                Tensor::zeros((1, 3, 64, 64), DType::U8, &Device::Cpu),
                "weights are F32 and the input is U8",
            ),
            (
                Tensor::zeros((1, 3, 64, 64), DType::F64, &Device::Cpu),
                "weights are F32 and the input is F64",
            ),
            (
                Tensor::zeros((0, 3, 64, 64), DType::F32, &Device::Cpu),
                "the batch is empty",
            ),
            (
                Tensor::zeros((1, 4, 64, 64), DType::F32, &Device::Cpu),
                "takes 3 input channels",
            ),
        ];
        for model in [model.clone(), model.with_cpu_kernels(false).unwrap()] {
            for (input, expected) in &cases {
                let input = input.as_ref().unwrap();
                for message in [
                    model.predict(input).unwrap_err().to_string(),
                    model.probabilities(input).unwrap_err().to_string(),
                    model.forward(input).unwrap_err().to_string(),
                    model.logits(input).unwrap_err().to_string(),
                    model.predict_at(input, 32, 32).unwrap_err().to_string(),
                    model.logits_at(input, 32, 32).unwrap_err().to_string(),
                ] {
                    assert!(message.contains(expected), "{message}");
                }
            }
        }
    }

    #[test]
    fn a_frame_started_while_the_buffers_are_held_brings_its_own() {
        let model = random_model();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 96), &Device::Cpu).unwrap();
        let expected = outputs(&model, &x);
        let cpu = model.cpu.as_deref().unwrap();
        // Waiting for the lock here would never end.
        let held = cpu.pool.lock().unwrap();
        assert!(outputs(&model, &x) == expected);
        drop(held);
        assert!(outputs(&model, &x) == expected);
    }

    #[test]
    fn frames_from_the_thread_pool_itself_and_from_several_threads_agree() {
        let model = random_model();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 96), &Device::Cpu).unwrap();
        let expected = outputs(&model, &x);
        let first = expected.0[0];
        assert!(
            expected.0.iter().any(|&v| v != first),
            "constant logits agree with anything"
        );
        let from_pool: Vec<_> = (0..6)
            .into_par_iter()
            .map(|_| outputs(&model, &x))
            .collect();
        assert!(from_pool.iter().all(|o| *o == expected));
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..3).map(|_| s.spawn(|| outputs(&model, &x))).collect();
            for t in threads {
                assert!(t.join().unwrap() == expected);
            }
        });
    }
}
