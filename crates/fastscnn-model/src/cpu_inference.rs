//! The whole network on the CPU kernels of [`fastscnn_cpu`], built once from a loaded model.
//!
//! The candle network stays the one source of truth (loading, training, other devices); this is
//! its inference path on the CPU, with every BatchNorm folded, fused layers and buffers kept from
//! one frame to the next. [`crate::FastScnn`] routes `forward` and `predict` here when it can.

use std::mem::MaybeUninit;
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor};
use fastscnn_cpu::{
    output_vec, resize_argmax_planes, resize_argmax_scratch_len, resize_planes_uninit,
    softmax_planes, zeroed_vec, Buffer, BufferPool, DenseConv, ExecutionContext, FusedBottleneck,
    FusedClassifier, FusedFeatureFusion, FusedPyramidPooling, SeparableConv, StemSeparable,
};

use crate::cpu_blocks::FromLayer;
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
        self.run(x, Output::Logits, &mut |_, _| {})
    }

    /// Per-pixel class probabilities (N, C, H, W).
    pub(crate) fn probabilities(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Output::Probabilities, &mut |_, _| {})
    }

    /// The label map (N, H, W) u32.
    pub(crate) fn labels(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Output::Labels, &mut |_, _| {})
    }

    /// [`Self::labels`], reporting the time of every stage.
    pub(crate) fn labels_profiled(
        &self,
        x: &Tensor,
        record: &mut dyn FnMut(&'static str, Duration),
    ) -> Result<Tensor> {
        self.run(x, Output::Labels, record)
    }

    fn run(
        &self,
        x: &Tensor,
        output: Output,
        record: &mut dyn FnMut(&'static str, Duration),
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
        let images = data[start..end].chunks_exact(c * h * w);
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
        let mut stages = Vec::new();
        let mut stage = |name, time| stages.push((name, time));
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
                self.on_pool(|| -> Result<()> {
                    for (image, out) in images.zip(planes) {
                        self.logits_frame(image, (h, w), output, out, pool, &mut stage)?;
                    }
                    Ok(())
                })?;
                // SAFETY: `logits_frame` initialised every image's planes, all `len` elements.
                unsafe { logits.set_len(len) };
                Tensor::from_vec(logits, (n, classes, h, w), x.device())
            }
            Output::Labels => {
                let mut labels = zeroed_vec::<u32>(n * h * w);
                self.on_pool(|| -> Result<()> {
                    for (image, out) in images.zip(labels.chunks_exact_mut(h * w)) {
                        self.labels_frame(image, h, w, out, pool, &mut stage)?;
                    }
                    Ok(())
                })?;
                Tensor::from_vec(labels, (n, h, w), x.device())
            }
        };
        for (name, time) in stages {
            record(name, time);
        }
        out
    }

    /// One image's logits, or their softmax, into `out` (classes, h, w), every element written.
    fn logits_frame(
        &self,
        image: &[f32],
        (h, w): (usize, usize),
        output: Output,
        out: &mut [MaybeUninit<f32>],
        pool: &mut BufferPool,
        record: &mut (dyn FnMut(&'static str, Duration) + Send),
    ) -> Result<()> {
        let classes = self.num_classes();
        let (scores, sh, sw) = self.scores(image, h, w, pool, record)?;
        let start = Instant::now();
        // The logits go to the caller untouched, the probabilities are read back by the softmax.
        let streaming = output == Output::Logits;
        resize_planes_uninit(
            &scores,
            classes,
            sh,
            sw,
            out,
            h,
            w,
            self.align_corners,
            streaming,
        );
        pool.give(scores);
        if output == Output::Probabilities {
            // SAFETY: the resize initialised all of `out`.
            let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
            softmax_planes(out, classes, h * w);
        }
        record("resize", start.elapsed());
        Ok(())
    }

    /// One image's label map into `out` (h, w).
    fn labels_frame(
        &self,
        image: &[f32],
        h: usize,
        w: usize,
        out: &mut [u32],
        pool: &mut BufferPool,
        record: &mut (dyn FnMut(&'static str, Duration) + Send),
    ) -> Result<()> {
        let classes = self.num_classes();
        let (scores, sh, sw) = self.scores(image, h, w, pool, record)?;
        let start = Instant::now();
        let mut scratch = pool.take(resize_argmax_scratch_len(classes, (sh, sw), (h, w)));
        resize_argmax_planes(
            &scores,
            classes,
            sh,
            sw,
            out,
            h,
            w,
            self.align_corners,
            &mut scratch,
        );
        record("resize + argmax", start.elapsed());
        pool.give(scores);
        pool.give(scratch);
        Ok(())
    }

    /// The classifier's scores (classes, H/8, W/8) for one image.
    fn scores(
        &self,
        image: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
        record: &mut (dyn FnMut(&'static str, Duration) + Send),
    ) -> Result<(Buffer, usize, usize)> {
        let mut clock = Instant::now();
        let mut lap = |name: &'static str, record: &mut dyn FnMut(&'static str, Duration)| {
            record(name, clock.elapsed());
            clock = Instant::now();
        };
        let (a, ah, aw) = self.stem.run(image, h, w, pool);
        let (higher, hh, hw) = self.dsconv2.run(&a, ah, aw, pool);
        pool.give(a);
        lap("learning to downsample", record);

        const GROUPS: [&str; 3] = [
            "bottleneck group 1",
            "bottleneck group 2",
            "bottleneck group 3",
        ];
        let (mut lower, mut lh, mut lw) = (None::<Buffer>, hh, hw);
        for (index, group) in self.groups.iter().enumerate() {
            for block in group {
                let input = lower.as_deref().unwrap_or(&higher);
                let (out, oh, ow) = block.run(input, lh, lw, pool);
                if let Some(old) = lower.replace(out) {
                    pool.give(old);
                }
                (lh, lw) = (oh, ow);
            }
            lap(
                GROUPS.get(index).copied().unwrap_or("bottleneck group"),
                record,
            );
        }
        let lower_input = lower.as_deref().unwrap_or(&higher);
        let lower_channels = lower_input.len() / (lh * lw);
        let (global, gh, gw) = self.ppm.run(lower_input, lower_channels, lh, lw, pool);
        if let Some(lower) = lower {
            pool.give(lower);
        }
        lap("pyramid pooling", record);

        let fused = self.fusion.run(&higher, hh, hw, &global, gh, gw, pool);
        pool.give(global);
        pool.give(higher);
        lap("feature fusion", record);

        let scores = self.classifier.run(&fused, hh, hw, pool);
        pool.give(fused);
        lap("classifier", record);
        Ok((scores, hh, hw))
    }
}
