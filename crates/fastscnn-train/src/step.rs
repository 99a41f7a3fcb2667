//! One optimisation step of the recipe: the forward pass in training mode, the loss, the
//! backward pass and the SGD update. The trainer runs it on its batches; benches and the
//! comparisons with the reference implementation run the same function.

use candle_core::Tensor;
use fastscnn_core::layers::DEFAULT_DROPOUT;

use crate::loss::SegmentationLoss;
use crate::optimizer::Sgd;
use crate::trainable::TrainableModel;

/// What a step computes besides the batch and the learning rate; by default the paper's loss
/// (auxiliary weight 0.4, ignore 255) and the public implementations' dropout 0.1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainStep {
    /// The objective: main loss plus the weighted auxiliary losses.
    pub loss: SegmentationLoss,
    /// Probability of every dropout of the network, in [0, 1).
    pub dropout: f32,
}

impl Default for TrainStep {
    fn default() -> Self {
        Self {
            loss: SegmentationLoss::default(),
            dropout: DEFAULT_DROPOUT,
        }
    }
}

impl TrainStep {
    /// Runs one step on `images` (N, 3, H, W) and `labels` (N, H, W) at learning rate `lr`, with
    /// this step's dropout masks drawn from `dropout_seed`, and returns the loss before the
    /// update. A non-finite loss is returned without an optimiser step, for the caller to
    /// report: a step that has blown up must not reach the weights (the BatchNorm running
    /// statistics, which the forward pass updates, may already hold it: the trainer checks
    /// every tensor before it checkpoints).
    pub fn run(
        &self,
        model: &TrainableModel,
        optimizer: &mut Sgd,
        images: &Tensor,
        labels: &Tensor,
        lr: f64,
        dropout_seed: u64,
    ) -> crate::Result<f64> {
        let scores = model
            .model
            .forward_train(images, self.dropout, dropout_seed)?;
        let loss = self.loss.compute_scores(&scores, labels)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if value.is_finite() {
            optimizer.step(&loss.backward()?, lr)?;
        }
        Ok(value)
    }
}
