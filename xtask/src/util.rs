//! Shared helpers: the error type, workspace paths, child processes, loopback
//! ports, temporary directories and small formatting utilities.

use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A user-facing error. `main` prints it as one line: `xtask: error: <message>`.
#[derive(Debug)]
pub(crate) struct Error(String);

impl Error {
    /// An error with the given message.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Result with the xtask [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for `Err(Error::new(message))`.
pub(crate) fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::new(message))
}

/// Root of the Cargo workspace (the parent of the xtask crate).
///
/// `cargo run` sets `CARGO_MANIFEST_DIR` at run time; the compile-time value is
/// the fallback when the binary is started directly.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    match manifest.parent() {
        Some(parent) => parent.to_path_buf(),
        None => manifest,
    }
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root) or `<root>/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// A `cargo` command (the cargo that runs us, via `$CARGO`) in the workspace root.
pub(crate) fn cargo(root: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(root);
    command
}

/// The command line of `command`, for messages, with URL passwords masked.
pub(crate) fn describe(command: &Command) -> String {
    let mut words = vec![display_program(command.get_program())];
    words.extend(
        command
            .get_args()
            .map(|arg| redact_password(&arg.to_string_lossy())),
    );
    words.join(" ")
}

/// `scheme://user:password@host…` → `scheme://user:****@host…`: command lines are printed,
/// and a URL argument may carry a broker's credentials.
pub(crate) fn redact_password(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &text[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return text.to_owned();
    };
    format!("{}:****{}", &text[..start + colon], &text[start + at..])
}

/// The file name of a program path (`/usr/bin/cargo` → `cargo`).
fn display_program(program: &OsStr) -> String {
    Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

/// Runs `command` with inherited stdio (its output streams through) and
/// returns its exit status. Failing to start it is an error.
pub(crate) fn run_streaming(command: &mut Command) -> Result<ExitStatus> {
    command
        .status()
        .map_err(|e| Error::new(format!("cannot run `{}`: {e}", describe(command))))
}

/// Runs `command`, copying each line of its stdout to our stdout and handing it
/// to `on_line`; stderr is inherited. Returns the exit status.
pub(crate) fn run_tee_stdout(command: &mut Command, mut on_line: impl FnMut(&str)) -> Result<ExitStatus> {
    let text = describe(command);
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run `{text}`: {e}")))?;
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut buffer = Vec::new();
        let out = std::io::stdout();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) => break,
                Ok(_) => {
                    let mut lock = out.lock();
                    // A closed stdout (e.g. `| head`) must not stop the child.
                    let _ = lock.write_all(&buffer);
                    let _ = lock.flush();
                    on_line(String::from_utf8_lossy(&buffer).trim_end_matches(['\n', '\r']));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return fail(format!("cannot read the output of `{text}`: {e}"));
                }
            }
        }
    }
    child
        .wait()
        .map_err(|e| Error::new(format!("cannot wait for `{text}`: {e}")))
}

