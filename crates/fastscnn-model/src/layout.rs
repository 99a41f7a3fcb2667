//! The two public key layouts of Fast-SCNN checkpoints and how this project's canonical names (the
//! reference layout's) map onto them. The network is always built with canonical names; a layout
//! only renames what it reads, so both load through the same strict checks.

use std::fmt;
use std::str::FromStr;

use crate::FastScnnConfig;

/// Where a checkpoint comes from, told apart by its key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// The widely used standalone PyTorch implementation: `learning_to_downsample.*`,
    /// `global_feature_extractor.*`, `feature_fusion.*`, `classifier.*`, optionally `auxlayer.*`.
    Reference,
    /// mmsegmentation's `EncoderDecoder`: `backbone.*`, `decode_head.*`, `auxiliary_head.{0,1}.*`.
    /// The layout of the published Cityscapes-trained checkpoints.
    OpenMmlab,
}

/// Canonical prefix of the auxiliary head on the learning-to-downsample output (both layouts).
pub const AUX_HIGHER_RES_PREFIX: &str = "auxlayer";
/// Canonical prefix of OpenMMLab's second auxiliary head, on the global features.
pub const AUX_GLOBAL_PREFIX: &str = "global_auxlayer";
/// Canonical key of the last classifier convolution; its first dimension is the class count.
pub const CLASSIFIER_KEY: &str = "classifier.conv.1.weight";

impl WeightLayout {
    /// Both layouts, the reference one first.
    pub const ALL: [WeightLayout; 2] = [WeightLayout::Reference, WeightLayout::OpenMmlab];

    /// The layout's lowercase name (`reference`, `openmmlab`): what `Display` writes, `FromStr`
    /// parses and a saved safetensors file's `layout` metadata holds.
    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Reference => "reference",
            WeightLayout::OpenMmlab => "openmmlab",
        }
    }

    /// The layout whose top-level module names the keys use, if exactly one matches.
    pub fn detect<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let (mut reference, mut openmmlab) = (false, false);
        for key in keys {
            reference |= key.starts_with("learning_to_downsample.");
            openmmlab |= key.starts_with("backbone.learning_to_downsample.");
        }
        match (reference, openmmlab) {
            (true, false) => Some(WeightLayout::Reference),
            (false, true) => Some(WeightLayout::OpenMmlab),
            _ => None,
        }
    }

    /// The network these checkpoints were trained as, for `num_classes` classes.
    pub fn config(self, num_classes: usize) -> FastScnnConfig {
        match self {
            WeightLayout::Reference => FastScnnConfig::reference(num_classes),
            WeightLayout::OpenMmlab => FastScnnConfig::openmmlab(num_classes),
        }
    }

    /// The name a canonical key has in a file of this layout. Keys that the layout does not know
    /// are returned unchanged, so a strict load reports them as missing under a recognisable name.
    pub fn file_key(self, canonical: &str) -> String {
        match self {
            WeightLayout::Reference => canonical.to_string(),
            WeightLayout::OpenMmlab => openmmlab_key(canonical).unwrap_or_else(|| canonical.into()),
        }
    }
}

impl WeightLayout {
    /// Whether a key of this layout belongs to an auxiliary head.
    pub fn is_auxiliary(self, file_key: &str) -> bool {
        match self {
            WeightLayout::Reference => [AUX_HIGHER_RES_PREFIX, AUX_GLOBAL_PREFIX].iter().any(|p| {
                file_key
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('.'))
            }),
            WeightLayout::OpenMmlab => file_key.starts_with("auxiliary_head."),
        }
    }
}

impl fmt::Display for WeightLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown layout `{s}` (expected reference or openmmlab)"))
    }
}

/// `Sequential(Conv2d, BatchNorm2d)` children `0`/`1` become mmcv `ConvModule`'s `conv`/`bn`.
fn conv_module(index: &str) -> Option<&'static str> {
    match index {
        "0" => Some("conv"),
        "1" => Some("bn"),
        _ => None,
    }
}

/// The reference DSConv's `conv.{0,1,3,4}` become mmcv `DepthwiseSeparableConvModule`'s parts.
fn separable_module(index: &str) -> Option<&'static str> {
    match index {
        "0" => Some("depthwise_conv.conv"),
        "1" => Some("depthwise_conv.bn"),
        "3" => Some("pointwise_conv.conv"),
        "4" => Some("pointwise_conv.bn"),
        _ => None,
    }
}

/// The reference aux head's `0`, `1`, `4` become mmseg `FCNHead`'s parts.
fn fcn_head(index: &str) -> Option<&'static str> {
    match index {
        "0" => Some("convs.0.conv"),
        "1" => Some("convs.0.bn"),
        "4" => Some("conv_seg"),
        _ => None,
    }
}

