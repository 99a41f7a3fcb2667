//! Global feature extractor: three groups of inverted-residual bottlenecks down to 1/32, then
//! pyramid pooling for context at several scales.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use fastscnn_core::layers::{LinearBottleneck, NormOptions, PyramidPooling};

use crate::FastScnnConfig;

#[derive(Debug, Clone)]
pub struct GlobalFeatureExtractor {
    bottlenecks: Vec<LinearBottleneck>,
    ppm: PyramidPooling,
}

impl GlobalFeatureExtractor {
    /// Reads `bottleneck{1,2,3}.{i}` and `ppm`. Only the first block of a group strides or changes
    /// width; the others keep both and so carry the residual shortcut.
    pub fn new(cfg: &FastScnnConfig, norm: NormOptions, vb: VarBuilder) -> Result<Self> {
        let mut bottlenecks = Vec::new();
        let mut in_channels = cfg.higher_res_channels();
        for group in 0..3 {
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
        }
        Ok(Self {
            bottlenecks,
            ppm: PyramidPooling::new(&cfg.pyramid_pooling(), norm, vb.pp("ppm"))?,
        })
    }
}

impl Module for GlobalFeatureExtractor {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.bottlenecks {
            x = block.forward(&x)?;
        }
        self.ppm.forward(&x)
    }
}
