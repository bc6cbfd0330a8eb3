//! The second process of the cross-process behaviours: the conformance binary started again
//! with [`ENV`] set to a JSON [`Task`], which [`Suite::run`](crate::Suite::run) hands here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kombu::transport::GetOptions;
use kombu::{Connection, ConnectionOptions, Exchange, ExchangeType, PublishOptions};
use serde::{Deserialize, Serialize};

/// The environment variable that carries the task.
pub(crate) const ENV: &str = "KOMBU_TESTKIT_CHILD";

/// What the second process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Task {
    /// Publish JSON bodies to `exchange` (of type `kind`) without declaring anything: the
    /// routing must come from the broker.
    Publish {
        url: String,
        options: BTreeMap<String, String>,
        exchange: String,
        kind: String,
        /// `(routing key, body)` pairs, in order.
        messages: Vec<(String, serde_json::Value)>,
    },
    /// Take one message from `queue` without acking it, print its body, and exit at once,
    /// without closing anything: a consumer that dies.
    TakeAndDie {
        url: String,
        options: BTreeMap<String, String>,
        queue: String,
    },
}

/// Run `task` in a second process started from `exe`; its standard output.
pub(crate) async fn run(exe: &Path, task: &Task) -> Result<String, String> {
    let spec = serde_json::to_string(task).map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(exe);
    command
        .env(ENV, spec)
        .env_remove("KOMBU_TESTKIT_REPORT")
        .env_remove("KOMBU_TESTKIT_DEFER");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| format!("second process: {e}"))?
        .map_err(|e| format!("cannot start a second process ({}): {e}", exe.display()))?;
    if !output.status.success() {
        return Err(format!(
            "the second process failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The second process's `main`.
pub(crate) fn main(spec: &str) -> ExitCode {
    let task: Task = match serde_json::from_str(spec) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("{ENV}: cannot read the task: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(perform(task)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn connect(url: &str, options: BTreeMap<String, String>) -> kombu::Result<Connection> {
    let mut connection_options = ConnectionOptions::default();
    connection_options.transport_options.extend(options);
    Connection::with_options(url, connection_options)
}

async fn perform(task: Task) -> Result<(), String> {
    match task {
        Task::Publish {
            url,
            options,
            exchange,
            kind,
            messages,
        } => {
            let kind: ExchangeType = kind.parse().map_err(|e| format!("{e}"))?;
            let conn = connect(&url, options).map_err(|e| e.to_string())?;
            let producer = conn
                .producer()
                .exchange(Exchange::new(exchange, kind))
                .auto_declare(false);
            for (key, body) in messages {
                producer
                    .publish(&body, PublishOptions::new().routing_key(key))
                    .await
                    .map_err(|e| format!("publish failed: {e}"))?;
            }
            conn.close().await.map_err(|e| e.to_string())
        }
        Task::TakeAndDie { url, options, queue } => {
            let conn = connect(&url, options).map_err(|e| e.to_string())?;
            let channel = conn.channel().await.map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = channel
                    .get(&queue, GetOptions::default())
                    .await
                    .map_err(|e| format!("get failed: {e}"))?;
                if let Some(delivery) = got {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&delivery.message.body);
                    let _ = out.flush();
                    // Die holding the message: no ack, no close, no destructors.
                    std::process::exit(0);
                }
                if Instant::now() >= deadline {
                    return Err(format!("no message arrived in {queue} within 10 s"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