/// Runs `command` and returns its stdout (stderr is inherited, so progress and
/// errors still show). A non-zero exit is an error.
pub(crate) fn run_capture_stdout(command: &mut Command) -> Result<String> {
    let text = describe(command);
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::new(format!("cannot run `{text}`: {e}")))?;
    if !output.status.success() {
        return fail(format!("`{text}` failed ({})", status_text(output.status)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` quietly and returns its trimmed stdout, or `None` if it could
/// not run or failed. For optional facts (versions, ids).
pub(crate) fn probe(command: &mut Command) -> Option<String> {
    let output = command.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// "exit status 3" / "killed by signal 9", for messages.
pub(crate) fn status_text(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    status.to_string()
}

/// The scratch directory of xtask, `<target>/xtask-tmp`, created if missing.
pub(crate) fn xtask_tmp(root: &Path) -> Result<PathBuf> {
    let dir = target_dir(root).join("xtask-tmp");
    std::fs::create_dir_all(&dir).map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// A fresh directory under `<target>/xtask-tmp`, removed (with its contents)
/// when dropped.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<target>/xtask-tmp/<prefix>-<pid>-<counter>`, emptying any
    /// leftover of an earlier run with the same name.
    pub(crate) fn new(root: &Path, prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = xtask_tmp(root)?.join(format!("{prefix}-{}-{n}", std::process::id()));
        if path.exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self { path })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A loopback TCP port that was free a moment ago (the OS picks it; there is
/// an unavoidable race until the server binds it).
pub(crate) fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::new(format!("cannot find a free loopback port: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::new(format!("cannot find a free loopback port: {e}")))?
        .port();
    Ok(port)
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
///
/// `check` runs between attempts; an error from it (e.g. "the server exited")
/// ends the wait early. Gives up after `timeout`.
pub(crate) fn wait_for_port(
    port: u16,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(250)).is_ok() {
            return Ok(());
        }
        check()?;
        if start.elapsed() >= timeout {
            return fail(format!(
                "nothing accepted connections on {address} within {}",
                format_duration(timeout)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Compact human duration: `850ms`, `12.3s`, `2m05s`.
pub(crate) fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        let secs = duration.as_secs();
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn format_utc(epoch_secs: u64) -> String {
    let days = i64::try_from(epoch_secs / 86_400).unwrap_or(0);
    let rem = epoch_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// The last `lines` lines of a text file, indented, for error messages.
pub(crate) fn tail_of(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                format!("({} is empty)", path.display())
            } else {
                all[start..]
                    .iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Render rows (the first is the header) as an aligned text table: first column left-aligned,
/// the others right-aligned, a rule under the header. One string per line, no trailing blanks.
pub(crate) fn text_table<R: AsRef<[String]>>(rows: &[R]) -> Vec<String> {
    let columns = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.as_ref()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(col, (cell, &w))| {
                if col == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        lines.push(cells.join(" | ").trim_end().to_owned());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            lines.push(rule.join("-|-"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_776_000_000 + 3_600 + 120), "2026-04-12 14:22 UTC");
    }

    #[test]
    fn printed_command_lines_mask_url_passwords() {
        let mut command = Command::new("/usr/bin/python");
        command.args([
            "--url",
            "sqs://key:s3cret@127.0.0.1:4566?region=eu",
            "--size",
            "100",
        ]);
        assert_eq!(
            describe(&command),
            "python --url sqs://key:****@127.0.0.1:4566?region=eu --size 100"
        );
        assert_eq!(
            redact_password("amqp://guest:guest@h:5672//"),
            "amqp://guest:****@h:5672//"
        );
        assert_eq!(redact_password("redis://:pw@h:6379/0"), "redis://:****@h:6379/0");
        // Nothing to mask: no password, an `@` outside the authority, no URL.
        assert_eq!(redact_password("redis://user@h/0"), "redis://user@h/0");
        assert_eq!(
            redact_password("mongodb://h/db?x=a:b@c"),
            "mongodb://h/db?x=a:b@c"
        );
        assert_eq!(redact_password("--messages"), "--messages");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn free_port_accepts_after_bind_and_wait_times_out_when_closed() -> Result<()> {
        let port = free_loopback_port()?;
        assert!(wait_for_port(port, Duration::from_millis(200), || Ok(())).is_err());
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| Error::new(format!("bind: {e}")))?;
        wait_for_port(port, Duration::from_secs(5), || Ok(()))?;
        drop(listener);
        Ok(())
    }

    #[test]
    fn wait_stops_when_check_fails() {
        let result = wait_for_port(1, Duration::from_secs(30), || fail("server exited"));
        assert!(matches!(result, Err(e) if e.to_string() == "server exited"));
    }

    #[test]
    fn temp_dir_is_removed_on_drop() -> Result<()> {
        let dir = TempDir::new(&workspace_root(), "unit-test")?;
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("file"), b"x").map_err(|e| Error::new(e.to_string()))?;
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
        Ok(())
    }
}
