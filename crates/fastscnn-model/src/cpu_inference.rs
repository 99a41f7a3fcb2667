//! The whole network on the CPU kernels of [`fastscnn_cpu`], built once from a loaded model.
//!
//! The candle network stays the one source of truth (loading, training, other devices); this is
//! its inference path on the CPU, with every BatchNorm folded, fused layers and buffers kept from
//! one frame to the next. [`crate::FastScnn`] routes `forward` and `predict` here when it can.

use std::mem::MaybeUninit;
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor};
use fastscnn_cpu::{
    output_vec, resize_argmax_planes, resize_argmax_scratch_len, resize_planes_uninit,
    softmax_planes, zeroed_vec, BufferPool, DenseConv, ExecutionContext, FeatureMap,
    FusedBottleneck, FusedClassifier, FusedFeatureFusion, FusedPyramidPooling, MapView,
    SeparableConv, StemSeparable,
};

use crate::cpu_blocks::FromLayer;
use crate::stages::plan::{run_plan, Stage, StageExecutor, StageInput, StageTimer};
use crate::stages::GlobalFeatureExtractor;
use crate::stages::LearningToDownsample;

/// What a forward pass ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Class scores at the input resolution.
    Logits,
    /// Their softmax over classes.
    Probabilities,
    /// The label map, never storing full-resolution scores.
    Labels,
}

/// The network's inference on the CPU kernels. Its feature maps live in one buffer pool kept from
/// frame to frame; a call made while another thread's frame holds it allocates buffers of its own
/// for that frame instead of waiting. Clones of a model share the pool;
/// `model.clone().with_cpu_kernels(true)` gives a thread its own.
#[derive(Debug)]
pub(crate) struct CpuInference {
    /// The stem conv and the first DSConv, fused.
    stem: StemSeparable,
    dsconv2: SeparableConv,
    groups: Vec<Vec<FusedBottleneck>>,
    ppm: FusedPyramidPooling,
    fusion: FusedFeatureFusion,
    classifier: FusedClassifier,
    align_corners: bool,
    pub(crate) pool: Mutex<BufferPool>,
    /// Where the frames run; `None`: the thread pool of the caller.
    context: Option<ExecutionContext>,
}

impl CpuInference {
    pub(crate) fn new(
        ltd: &LearningToDownsample,
        gfe: &GlobalFeatureExtractor,
        fusion: &crate::stages::FeatureFusion,
        classifier: &crate::stages::Classifier,
        align_corners: bool,
        context: Option<&ExecutionContext>,
    ) -> Result<Self> {
        // Built in the context, so that the 1x1 weights are packed for its instruction set.
        let build = || -> Result<Self> {
            Ok(Self {
                stem: StemSeparable {
                    stem: DenseConv::from_layer(ltd.stem())?,
                    dsconv: SeparableConv::from_layer(ltd.dsconv1())?,
                },
                dsconv2: SeparableConv::from_layer(ltd.dsconv2())?,
                groups: gfe
                    .groups()
                    .iter()
                    .map(|g| g.iter().map(FusedBottleneck::from_layer).collect())
                    .collect::<Result<_>>()?,
                ppm: FusedPyramidPooling::from_layer(gfe.pyramid_pooling())?,
                fusion: FusedFeatureFusion::from_layer(fusion)?,
                classifier: FusedClassifier::from_layer(classifier)?,
                align_corners,
                pool: Mutex::new(BufferPool::default()),
                context: context.cloned(),
            })
        };
        match context {
            Some(context) => context.install(build),
            None => build(),
        }
    }

