//! Loader throughput at Cityscapes' full resolution (1024x2048 frames) with the paper's
//! augmentation into 1024x1024 crops, batch 2, against the same work on the consumer's thread.
//! The decode and augmentation steps are timed alone to show where the time goes.
//!
//! Uses the full-resolution frame of `../shared/cityscapes-mini` when present, otherwise a
//! synthetic frame of the same size.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastscnn_core::testing::shared_dir;
use fastscnn_data::rng::sample_rng;
use fastscnn_data::{
    discover, AugmentConfig, DiscoverOptions, LabelEncoding, LabelFile, Loader, LoaderConfig,
    Sample,
};
use image::{GrayImage, RgbImage};

const FRAMES_PER_EPOCH: usize = 8;

/// The full-resolution frame as a sample: the shared one, or a synthetic one written to `scratch`.
fn full_resolution_frame(scratch: &Path) -> Sample {
    if let Some(shared) = shared_dir() {
        let mini = shared.join("cityscapes-mini");
        if let Ok(found) = discover(&mini, "val", DiscoverOptions::default()) {
            if let Some(s) = found
                .samples
                .into_iter()
                .find(|s| s.name.ends_with("058914"))
            {
                return s;
            }
        }
    }
    eprintln!("cityscapes-mini not found: benchmarking a synthetic 1024x2048 frame");
    let image = RgbImage::from_fn(2048, 1024, |x, y| {
        image::Rgb([(x / 8) as u8, (y / 4) as u8, ((x ^ y) & 0x3f) as u8])
    });
    let label = GrayImage::from_fn(2048, 1024, |x, y| {
        image::Luma([((x / 64 + y / 64) % 19) as u8])
    });
    let image_path: PathBuf = scratch.join("synthetic_leftImg8bit.png");
    let label_path = scratch.join("synthetic_gtFine_labelTrainIds.png");
    image.save(&image_path).unwrap();
    label.save(&label_path).unwrap();
    Sample {
        name: "synthetic".into(),
        image: image_path,
        label: Some(LabelFile {
            path: label_path,
            encoding: LabelEncoding::TrainIds,
        }),
    }
}

fn loader(c: &mut Criterion) {
    let scratch =
        std::env::temp_dir().join(format!("fastscnn-bench-loader-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let frame = full_resolution_frame(&scratch);
    let samples = vec![frame.clone(); FRAMES_PER_EPOCH];
    let augment = AugmentConfig::paper(1024, 1024);

    let mut group = c.benchmark_group("loader_1024x2048_augmented_batch2");
    group.sample_size(10);
    group.throughput(Throughput::Elements(FRAMES_PER_EPOCH as u64));
    for workers in [0, 2] {
        let config = LoaderConfig {
            workers,
            ..LoaderConfig::training(2, augment.clone(), 0)
        };
        let loader = Loader::new(samples.clone(), config).unwrap();
        let mut epoch = 0;
        group.bench_function(format!("workers_{workers}"), |b| {
            b.iter(|| {
                epoch += 1;
                loader
                    .epoch(epoch)
                    .map(|b| b.unwrap().indices.len())
                    .sum::<usize>()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("loader_steps_1024x2048");
    group.sample_size(10);
    group.bench_function("decode_image_and_label", |b| {
        b.iter(|| frame.load().unwrap())
    });
    let loaded = frame.load().unwrap();
    let mut index = 0;
    group.bench_function("augment_to_1024x1024", |b| {
        b.iter(|| {
            index += 1;
            augment.apply(
                &loaded.image,
                loaded.train_ids.as_ref(),
                &mut sample_rng(0, 0, index),
            )
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(scratch);
}

criterion_group!(benches, loader);
criterion_main!(benches);
