//! Global feature extractor: three groups of inverted-residual bottlenecks down to 1/32, then
//! pyramid pooling for context at several scales.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use fastscnn_core::layers::{Mode, NormOptions};

use super::{LinearBottleneck, PyramidPooling};

use crate::FastScnnConfig;

/// The global feature extractor: three groups of linear bottlenecks from the 1/8-resolution
/// learning-to-downsample output down to 1/32, then pyramid pooling.
#[derive(Debug, Clone)]
pub struct GlobalFeatureExtractor {
    /// The three bottleneck groups, in order.
    groups: Vec<Vec<LinearBottleneck>>,
    ppm: PyramidPooling,
}

impl GlobalFeatureExtractor {
    /// Reads `bottleneck{1,2,3}.{i}` and `ppm`. Only the first block of a group strides or changes
    /// width; the others keep both and so carry the residual shortcut.
    pub fn new(cfg: &FastScnnConfig, norm: NormOptions, vb: VarBuilder) -> Result<Self> {
        let mut groups = Vec::new();
        let mut in_channels = cfg.higher_res_channels();
        for group in 0..3 {
            let mut bottlenecks = Vec::new();
            let group_vb = vb.pp(format!("bottleneck{}", group + 1));
            let out_channels = cfg.bottleneck_channels[group];
            for block in 0..cfg.bottleneck_blocks[group] {
                let stride = if block == 0 {
                    cfg.bottleneck_strides[group]
                } else {
                    1
                };
                bottlenecks.push(LinearBottleneck::new(
                    in_channels,
                    out_channels,
                    cfg.expansion,
                    stride,
                    norm,
                    group_vb.pp(block),
                )?);
                in_channels = out_channels;
            }
            groups.push(bottlenecks);
        }
        Ok(Self {
            groups,
            ppm: PyramidPooling::new(&cfg.pyramid_pooling(), norm, vb.pp("ppm"))?,
        })
    }
}

impl GlobalFeatureExtractor {
    /// The bottleneck groups in the order they run, each with its blocks in order.
    pub fn groups(&self) -> &[Vec<LinearBottleneck>] {
        &self.groups
    }

    /// The pyramid pooling module that follows the last group.
    pub fn pyramid_pooling(&self) -> &PyramidPooling {
        &self.ppm
    }

    /// The number of bottleneck groups (three in every preset).
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Runs bottleneck group `index`: one stage of the stage plan.
    pub fn forward_group(&self, index: usize, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.groups[index] {
            x = block.forward_mode(&x, mode)?;
        }
        Ok(x)
    }

    /// Runs pyramid pooling on the last group's output: the stage plan's `Stage::PyramidPooling`.
    pub fn forward_pyramid_pooling(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.ppm.forward_mode(x, mode)
    }

    /// Runs every group, then pyramid pooling: the 1/8-resolution (N, C, H, W) input to the
    /// global features at 1/32.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = x.clone();
        for index in 0..self.groups.len() {
            x = self.forward_group(index, &x, mode)?;
        }
        self.ppm.forward_mode(&x, mode)
    }
}

impl Module for GlobalFeatureExtractor {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference)
    }
}