    /// Runs `op` on a thread of the context's pool (or of the caller's), its parallel loops then
    /// starting and ending among the pool's own threads.
    fn on_pool<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        match &self.context {
            Some(context) => context.install(op),
            None => rayon::scope(|_| op()),
        }
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.classifier.conv.out_channels
    }

    /// Logits (N, C, H, W) for an (N, 3, H, W) f32 CPU tensor that [`crate::FastScnn`] checked.
    pub(crate) fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Output::Logits, None)
    }

    /// Per-pixel class probabilities (N, C, H, W).
    pub(crate) fn probabilities(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Output::Probabilities, None)
    }

    /// The label map (N, H, W) u32.
    pub(crate) fn labels(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Output::Labels, None)
    }

    /// [`Self::labels`], reporting the time of every stage.
    pub(crate) fn labels_profiled(
        &self,
        x: &Tensor,
        record: &mut dyn FnMut(&'static str, Duration),
    ) -> Result<Tensor> {
        self.run(x, Output::Labels, Some(record))
    }

    fn run(
        &self,
        x: &Tensor,
        output: Output,
        record: Option<&mut dyn FnMut(&'static str, Duration)>,
    ) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            bail!("CPU inference takes f32 tensors on the CPU")
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            bail!("CPU inference takes f32 tensors on the CPU")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("CPU inference needs a contiguous input")
        };
        let images = data[start..end]
            .chunks_exact(c * h * w)
            .map(|image| MapView::new(image, c, h, w));
        let classes = self.num_classes();
        // Taken here, on the caller's thread: a pool thread waiting for the lock could be the
        // one running the frame that holds it. A call that finds it taken (another thread's
        // frame) gets buffers of its own rather than waiting.
        let mut shared = match self.pool.try_lock() {
            Ok(pool) => Some(pool),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let mut own = BufferPool::default();
        let pool: &mut BufferPool = shared.as_deref_mut().unwrap_or(&mut own);
        let profiled = record.is_some();
        let mut stages = Vec::new();
        // Every frame of the batch through the stage plan, timed when profiled (the times are
        // collected on the pool's thread and reported from the caller's).
        let frames = |heads: &mut dyn Iterator<Item = FrameHead<'_>>| -> Result<()> {
            let mut collect = |stage: Stage, time| stages.push((stage.name(), time));
            for (image, head) in images.zip(heads) {
                let timer = profiled.then_some(&mut collect as StageTimer<'_>);
                let mut frame = CpuFrame {
                    engine: self,
                    pool: &mut *pool,
                    head,
                    size: (image.height, image.width),
                };
                run_plan(&mut frame, image, timer)?;
            }
            Ok(())
        };
        // The output is allocated here, on the caller's thread, which is also where it will most
        // likely be freed: the allocator's per-thread arenas then keep it for the next frame.
        // The frame itself is driven from one of the pool's threads: its parallel loops then
        // start and end among the pool's own threads (the idle one still spinning, ready)
        // rather than each sending its work from here and putting this thread to sleep until
        // done, dozens of wake-ups a frame, which weigh most on small frames
        // (`fastscnn bench --size 384x768`).
        let out = match output {
            Output::Logits | Output::Probabilities => {
                let len = n * classes * h * w;
                let mut logits = output_vec::<f32>(len);
                let planes = logits.spare_capacity_mut()[..len].chunks_exact_mut(classes * h * w);
                let softmax = output == Output::Probabilities;
                self.on_pool(|| frames(&mut planes.map(|out| FrameHead::Logits { out, softmax })))?;
                // SAFETY: every frame's head initialised its planes, all `len` elements.
                unsafe { logits.set_len(len) };
                Tensor::from_vec(logits, (n, classes, h, w), x.device())
            }
            Output::Labels => {
                let mut labels = zeroed_vec::<u32>(n * h * w);
                let maps = labels.chunks_exact_mut(h * w);
                self.on_pool(|| frames(&mut maps.map(|out| FrameHead::Labels { out })))?;
                Tensor::from_vec(labels, (n, h, w), x.device())
            }
        };
        if let Some(record) = record {
            for (name, time) in stages {
                record(name, time);
            }
        }
        out
    }
}