/// `conv3` → 2: the reference numbers modules from 1 where mmseg indexes lists from 0.
fn zero_based(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

fn openmmlab_key(canonical: &str) -> Option<String> {
    let segments: Vec<&str> = canonical.split('.').collect();
    let (param, path) = segments.split_last()?;
    let module = match path {
        ["learning_to_downsample", "conv", "conv", i] => {
            format!("backbone.learning_to_downsample.conv.{}", conv_module(i)?)
        }
        ["learning_to_downsample", ds, "conv", i] => {
            format!(
                "backbone.learning_to_downsample.{ds}.{}",
                separable_module(i)?
            )
        }
        ["global_feature_extractor", "ppm", "out", "conv", i] => {
            format!("backbone.global_feature_extractor.out.{}", conv_module(i)?)
        }
        ["global_feature_extractor", "ppm", branch, "conv", i] => format!(
            "backbone.global_feature_extractor.ppm.{}.1.{}",
            zero_based(branch, "conv")?,
            conv_module(i)?
        ),
        ["global_feature_extractor", group, block, "block", step @ ("0" | "1"), "conv", i] => {
            format!(
                "backbone.global_feature_extractor.{group}.{block}.conv.{step}.{}",
                conv_module(i)?
            )
        }
        ["global_feature_extractor", group, block, "block", "2"] => {
            format!("backbone.global_feature_extractor.{group}.{block}.conv.2.conv")
        }
        ["global_feature_extractor", group, block, "block", "3"] => {
            format!("backbone.global_feature_extractor.{group}.{block}.conv.2.bn")
        }
        ["feature_fusion", "dwconv", "conv", i] => {
            format!("backbone.feature_fusion.dwconv.{}", conv_module(i)?)
        }
        ["feature_fusion", branch, i] => {
            format!("backbone.feature_fusion.{branch}.{}", conv_module(i)?)
        }
        ["classifier", "conv", "1"] => "decode_head.conv_seg".to_string(),
        ["classifier", ds, "conv", i] => format!(
            "decode_head.convs.{}.{}",
            zero_based(ds, "dsconv")?,
            separable_module(i)?
        ),
        [head, i] if *head == AUX_HIGHER_RES_PREFIX => {
            format!("auxiliary_head.1.{}", fcn_head(i)?)
        }
        [head, i] if *head == AUX_GLOBAL_PREFIX => format!("auxiliary_head.0.{}", fcn_head(i)?),
        _ => return None,
    };
    Some(format!("{module}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmmlab_names_of_every_kind_of_module() {
        let cases = [
            (
                "learning_to_downsample.conv.conv.1.running_var",
                "backbone.learning_to_downsample.conv.bn.running_var",
            ),
            (
                "learning_to_downsample.dsconv2.conv.3.weight",
                "backbone.learning_to_downsample.dsconv2.pointwise_conv.conv.weight",
            ),
            (
                "global_feature_extractor.bottleneck3.2.block.1.conv.1.bias",
                "backbone.global_feature_extractor.bottleneck3.2.conv.1.bn.bias",
            ),
            (
                "global_feature_extractor.bottleneck1.0.block.2.weight",
                "backbone.global_feature_extractor.bottleneck1.0.conv.2.conv.weight",
            ),
            (
                "global_feature_extractor.bottleneck1.0.block.3.running_mean",
                "backbone.global_feature_extractor.bottleneck1.0.conv.2.bn.running_mean",
            ),
            (
                "global_feature_extractor.ppm.conv4.conv.0.weight",
                "backbone.global_feature_extractor.ppm.3.1.conv.weight",
            ),
            (
                "global_feature_extractor.ppm.out.conv.1.weight",
                "backbone.global_feature_extractor.out.bn.weight",
            ),
            (
                "feature_fusion.dwconv.conv.0.weight",
                "backbone.feature_fusion.dwconv.conv.weight",
            ),
            (
                "feature_fusion.conv_higher_res.1.bias",
                "backbone.feature_fusion.conv_higher_res.bn.bias",
            ),
            (
                "classifier.dsconv1.conv.1.weight",
                "decode_head.convs.0.depthwise_conv.bn.weight",
            ),
            ("classifier.conv.1.bias", "decode_head.conv_seg.bias"),
            ("auxlayer.4.weight", "auxiliary_head.1.conv_seg.weight"),
            (
                "global_auxlayer.0.weight",
                "auxiliary_head.0.convs.0.conv.weight",
            ),
        ];
        for (canonical, expected) in cases {
            assert_eq!(WeightLayout::OpenMmlab.file_key(canonical), expected);
            assert_eq!(WeightLayout::Reference.file_key(canonical), canonical);
        }
        assert_eq!(
            WeightLayout::OpenMmlab.file_key("something.else"),
            "something.else"
        );
    }

    #[test]
    fn auxiliary_keys_in_both_layouts() {
        assert!(WeightLayout::Reference.is_auxiliary("auxlayer.4.bias"));
        assert!(WeightLayout::Reference.is_auxiliary("global_auxlayer.0.weight"));
        assert!(!WeightLayout::Reference.is_auxiliary("classifier.conv.1.weight"));
        assert!(WeightLayout::OpenMmlab.is_auxiliary("auxiliary_head.0.conv_seg.weight"));
        assert!(!WeightLayout::OpenMmlab.is_auxiliary("decode_head.conv_seg.weight"));
    }

    #[test]
    fn detection_needs_exactly_one_layout() {
        let reference = ["learning_to_downsample.conv.conv.0.weight"];
        let openmmlab = ["backbone.learning_to_downsample.conv.conv.weight"];
        assert_eq!(
            WeightLayout::detect(reference),
            Some(WeightLayout::Reference)
        );
        assert_eq!(
            WeightLayout::detect(openmmlab),
            Some(WeightLayout::OpenMmlab)
        );
        assert_eq!(WeightLayout::detect(["encoder.weight"]), None);
        assert_eq!(
            WeightLayout::detect(reference.into_iter().chain(openmmlab)),
            None
        );
    }

    #[test]
    fn names_round_trip() {
        for layout in WeightLayout::ALL {
            assert_eq!(layout.name().parse::<WeightLayout>(), Ok(layout));
        }
        assert!("mmseg".parse::<WeightLayout>().is_err());
    }
}
