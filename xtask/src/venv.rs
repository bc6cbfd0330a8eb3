//! The project-local Python virtualenv, `<workspace>/.venv` (gitignored).
//!
//! It holds Python Kombu for `cargo xtask bench` (pinned in
//! `tests/python/requirements.txt`) and is the place for pip-installed test
//! servers of server-backed backends (see [`crate::backends::ServerSpec::pip`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{describe, fail, run_streaming, status_text, Error, Result};

/// The pinned Python requirements, relative to the workspace root.
pub(crate) const REQUIREMENTS: &str = "tests/python/requirements.txt";

/// A Python virtualenv directory.
#[derive(Debug, Clone)]
pub(crate) struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// The project venv `<root>/.venv` (which may not exist yet).
    pub(crate) fn project(root: &Path) -> Self {
        Self {
            dir: root.join(".venv"),
        }
    }

    /// Path of an executable in the venv's `bin/`.
    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// The venv's Python interpreter.
    pub(crate) fn python(&self) -> PathBuf {
        self.bin("python")
    }

    /// Creates the venv with `python3 -m venv` unless it already has a Python.
    pub(crate) fn ensure_exists(&self, log_prefix: &str) -> Result<()> {
        if self.python().exists() {
            return Ok(());
        }
        println!("{log_prefix}: creating Python venv at {}…", self.dir.display());
        let mut command = Command::new("python3");
        command.arg("-m").arg("venv").arg(&self.dir);
        let status = run_streaming(&mut command)?;
        if !status.success() || !self.python().exists() {
            return fail(format!(
                "cannot create the Python venv: `{}` failed ({}); on Debian/Ubuntu install python3-venv",
                describe(&command),
                status_text(status)
            ));
        }
        Ok(())
    }

    /// Runs `python -m pip install <args>` in the venv, streaming its output.
    pub(crate) fn pip_install(&self, args: &[&str], log_prefix: &str) -> Result<()> {
        println!(
            "{log_prefix}: pip install {} (into {})…",
            args.join(" "),
            self.dir.display()
        );
        let mut command = Command::new(self.python());
        command
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(args);
        let status = run_streaming(&mut command)?;
        if !status.success() {
            return fail(format!(
                "`{}` failed ({})",
                describe(&command),
                status_text(status)
            ));
        }
        Ok(())
    }

    /// Whether every `name==version` pin is installed at exactly that version
    /// and `kombu` imports.
    fn satisfies(&self, pins: &[String]) -> bool {
        const CHECK: &str = "import sys, kombu\n\
            from importlib.metadata import version, PackageNotFoundError\n\
            for pin in sys.argv[1:]:\n\
            \x20   name, _, wanted = pin.partition('==')\n\
            \x20   try:\n\
            \x20       ok = version(name) == wanted\n\
            \x20   except PackageNotFoundError:\n\
            \x20       ok = False\n\
            \x20   if not ok:\n\
            \x20       sys.exit(1)\n";
        Command::new(self.python())
            .arg("-c")
            .arg(CHECK)
            .args(pins)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// The `name==version` lines of a requirements file (comments and blank lines
/// skipped).
fn pinned_requirements(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| line.contains("=="))
        .map(str::to_owned)
        .collect()
}

/// Makes sure `<root>/.venv` exists and has the pinned Python requirements
/// (Python Kombu) installed; returns the venv.
pub(crate) fn ensure_bench_venv(root: &Path, log_prefix: &str) -> Result<Venv> {
    let venv = Venv::project(root);
    venv.ensure_exists(log_prefix)?;
    let requirements = root.join(REQUIREMENTS);
    let text = std::fs::read_to_string(&requirements)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", requirements.display())))?;
    let pins = pinned_requirements(&text);
    if venv.satisfies(&pins) {
        return Ok(venv);
    }
    println!("{log_prefix}: installing Python requirements from {REQUIREMENTS}…");
    let path = requirements.to_string_lossy().into_owned();
    venv.pip_install(&["-r", &path], log_prefix)?;
    if !venv.satisfies(&pins) {
        return fail(format!(
            "the Python venv {} still lacks {} after pip install",
            root.join(".venv").display(),
            pins.join(", ")
        ));
    }
    Ok(venv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pins() {
        let text = "# comment\nkombu==5.7.0  # pinned\n\nvine>=5\n";
        assert_eq!(pinned_requirements(text), vec!["kombu==5.7.0".to_owned()]);
    }
}
