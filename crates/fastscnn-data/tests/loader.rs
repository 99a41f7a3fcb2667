//! Batches: shapes, normalisation, determinism whatever the worker count, resuming mid-epoch,
//! evaluation scales and errors.

use std::path::Path;

use candle_core::DType;
use fastscnn_core::testing::shared_dir;
use fastscnn_data::{
    discover, AugmentConfig, DataError, DiscoverOptions, Loader, LoaderConfig, Sample,
};
use image::{GrayImage, RgbImage};

/// `n` synthetic 48x24 frames whose label ids cover evaluated and ignored classes.
fn dataset(root: &Path, n: u32) -> Vec<Sample> {
    for i in 0..n {
        let name = format!("ulm_{i:06}_000019");
        let image = RgbImage::from_fn(48, 24, |x, y| {
            image::Rgb([(x * 5 + i) as u8, (y * 9) as u8, (x * y) as u8])
        });
        let labels = GrayImage::from_fn(48, 24, |x, y| image::Luma([((x + y + i) % 34) as u8]));
        let img_dir = root.join("leftImg8bit/train/ulm");
        let gt_dir = root.join("gtFine/train/ulm");
        std::fs::create_dir_all(&img_dir).unwrap();
        std::fs::create_dir_all(&gt_dir).unwrap();
        image
            .save(img_dir.join(format!("{name}_leftImg8bit.png")))
            .unwrap();
        labels
            .save(gt_dir.join(format!("{name}_gtFine_labelIds.png")))
            .unwrap();
    }
    discover(root, "train", DiscoverOptions::default())
        .unwrap()
        .samples
}

fn training(batch: usize, workers: usize, seed: u64) -> LoaderConfig {
    LoaderConfig {
        workers,
        ..LoaderConfig::training(batch, AugmentConfig::paper(16, 32), seed)
    }
}

/// Every batch of an epoch as (indices, image bytes, label bytes).
fn epoch_bytes(
    batches: impl Iterator<Item = fastscnn_data::Result<fastscnn_data::Batch>>,
) -> Vec<(Vec<usize>, Vec<f32>, Vec<u8>)> {
    batches
        .map(|b| {
            let b = b.unwrap();
            let images = b.images.flatten_all().unwrap().to_vec1().unwrap();
            let labels = b
                .train_ids
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (b.indices, images, labels)
        })
        .collect()
}

#[test]
fn training_batches_have_the_crop_shape_and_valid_labels() {
    let dir = tempfile::tempdir().unwrap();
    let loader = Loader::new(dataset(dir.path(), 5), training(2, 2, 0)).unwrap();
    assert_eq!(
        loader.batches_per_epoch(),
        2,
        "the partial batch is dropped"
    );
    let batches: Vec<_> = loader.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 2);
    for b in &batches {
        assert_eq!(b.images.dims(), &[2, 3, 16, 32]);
        assert_eq!(b.images.dtype(), DType::F32);
        let labels = b.train_ids.as_ref().unwrap();
        assert_eq!(labels.dims(), &[2, 16, 32]);
        assert_eq!(labels.dtype(), DType::U8);
        let values: Vec<u8> = labels.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|&v| v < 19 || v == 255));
    }
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "no sample twice in an epoch");
}

#[test]
fn bytes_depend_on_seed_and_epoch_not_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path(), 7);
    let run = |workers, seed, epoch| {
        let loader = Loader::new(samples.clone(), training(2, workers, seed)).unwrap();
        epoch_bytes(loader.epoch(epoch))
    };
    let reference = run(2, 11, 3);
    assert_eq!(reference.len(), 3);
    assert_eq!(run(0, 11, 3), reference);
    assert_eq!(run(1, 11, 3), reference);
    assert_eq!(run(3, 11, 3), reference);
    assert_ne!(run(2, 12, 3), reference);
    assert_ne!(run(2, 11, 4), reference);
}

#[test]
fn resuming_mid_epoch_gives_the_remaining_batches() {
    let dir = tempfile::tempdir().unwrap();
    let loader = Loader::new(dataset(dir.path(), 8), training(2, 2, 5)).unwrap();
    let full = epoch_bytes(loader.epoch(1));
    assert_eq!(epoch_bytes(loader.epoch_from(1, 3)), full[3..]);
    assert_eq!(loader.epoch_from(1, 4).count(), 0);
}

#[test]
fn evaluation_keeps_order_and_partial_batch_and_scores_at_full_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path(), 3);
    let loader = Loader::new(samples.clone(), LoaderConfig::evaluation(2, 0.5)).unwrap();
    let batches: Vec<_> = loader.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].indices, [0, 1]);
    assert_eq!(batches[1].indices, [2]);
    assert_eq!(batches[1].images.dims(), &[1, 3, 12, 24]);
    assert_eq!(batches[1].train_ids.as_ref().unwrap().dims(), &[1, 24, 48]);

    // At scale 1, the batch is the normalised image itself.
    let loader = Loader::new(samples.clone(), LoaderConfig::evaluation(1, 1.0)).unwrap();
    let first = loader.epoch(0).next().unwrap().unwrap();
    let image = samples[0].load().unwrap().image;
    let red: Vec<f32> = first
        .images
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let expected = (image.get_pixel(3, 0).0[0] as f32 / 255.0 - 0.485) / 0.229;
    assert!((red[3] - expected).abs() < 1e-6);
}

#[test]
fn a_broken_file_ends_the_epoch_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path(), 4);
    let bytes = std::fs::read(&samples[2].image).unwrap();
    std::fs::write(&samples[2].image, &bytes[..bytes.len() / 2]).unwrap();
    let loader = Loader::new(samples.clone(), LoaderConfig::evaluation(1, 1.0)).unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 3, "stops after the error");
    assert!(results[..2].iter().all(Result::is_ok));
    let err = results[2].as_ref().unwrap_err();
    assert!(matches!(err, DataError::ReadImage { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("ulm_000002_000019_leftImg8bit.png"));
}

#[test]
fn invalid_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dataset(dir.path(), 1);
    let zero = LoaderConfig {
        batch_size: 0,
        ..LoaderConfig::evaluation(1, 1.0)
    };
    assert!(Loader::new(samples.clone(), zero).is_err());
    assert!(Loader::new(samples.clone(), LoaderConfig::evaluation(1, 0.0)).is_err());
    assert!(Loader::new(Vec::new(), LoaderConfig::evaluation(1, 1.0)).is_err());
}

#[test]
fn full_resolution_frame_is_augmented_to_the_paper_crop() {
    let Some(shared) = shared_dir() else { return };
    let found = discover(
        &shared.join("cityscapes-mini"),
        "val",
        DiscoverOptions::default(),
    )
    .unwrap();
    let full: Vec<Sample> = found
        .samples
        .into_iter()
        .filter(|s| s.name.ends_with("058914"))
        .collect();
    let loader = Loader::new(
        full,
        LoaderConfig::training(1, AugmentConfig::paper(1024, 1024), 0),
    )
    .unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.images.dims(), &[1, 3, 1024, 1024]);
    let labels: Vec<u8> = batch
        .train_ids
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(labels.iter().all(|&v| v < 19 || v == 255));
    assert!(labels.contains(&0), "a 1024 crop of this frame holds road");
}
