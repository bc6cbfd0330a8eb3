//! FerretDB, the MongoDB-wire server the MongoDB transport is tested against
//! (`../shared/reference/infra.md`): built from its Go module with the machine's Go and cached
//! under the target directory.
//!
//! `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` gives a binary that panics
//! at start (its build reads `build/version/version.txt`, which the module does not ship), so
//! the module is downloaded with `go mod download`, copied somewhere writable, given that
//! file, and built there with `go build`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::util::{
    describe, fail, format_duration, run_capture_stdout, run_streaming, status_text, target_dir, Error,
    Result,
};

/// The FerretDB release the tests run.
pub(crate) const VERSION: &str = "v1.24.2";
const MODULE: &str = "github.com/FerretDB/FerretDB";

/// Where the built binary is cached: `<target>/ferretdb/<version>/ferretdb`. The tests look
/// for it there too (or take `KOMBU_FERRETDB`).
pub(crate) fn binary_path(root: &Path) -> PathBuf {
    target_dir(root).join("ferretdb").join(VERSION).join("ferretdb")
}

/// The cached binary, built first if it is missing.
pub(crate) fn ensure_built(root: &Path) -> Result<PathBuf> {
    let binary = binary_path(root);
    if binary.is_file() {
        return Ok(binary);
    }
    let go = find_go().ok_or_else(|| {
        Error::new(format!(
            "FerretDB {VERSION} (the MongoDB-wire test server) is built from source with Go, and no `go` was found in PATH or /usr/local/go/bin; install Go 1.21+ (Debian: apt-get install golang) or put a FerretDB binary at {}",
            binary.display()
        ))
    })?;
    let started = Instant::now();
    println!(
        "xtask: building FerretDB {VERSION} with {} (once; cached at {})",
        go.display(),
        binary.display()
    );
    let mut download = Command::new(&go);
    download.args(["mod", "download", "-json", &format!("{MODULE}@{VERSION}")]);
    let json = run_capture_stdout(&mut download)?;
    let info: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| Error::new(format!("unexpected output of `{}`: {e}", describe(&download))))?;
    let Some(module_dir) = info.get("Dir").and_then(|d| d.as_str()) else {
        return fail(format!(
            "`{}` did not say where the module is: {json}",
            describe(&download)
        ));
    };
    let work = binary.with_file_name("src");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .map_err(|e| Error::new(format!("cannot clear {}: {e}", work.display())))?;
    }
    if let Some(parent) = work.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut copy = Command::new("cp");
    copy.arg("-r").arg(module_dir).arg(&work);
    check(&mut copy)?;
    let mut writable = Command::new("chmod");
    writable.arg("-R").arg("u+w").arg(&work);
    check(&mut writable)?;
    let version_file = work.join("build/version/version.txt");
    std::fs::write(&version_file, format!("{VERSION}\n"))
        .map_err(|e| Error::new(format!("cannot write {}: {e}", version_file.display())))?;
    let partial = binary.with_file_name("ferretdb.partial");
    let mut build = Command::new(&go);
    build
        .args(["build", "-trimpath", "-o"])
        .arg(&partial)
        .arg("./cmd/ferretdb")
        .current_dir(&work)
        .env("CGO_ENABLED", "0");
    println!("xtask: {}", describe(&build));
    check(&mut build)?;
    std::fs::rename(&partial, &binary)
        .map_err(|e| Error::new(format!("cannot move the FerretDB binary into place: {e}")))?;
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "xtask: FerretDB {VERSION} built in {}",
        format_duration(started.elapsed())
    );
    Ok(binary)
}

fn check(command: &mut Command) -> Result<()> {
    let status = run_streaming(command)?;
    if !status.success() {
        return fail(format!(
            "`{}` failed ({})",
            describe(command),
            status_text(status)
        ));
    }
    Ok(())
}

fn find_go() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/local/go/bin"));
    dirs.push(PathBuf::from("/usr/lib/go/bin"));
    dirs.into_iter().map(|d| d.join("go")).find(|p| p.is_file())
}
