//! One training step of the paper's recipe on CPU: batch 2 at 512x1024, forward in training mode
//! (batch statistics, dropout, both heads), cross-entropy with the auxiliary loss, backward, SGD
//! with momentum and weight decay.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use fastscnn_benches::random_tensor;
use fastscnn_model::FastScnnConfig;
use fastscnn_train::{optimizer::Sgd, TrainStep, TrainableModel};

fn train_step(c: &mut Criterion) {
    let (h, w) = (512, 1024);
    let trainable = TrainableModel::new(&FastScnnConfig::reference(19), &Device::Cpu, 0).unwrap();
    let mut sgd = Sgd::new(trainable.params(), 0.9, 4e-5);
    let images = random_tensor(&[2, 3, h, w], 1).unwrap();
    let labels: Vec<u8> = (0..2 * h * w).map(|i| ((i / 4096) % 19) as u8).collect();
    let labels = Tensor::from_vec(labels, (2, h, w), &Device::Cpu).unwrap();
    let train_step = TrainStep::default();
    let mut step = 0u64;

    let mut group = c.benchmark_group("train_step_512x1024_batch2");
    group.sample_size(10);
    group.bench_function("forward_backward_update", |b| {
        b.iter(|| {
            step += 1;
            train_step
                .run(&trainable, &mut sgd, &images, &labels, 1e-3, step)
                .unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
