//! `fastscnn segment` on videos, through the real ffmpeg on clips made here from the golden
//! input frame. Without ffmpeg the tests say so and pass, except under `CI=true`, whose `.ci/run`
//! installs it.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use fastscnn_video::Ffmpeg;

mod common;
use common::{assert_clean_failure, fastscnn, golden};

const WEIGHTS: &str = "fastscnn_seed0_c19.safetensors";

fn ffmpeg() -> Option<Ffmpeg> {
    fastscnn_core::testing::needed(Ffmpeg::locate())
}

/// A clip of `frames` frames panning across the golden input frame, `width` x `height`, 10 fps.
fn clip(ffmpeg: &Ffmpeg, image: &Path, dest: &Path, size: (u32, u32), frames: u32) {
    let (width, height) = size;
    let status = Process::new(ffmpeg.ffmpeg())
        .args([
            "-v",
            "error",
            "-nostdin",
            "-loop",
            "1",
            "-framerate",
            "10",
            "-i",
        ])
        .arg(image)
        .arg("-vf")
        .arg(format!(
            "scale={}:{},crop={width}:{height}:t*40:0",
            width + 80,
            height
        ))
        .arg("-frames:v")
        .arg(frames.to_string())
        // A key frame every second, and Matroska clusters of 0.2 s: a file cut short keeps
        // frames that decode.
        .args(["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p"])
        .args(if dest.extension().is_some_and(|e| e == "mkv") {
            &["-cluster_time_limit", "200"][..]
        } else {
            &[]
        })
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success());
}

fn setup(size: (u32, u32), frames: u32) -> Option<Setup> {
    setup_as("mp4", size, frames)
}

struct Setup {
    dir: tempfile::TempDir,
    weights: PathBuf,
    video: PathBuf,
    ffmpeg: Ffmpeg,
}

/// `drive.<extension>`, a clip of `frames` frames of `size`, and the golden weights.
fn setup_as(extension: &str, size: (u32, u32), frames: u32) -> Option<Setup> {
    let golden = golden()?;
    let ffmpeg = ffmpeg()?;
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join(format!("drive.{extension}"));
    clip(
        &ffmpeg,
        &golden.join("seed0_c19_256x512_input0.png"),
        &video,
        size,
        frames,
    );
    Some(Setup {
        dir,
        weights: golden.join(WEIGHTS),
        video,
        ffmpeg,
    })
}

fn segment(s: &Setup, out: &Path) -> assert_cmd::Command {
    let mut cmd = fastscnn();
    cmd.arg("segment")
        .arg(&s.video)
        .arg("--weights")
        .arg(&s.weights)
        .arg("--out-dir")
        .arg(out);
    cmd
}

