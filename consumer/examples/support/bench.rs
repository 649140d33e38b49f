//! What the measurement examples (`failover_bench`, `scale_bench`) share: knobs from the
//! environment, and the release binaries they run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `name` from the environment as a number, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the release binaries are: `target/release/examples/<bench>` -> `target/release`.
pub fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// `cargo build --release` of the workspace binaries named (`consumer`, `producer`).
pub fn build_release(binaries: &[&str]) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = Command::new(env!("CARGO"));
    command.args(["build", "--release"]);
    for binary in binaries {
        command.args(["--bin", binary]);
    }
    let status = command
        .arg("--manifest-path")
        .arg(manifest)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the release binaries failed");
}
