//! Decoding and encoding through the real ffmpeg, on clips made here with ffmpeg's test source.
//! Without ffmpeg the tests say so and pass, except under `CI=true`, whose `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use fastscnn_video::{run_pipeline, Ffmpeg, FrameRate, VideoError};
use image::RgbImage;

fn ffmpeg() -> Option<Ffmpeg> {
    fastscnn_core::testing::needed(Ffmpeg::locate())
}

/// A `frames`-frame clip of ffmpeg's test pattern, `width` x `height` at 10 fps.
fn clip(ffmpeg: &Ffmpeg, dir: &Path, name: &str, width: u32, height: u32, frames: u32) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new(ffmpeg.ffmpeg())
        .args(["-v", "error", "-nostdin", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={width}x{height}:rate=10"))
        .arg("-frames:v")
        .arg(frames.to_string())
        .args(["-c:v", "libx264", "-pix_fmt", "yuv444p"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

#[test]
fn a_clip_decodes_to_its_frames_and_encodes_back() {
    let Some(ffmpeg) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A colon, which ffmpeg would take for a protocol, in both names.
    let input = clip(&ffmpeg, dir.path(), "in:1.mp4", 320, 240, 12);
    let info = ffmpeg.probe(input.to_str().unwrap()).unwrap();
    assert_eq!((info.width, info.height), (320, 240));
    assert_eq!(
        info.frame_rate,
        FrameRate {
            numerator: 10,
            denominator: 1
        }
    );

    let frames: Vec<RgbImage> = ffmpeg
        .decode(input.to_str().unwrap())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(frames.len(), 12);
    assert!(frames.iter().all(|f| f.dimensions() == (320, 240)));
    assert_ne!(frames[0], frames[11], "the test pattern moves");

    let output = dir.path().join("out:1.mp4");
    let mut writer = ffmpeg.encode(&output, 320, 240, info.frame_rate).unwrap();
    assert!(
        !output.exists(),
        "nothing at the output before it is finished"
    );
    for frame in &frames {
        writer.write(frame).unwrap();
    }
    assert_eq!(writer.finish().unwrap(), output);
    let back = ffmpeg.probe(output.to_str().unwrap()).unwrap();
    assert_eq!(
        (back.width, back.height, back.frame_rate),
        (320, 240, info.frame_rate)
    );
    let decoded = ffmpeg.decode(output.to_str().unwrap()).unwrap().count();
    assert_eq!(decoded, 12);
    // Only the video is left in the folder: no temporary file.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Never over an existing file.
    let err = ffmpeg
        .encode(&output, 320, 240, info.frame_rate)
        .err()
        .unwrap();
    assert!(matches!(err, VideoError::Exists { .. }), "{err}");
}

#[test]
fn sizes_that_are_not_multiples_of_anything() {
    let Some(ffmpeg) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (width, height) in [(1282, 722), (321, 241)] {
        let output = dir.path().join(format!("{width}x{height}.mp4"));
        let mut writer = ffmpeg
            .encode(
                &output,
                width,
                height,
                FrameRate {
                    numerator: 5,
                    denominator: 1,
                },
            )
            .unwrap();
        let frame = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 128]));
        for _ in 0..3 {
            writer.write(&frame).unwrap();
        }
        let err = writer.write(&RgbImage::new(width + 1, height)).unwrap_err();
        assert!(err.to_string().contains("frame for a"), "{err}");
        writer.finish().unwrap();
        let frames: Vec<RgbImage> = ffmpeg
            .decode(output.to_str().unwrap())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames.len(), 3);
        // Odd sides are padded to even ones for 4:2:0 chroma.
        assert_eq!(
            frames[0].dimensions(),
            (width + width % 2, height + height % 2)
        );
    }
}

#[test]
fn a_truncated_clip_delivers_its_frames_then_an_error_naming_it() {
    let Some(ffmpeg) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let whole = clip(&ffmpeg, dir.path(), "whole.mkv", 320, 240, 40);
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.mkv");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let input = cut.to_str().unwrap();
    let mut frames = 0;
    let mut error = None;
    for frame in ffmpeg.decode(input).unwrap() {
        match frame {
            Ok(_) => frames += 1,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(frames > 0 && frames < 40, "{frames} frames");
    let error = error.expect("a truncated file is an error").to_string();
    assert!(
        error.starts_with(&format!(
            "{input}: decoding stopped after {frames} frame(s)"
        )),
        "{error}"
    );

    // Through the pipeline: the frames before the error are written, the error comes last.
    let written = std::sync::atomic::AtomicU64::new(0);
    let (times, result) = run_pipeline(
        ffmpeg.decode(input).unwrap(),
        Ok,
        |_frame| {
            written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        },
        2,
        |_| {},
    );
    assert!(matches!(result, Err(VideoError::Decode { .. })));
    assert_eq!(times.frames, frames);
    assert_eq!(written.into_inner(), frames);
}

#[test]
fn what_is_not_a_video_is_named() {
    let Some(ffmpeg) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video").unwrap();
    let err = ffmpeg
        .decode(text.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: not a video ffmpeg reads", text.display())),
        "{err}"
    );
    let missing = dir.path().join("missing.mp4");
    let err = ffmpeg
        .probe(missing.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.mp4"), "{err}");
}