fn frames_of(ffmpeg: &Ffmpeg, video: &Path) -> Vec<image::RgbImage> {
    ffmpeg
        .decode(video.to_str().unwrap())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_video_becomes_videos_and_frames_labelled_as_images_are() {
    let Some(s) = setup((384, 192), 6) else {
        return;
    };
    let out = s.dir.path().join("out");
    let stats = s.dir.path().join("stats.json");
    segment(&s, &out)
        .args(["--format", "color,overlay,trainid", "--stats"])
        .arg(&stats)
        .assert()
        .success();
    for name in ["drive_color.mp4", "drive_overlay.mp4"] {
        let frames = frames_of(&s.ffmpeg, &out.join(name));
        assert_eq!(frames.len(), 6, "{name}");
        assert_eq!(frames[0].dimensions(), (384, 192), "{name}");
    }
    let trainid = out.join("drive_trainid");
    let mut pngs: Vec<_> = std::fs::read_dir(&trainid)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pngs.sort();
    assert_eq!(
        pngs,
        [
            "000001.png",
            "000002.png",
            "000003.png",
            "000004.png",
            "000005.png",
            "000006.png"
        ]
    );

    // The first frame, decoded and segmented as an image, is labelled the same.
    let first = s.dir.path().join("first.png");
    frames_of(&s.ffmpeg, &s.video)[0].save(&first).unwrap();
    let as_image = s.dir.path().join("as_image");
    fastscnn()
        .arg("segment")
        .arg(&first)
        .arg("--weights")
        .arg(&s.weights)
        .arg("--out-dir")
        .arg(&as_image)
        .args(["--format", "trainid"])
        .assert()
        .success();
    let expected = image::open(as_image.join("first_trainid.png"))
        .unwrap()
        .into_luma8();
    let got = image::open(trainid.join("000001.png"))
        .unwrap()
        .into_luma8();
    assert!(
        got == expected,
        "the video's first frame is labelled unlike the image"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(report["frames"], 6);
    for key in ["fps", "decode_ms", "infer_ms", "encode_ms"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }

    // Never over the outputs of an earlier run.
    assert_clean_failure(
        segment(&s, &out).args(["--format", "color"]),
        "drive_color.mp4: already exists",
    );
}

#[test]
fn every_nth_frame_up_to_a_count() {
    let Some(s) = setup((256, 128), 9) else {
        return;
    };
    let out = s.dir.path().join("out");
    segment(&s, &out)
        .args(["--format", "trainid", "--every", "3", "--max-frames", "2"])
        .assert()
        .success();
    let mut pngs: Vec<_> = std::fs::read_dir(out.join("drive_trainid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pngs.sort();
    assert_eq!(pngs, ["000001.png", "000004.png"]);
    // Every third frame keeps its time: a third of the frame rate.
    let out2 = s.dir.path().join("out2");
    segment(&s, &out2)
        .args(["--format", "color", "--every", "3"])
        .assert()
        .success();
    let video = out2.join("drive_color.mp4");
    let info = s.ffmpeg.probe(video.to_str().unwrap()).unwrap();
    assert!(
        (info.frame_rate.fps() - 10.0 / 3.0).abs() < 1e-3,
        "{info:?}"
    );
    assert_eq!(frames_of(&s.ffmpeg, &video).len(), 3);
}

#[test]
fn a_size_that_is_no_multiple_of_anything() {
    let Some(s) = setup((1282, 722), 2) else {
        return;
    };
    let out = s.dir.path().join("out");
    segment(&s, &out)
        .args(["--format", "color", "--input-scale", "0.5"])
        .assert()
        .success();
    let frames = frames_of(&s.ffmpeg, &out.join("drive_color.mp4"));
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].dimensions(), (1282, 722));
}

#[test]
fn a_truncated_video_keeps_the_frames_before_the_cut() {
    // Matroska, whose frames come before any index: half a file still decodes, to its cut.
    let Some(s) = setup_as("mkv", (256, 128), 40) else {
        return;
    };
    let bytes = std::fs::read(&s.video).unwrap();
    std::fs::write(&s.video, &bytes[..bytes.len() / 2]).unwrap();
    let out = s.dir.path().join("out");
    let output = segment(&s, &out)
        .args(["--format", "color"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success() && output.status.code() != Some(101));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}: decoding stopped after", s.video.display())),
        "{stderr}"
    );
    // What was decoded is a whole, playable video.
    let kept = frames_of(&s.ffmpeg, &out.join("drive_color.mp4")).len();
    assert!(kept > 0 && kept < 40, "{kept} frames");
    assert!(
        stderr.contains(&format!("the {kept} frame(s) before it are in")),
        "{stderr}"
    );
}

#[test]
fn without_ffmpeg_one_line_says_how_to_install_it() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mp4");
    std::fs::write(&video, "never read").unwrap();
    assert_clean_failure(
        fastscnn()
            .env("FASTSCNN_FFMPEG", dir.path().join("no-ffmpeg"))
            .arg("segment")
            .arg(&video)
            .arg("--weights")
            .arg(golden.join(WEIGHTS))
            .arg("--out-dir")
            .arg(dir.path()),
        "apt install ffmpeg",
    );
    // Frame options without a video are refused.
    assert_clean_failure(
        fastscnn()
            .arg("segment")
            .arg(golden.join("seed0_c19_256x512_input0.png"))
            .arg("--weights")
            .arg(golden.join(WEIGHTS))
            .arg("--out-dir")
            .arg(dir.path())
            .args(["--every", "2"]),
        "--every: no video or --stream",
    );
}

/// Ctrl-C in the middle of a video: the frames taken are written, the video is finished and
/// playable, no temporary file is left, and one line says what happened.
#[cfg(unix)]
#[test]
fn ctrl_c_finishes_what_was_taken() {
    let Some(s) = setup((256, 128), 600) else {
        return;
    };
    let out = s.dir.path().join("out");
    let command = segment(&s, &out);
    let mut process = std::process::Command::new(command.get_program());
    process
        .args(command.get_args())
        .args(["--format", "color,trainid"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = process.spawn().unwrap();
    let frames_dir = out.join("drive_trainid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_dir(&frames_dir).map_or(0, |d| d.count()) < 3 {
        assert!(std::time::Instant::now() < deadline, "no frame written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("interrupted (Ctrl-C) after"), "{stderr}");
    let pngs = std::fs::read_dir(&frames_dir).unwrap().count();
    let frames = frames_of(&s.ffmpeg, &out.join("drive_color.mp4")).len();
    assert!((3..600).contains(&frames), "{frames} frames");
    assert_eq!(frames, pngs);
    assert!(
        stderr.contains(&format!("after {frames} frame(s)")),
        "{stderr}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
