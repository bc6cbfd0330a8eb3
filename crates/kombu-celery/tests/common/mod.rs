//! What the kombu-celery tests against real Celery share: the Python (the project venv or
//! `KOMBU_PYTHON`), Celery commands run from `tests/python` with a broker and result backend
//! in the environment, and a Celery worker process.
#![allow(dead_code, clippy::expect_used, reason = "test support")]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// `tests/python`, where the Celery apps live.
pub(crate) fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python")
}

/// `KOMBU_PYTHON`, else the project venv's Python.
pub(crate) fn python() -> PathBuf {
    let python = std::env::var_os("KOMBU_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with Celery at {} (run `cargo xtask test-matrix`, which creates the project venv \
         from tests/python/requirements.txt) or set KOMBU_PYTHON",
        python.display()
    );
    python
}

/// Where a Celery app sends tasks and keeps results: `CELERY_BROKER_URL` and, if set,
/// `CELERY_RESULT_BACKEND`.
#[derive(Debug, Clone)]
pub(crate) struct CeleryEnv {
    pub(crate) broker: String,
    pub(crate) backend: Option<String>,
    /// `CELERY_TASK_SERIALIZER` for `celery_app.py`'s client (json unless set).
    pub(crate) serializer: Option<String>,
}

impl CeleryEnv {
    pub(crate) fn new(broker: impl Into<String>, backend: Option<String>) -> CeleryEnv {
        CeleryEnv {
            broker: broker.into(),
            backend,
            serializer: None,
        }
    }

    /// `python` in `tests/python` with this broker and backend.
    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(python());
        command
            .current_dir(python_dir())
            .env("CELERY_BROKER_URL", &self.broker);
        if let Some(backend) = &self.backend {
            command.env("CELERY_RESULT_BACKEND", backend);
        }
        if let Some(serializer) = &self.serializer {
            command.env("CELERY_TASK_SERIALIZER", serializer);
        }
        command
    }

    /// Run `python ARGS` on a blocking thread; its output.
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        tokio::task::spawn_blocking(move || command.output().expect("python runs"))
            .await
            .expect("the client thread")
    }

    /// Run `python ARGS`, which must succeed and print one JSON line; that line.
    pub(crate) async fn json(&self, args: &[&str]) -> Value {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "{args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad output {stdout:?}: {e}"))
    }
}

/// A Python Celery worker of `app` (a module in `tests/python`) consuming `celery`, killed
/// when dropped.
pub(crate) struct CeleryWorker {
    child: Child,
}

impl CeleryWorker {
    /// Start it with `env` and the node name `name@%h`; returns once it said it is ready.
    pub(crate) fn start(env: &CeleryEnv, app: &str, name: &str) -> CeleryWorker {
        let mut child = env
            .command()
            .args([
                "-m", "celery", "-A", app, "worker", "--pool", "solo", "-Q", "celery",
            ])
            .args(["--without-heartbeat", "--without-gossip", "--without-mingle"])
            .args(["-l", "INFO", "-n", &format!("{name}@%h")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python -m celery worker");
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[celery worker] {line}");
                if line.contains(" ready.") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(60))
            .expect("the Celery worker said it is ready");
        CeleryWorker { child }
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Rust tasks the Python clients call: `rust.mul(x, y)`, `rust.flaky()` (asks for one
/// retry, then returns `{"retries": n}`) and `rust.fail()` (a `ValueError`).
pub(crate) fn test_tasks(registry: kombu_celery::TaskRegistry) -> kombu_celery::TaskRegistry {
    use kombu_celery::{TaskError, TaskMessage};
    registry
        .task("rust.mul", |(x, y): (i64, i64), _: Value| async move {
            Ok::<_, TaskError>(x * y)
        })
        .task_message("rust.flaky", |task: TaskMessage| async move {
            if task.retries == 0 {
                return Err(TaskError::retry(Duration::from_millis(100), "once more"));
            }
            Ok(serde_json::json!({"retries": task.retries}))
        })
        .task("rust.fail", |(): (), _: Value| async move {
            Err::<i64, _>(TaskError::builtin("ValueError", "rust.fail failed on purpose"))
        })
}
