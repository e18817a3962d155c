//! Records the git commit the binary is built from, for `--version` and the
//! `scopegate_build_info` metric. `SCOPEGATE_COMMIT` in the environment wins (a container
//! build without `.git`); outside a git checkout (a published crate) it is "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SCOPEGATE_COMMIT");
    let commit = std::env::var("SCOPEGATE_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SCOPEGATE_COMMIT={commit}");
}

/// The short hash of HEAD, and the files that change when HEAD moves (so the build script
/// runs again after a commit or a checkout, and only then).
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| {
        let output = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        output.status.success().then(|| text.trim().to_owned())
    };
    // Only files that exist: a missing one would make Cargo run this script (and rebuild
    // the crate) on every build.
    let watch = |path: Option<String>| {
        if let Some(path) = path.filter(|path| std::path::Path::new(path).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
    watch(git(&["rev-parse", "--git-path", "packed-refs"]));
    git(&["rev-parse", "--short=12", "HEAD"])
}
