//! `kombu celery send` and `kombu celery result`: Celery tasks from the shell, through
//! `kombu-celery` (the message Celery 5.7's `send_task` writes; results read from Celery's
//! Redis backend, or from the `rpc://` reply queue of the sending process).

use std::io::Write as _;
use std::time::Duration;

use kombu::ErrorKind;
use kombu_celery::{send_task, RedisBackend, ResultBackend, ResultMeta, RpcBackend, TaskId, TaskOptions};
use serde_json::{json, Value};

use crate::cli::{CeleryCommand, CeleryResultArgs, CelerySendArgs, GlobalArgs};
use crate::commands::{connect, seconds};
use crate::error::{stdout_error, CliError, CliResult};

/// Runs `kombu celery …`.
pub(crate) async fn run(global: &GlobalArgs, command: CeleryCommand) -> CliResult {
    match command {
        CeleryCommand::Send(args) => send(global, args).await,
        CeleryCommand::Result(args) => result(args).await,
    }
}

async fn send(global: &GlobalArgs, args: CelerySendArgs) -> CliResult {
    let task_args: Value = json_arg("--args", &args.args)?;
    if !task_args.is_array() {
        return Err(CliError::other(
            "--args must be a JSON array (the task's positional arguments)",
        ));
    }
    let task_kwargs: Value = json_arg("--kwargs", &args.kwargs)?;
    if !task_kwargs.is_object() {
        return Err(CliError::other(
            "--kwargs must be a JSON object (the task's keyword arguments)",
        ));
    }
    let mut options = TaskOptions::new();
    if let Some(queue) = &args.queue {
        options = options.queue(queue.clone());
    }
    if let Some(countdown) = args.countdown {
        options = options.countdown(seconds(countdown));
    }
    if let Some(expires) = args.expires {
        options = options.expires(seconds(expires));
    }
    if let Some(priority) = args.priority {
        options = options.priority(priority);
    }
    let connection = connect(global)?;
    let outcome = async {
        if !args.wait {
            let id = send_task(&connection, &args.name, task_args, task_kwargs, options).await?;
            return print_line(&id.to_string());
        }
        let backend = Backend::open(&args.backend, &connection).await?;
        if let Backend::Rpc(rpc) = &backend {
            // Before sending: the reply queue must exist when the result is sent.
            rpc.declare().await?;
        }
        let id = send_task(&connection, &args.name, task_args, task_kwargs, options).await?;
        let meta = backend.wait(&id, seconds(args.timeout)).await?;
        print_result(&id, meta)
    }
    .await;
    let closed = connection.close().await;
    outcome?;
    closed.map_err(CliError::from)
}

async fn result(args: CeleryResultArgs) -> CliResult {
    if args.backend.starts_with("rpc://") {
        return Err(CliError::other(
            "rpc:// results go back to the process that sent the task, not to a later one: \
             use `kombu celery send --wait` (or a Redis result backend)",
        ));
    }
    let backend = RedisBackend::connect(&args.backend).await?;
    let id = TaskId::from(args.id);
    let meta = wait(&backend, &id, seconds(args.timeout)).await?;
    print_result(&id, meta)
}

/// Where `--wait` reads the result.
enum Backend {
    Rpc(RpcBackend),
    Redis(RedisBackend),
}

impl Backend {
    async fn open(url: &str, connection: &kombu::Connection) -> CliResult<Backend> {
        if url.starts_with("rpc://") {
            Ok(Backend::Rpc(RpcBackend::new(connection)))
        } else {
            Ok(Backend::Redis(RedisBackend::connect(url).await?))
        }
    }

    async fn wait(&self, id: &TaskId, timeout: Duration) -> CliResult<ResultMeta> {
        match self {
            Backend::Rpc(rpc) => wait(rpc, id, timeout).await,
            Backend::Redis(redis) => wait(redis, id, timeout).await,
        }
    }
}

/// Wait for `id`; running out of time is the CLI's timeout (exit code 3).
async fn wait(backend: &impl ResultBackend, id: &TaskId, timeout: Duration) -> CliResult<ResultMeta> {
    match backend.wait(id, timeout).await {
        Ok(meta) => Ok(meta),
        Err(e) if e.kind() == ErrorKind::Timeout => Err(CliError::Timeout(format!(
            "task {id} did not finish within {timeout:?}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// One JSON line `{"id", "state", "result"[, "traceback"]}`; a failed or revoked task is
/// printed the same way and exits non-zero.
fn print_result(id: &TaskId, meta: ResultMeta) -> CliResult {
    let state = meta.status;
    let mut line = json!({"id": id.to_string(), "state": state, "result": meta.result});
    if let Some(traceback) = meta.traceback {
        line["traceback"] = Value::String(traceback);
    }
    print_line(&line.to_string())?;
    match state {
        kombu_celery::TaskState::Success => Ok(()),
        _ => Err(CliError::other(format!("task {id} ended {}", json!(state)))),
    }
}

fn print_line(line: &str) -> CliResult {
    writeln!(std::io::stdout(), "{line}").map_err(stdout_error)
}

fn json_arg(flag: &str, text: &str) -> CliResult<Value> {
    serde_json::from_str(text).map_err(|e| CliError::other(format!("{flag} is not JSON: {e}")))
}
