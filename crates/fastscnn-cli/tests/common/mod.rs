//! What every CLI test needs: the binary, and the shape of a clean failure.

use assert_cmd::Command;

pub fn fastscnn() -> Command {
    Command::cargo_bin("fastscnn").unwrap()
}

/// Runs the command expecting failure: a non-zero exit that is not a panic (101), and a single
/// line on stderr containing `needle`.
pub fn assert_clean_failure(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let code = out.status.code().unwrap();
    assert!(code != 0 && code != 101, "exit code {code}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}
