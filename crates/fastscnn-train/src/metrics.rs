//! Segmentation metrics from one confusion matrix, with the semantics of cityscapesScripts'
//! `evalPixelLevelSemanticLabeling`: a class absent from both ground truth and prediction has no
//! IoU (NaN) and is left out of the mean, rather than counted as 0 or 1.

/// Why a prediction/label pair could not be accumulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Returned when the prediction and the label have different numbers of pixels.
    #[error("prediction has {prediction} pixels but the label has {label}")]
    SizeMismatch {
        /// The number of pixels of the prediction.
        prediction: usize,
        /// The number of pixels of the label.
        label: usize,
    },
    /// Returned when a pixel not ignored holds a class the matrix does not have, in the label or
    /// in the prediction.
    #[error("class {value} is out of range for {num_classes} classes")]
    ClassOutOfRange {
        /// The class value found.
        value: u32,
        /// The number of classes of the matrix.
        num_classes: usize,
    },
}

/// Counts of (ground truth, prediction) pairs over every evaluated pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    ignore_index: u32,
    /// Row-major: `counts[gt * num_classes + pred]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix over `num_classes` classes; label pixels equal to `ignore_index` are not
    /// counted.
    pub fn new(num_classes: usize, ignore_index: u32) -> Self {
        Self {
            num_classes,
            ignore_index,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// The number of classes, the matrix's side.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The pixels of class `ground_truth` predicted as `prediction`; both must be below
    /// `num_classes`.
    pub fn count(&self, ground_truth: usize, prediction: usize) -> u64 {
        self.counts[ground_truth * self.num_classes + prediction]
    }

    /// Adds one image: pixels whose label is the ignore index are skipped; any other value must be
    /// a valid class, in the label and in the prediction alike.
    pub fn update<P, L>(&mut self, prediction: &[P], label: &[L]) -> Result<(), MetricsError>
    where
        P: Copy + Into<u32>,
        L: Copy + Into<u32>,
    {
        if prediction.len() != label.len() {
            return Err(MetricsError::SizeMismatch {
                prediction: prediction.len(),
                label: label.len(),
            });
        }
        let n = self.num_classes;
        for (&p, &l) in prediction.iter().zip(label) {
            let (p, l) = (p.into(), l.into());
            if l == self.ignore_index {
                continue;
            }
            for value in [p, l] {
                if value as usize >= n {
                    return Err(MetricsError::ClassOutOfRange {
                        value,
                        num_classes: n,
                    });
                }
            }
            self.counts[l as usize * n + p as usize] += 1;
        }
        Ok(())
    }

    /// Adds another matrix's counts (e.g. from another worker).
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(
            self.num_classes, other.num_classes,
            "merging matrices of different class counts"
        );
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The matrix of groups of classes: class `c` counts as group `groups[c]`. With the Cityscapes
    /// categories this gives the benchmark's category IoU, which scores a pixel as right when
    /// ground truth and prediction fall in the same category.
    pub fn grouped(&self, groups: &[usize], num_groups: usize) -> ConfusionMatrix {
        assert_eq!(groups.len(), self.num_classes, "one group per class");
        let mut grouped = ConfusionMatrix::new(num_groups, self.ignore_index);
        for gt in 0..self.num_classes {
            for pred in 0..self.num_classes {
                grouped.counts[groups[gt] * num_groups + groups[pred]] += self.count(gt, pred);
            }
        }
        grouped
    }

    /// Every pixel counted, row-major by (ground truth, prediction).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// IoU = TP / (TP + FP + FN) per class; NaN where the class is in neither.
    pub fn per_class_iou(&self) -> Vec<f64> {
        (0..self.num_classes)
            .map(|c| {
                let tp = self.count(c, c);
                let fn_: u64 = (0..self.num_classes).map(|p| self.count(c, p)).sum::<u64>() - tp;
                let fp: u64 = (0..self.num_classes).map(|g| self.count(g, c)).sum::<u64>() - tp;
                let union = tp + fp + fn_;
                if union == 0 {
                    f64::NAN
                } else {
                    tp as f64 / union as f64
                }
            })
            .collect()
    }

    /// Mean of the defined per-class IoUs; NaN when no class is defined.
    pub fn mean_iou(&self) -> f64 {
        nan_mean(&self.per_class_iou())
    }

    /// Correct pixels over evaluated pixels; NaN before any pixel was counted.
    pub fn pixel_accuracy(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..self.num_classes).map(|c| self.count(c, c)).sum();
        if total == 0 {
            f64::NAN
        } else {
            correct as f64 / total as f64
        }
    }
}

/// Mean over the values that are not NaN.
pub fn nan_mean(values: &[f64]) -> f64 {
    let defined: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if defined.is_empty() {
        f64::NAN
    } else {
        defined.iter().sum::<f64>() / defined.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_iou_and_accuracy() {
        // 3 classes; class 2 appears in neither ground truth nor prediction.
        let mut m = ConfusionMatrix::new(3, 255);
        let gt: [u8; 6] = [0, 0, 0, 1, 1, 255];
        let pred: [u8; 6] = [0, 0, 1, 1, 1, 2];
        m.update(&pred, &gt).unwrap();
        let iou = m.per_class_iou();
        assert!((iou[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((iou[1] - 2.0 / 3.0).abs() < 1e-12);
        assert!(iou[2].is_nan(), "absent class must be NaN, not 0 or 1");
        assert!((m.mean_iou() - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.pixel_accuracy() - 4.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn class_only_predicted_counts_as_zero() {
        let mut m = ConfusionMatrix::new(2, 255);
        m.update(&[1u8, 0], &[0u8, 0]).unwrap();
        assert_eq!(m.per_class_iou()[1], 0.0);
    }

    #[test]
    fn grouping_scores_confusions_within_a_group_as_right() {
        // Classes 0 and 1 form group 0, class 2 group 1.
        let mut m = ConfusionMatrix::new(3, 255);
        m.update(&[1u8, 0, 2, 2], &[0u8, 0, 2, 1]).unwrap();
        let g = m.grouped(&[0, 0, 1], 2);
        assert_eq!(g.count(0, 0), 2);
        assert_eq!(g.count(0, 1), 1);
        assert_eq!(g.count(1, 1), 1);
        assert!((g.per_class_iou()[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((g.per_class_iou()[1] - 1.0 / 2.0).abs() < 1e-12);
    }

    #[test]
    fn merge_equals_single_pass() {
        let (p, l): ([u32; 4], [u32; 4]) = ([0, 1, 1, 0], [0, 1, 0, 0]);
        let mut whole = ConfusionMatrix::new(2, 255);
        whole.update(&p, &l).unwrap();
        let mut a = ConfusionMatrix::new(2, 255);
        let mut b = ConfusionMatrix::new(2, 255);
        a.update(&p[..2], &l[..2]).unwrap();
        b.update(&p[2..], &l[2..]).unwrap();
        a.merge(&b);
        assert_eq!(a, whole);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut m = ConfusionMatrix::new(2, 255);
        assert_eq!(
            m.update(&[0u8], &[0u8, 1]),
            Err(MetricsError::SizeMismatch {
                prediction: 1,
                label: 2
            })
        );
        assert_eq!(
            m.update(&[5u8], &[0u8]),
            Err(MetricsError::ClassOutOfRange {
                value: 5,
                num_classes: 2
            })
        );
        assert!(m.mean_iou().is_nan());
    }
}