/// Where a frame's head writes.
enum FrameHead<'a> {
    /// The logits (classes, h, w), or their softmax, every element written.
    Logits {
        out: &'a mut [MaybeUninit<f32>],
        softmax: bool,
    },
    /// The label map (h, w).
    Labels { out: &'a mut [u32] },
}

/// One image through the stage plan on the fused blocks, its maps lent by the engine's pool.
struct CpuFrame<'a> {
    engine: &'a CpuInference,
    pool: &'a mut BufferPool,
    head: FrameHead<'a>,
    /// The input's height and width, the output's.
    size: (usize, usize),
}

impl<'a> StageExecutor for CpuFrame<'a> {
    type Input = MapView<'a>;
    type Map = FeatureMap;
    type Output = ();

    fn bottleneck_groups(&self) -> usize {
        self.engine.groups.len()
    }

    fn learning_to_downsample(&mut self, input: MapView<'a>) -> Result<FeatureMap> {
        let first = self.engine.stem.run(input, self.pool);
        let out = self.engine.dsconv2.run(first.view(), self.pool);
        self.pool.give(first);
        Ok(out)
    }

    fn bottleneck_group(
        &mut self,
        group: usize,
        x: StageInput<'_, FeatureMap>,
    ) -> Result<FeatureMap> {
        let blocks = &self.engine.groups[group];
        let Some((first, rest)) = blocks.split_first() else {
            // A group of no blocks passes its input on, as the candle network's does.
            return Ok(match x {
                StageInput::Last(_, map) => map,
                StageInput::Borrowed(map) => {
                    let mut data = self.pool.take(map.data.len());
                    data.copy_from_slice(&map.data);
                    FeatureMap { data, ..*map }
                }
            });
        };
        let mut out = first.run(x.map().view(), self.pool);
        x.release(self);
        for block in rest {
            let next = block.run(out.view(), self.pool);
            self.pool.give(std::mem::replace(&mut out, next));
        }
        Ok(out)
    }

    fn pyramid_pooling(&mut self, x: &FeatureMap) -> Result<FeatureMap> {
        Ok(self.engine.ppm.run(x.view(), self.pool))
    }

    fn feature_fusion(
        &mut self,
        higher_res: &FeatureMap,
        global: &FeatureMap,
    ) -> Result<FeatureMap> {
        Ok(self
            .engine
            .fusion
            .run(higher_res.view(), global.view(), self.pool))
    }

    fn classifier(&mut self, fused: &FeatureMap) -> Result<FeatureMap> {
        Ok(self.engine.classifier.run(fused.view(), self.pool))
    }

    fn head(&mut self, scores: FeatureMap) -> Result<()> {
        let align_corners = self.engine.align_corners;
        let (classes, sh, sw) = (scores.channels, scores.height, scores.width);
        let (h, w) = self.size;
        match &mut self.head {
            FrameHead::Logits { out, softmax } => {
                // The logits go to the caller untouched, the probabilities are read back by the
                // softmax.
                resize_planes_uninit(scores.view(), out, (h, w), align_corners, !*softmax);
                if *softmax {
                    // SAFETY: the resize initialised all of `out`.
                    let out =
                        unsafe { &mut *(&mut **out as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    softmax_planes(out, classes, h * w);
                }
            }
            FrameHead::Labels { out } => {
                let mut scratch =
                    self.pool
                        .take(resize_argmax_scratch_len(classes, (sh, sw), (h, w)));
                resize_argmax_planes(scores.view(), out, (h, w), align_corners, &mut scratch);
                self.pool.give(scratch);
            }
        }
        self.pool.give(scores);
        Ok(())
    }

    fn head_stage(&self) -> Stage {
        match self.head {
            FrameHead::Logits { .. } => Stage::Upsample,
            FrameHead::Labels { .. } => Stage::UpsampleArgmax,
        }
    }

    fn release(&mut self, _: Stage, map: FeatureMap) {
        self.pool.give(map);
    }
}
