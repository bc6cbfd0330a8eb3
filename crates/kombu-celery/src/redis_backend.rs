//! Celery's Redis result backend (`redis://` result URLs).

use std::time::Duration;

use async_trait::async_trait;
use kombu::{Error, ErrorKind, Result};
use redis::aio::ConnectionManager;

use crate::result::{ResultBackend, ResultMeta};
use crate::TaskId;

/// Celery's key prefix of task results.
pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";

/// Celery's Redis result backend: each result is JSON under `celery-task-meta-<id>`, set with
/// an expiry (Celery's `result_expires`, one day by default) and published on a channel of
/// the same name in one `MULTI`, as Celery's `RedisBackend.set` does — so Python's
/// `AsyncResult(id).get()` sees a result stored here, and [`wait`](ResultBackend::wait) sees
/// one a Python worker stored.
///
/// `global_keyprefix` and Sentinel URLs are not supported yet.
#[derive(Clone)]
pub struct RedisBackend {
    connection: ConnectionManager,
    expires: Option<Duration>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn redis_error(error: redis::RedisError) -> Error {
    Error::new(ErrorKind::Connection, format!("redis result backend: {error}"))
}

impl RedisBackend {
    /// Connect to the backend at `url` (`redis://[:password@]host[:port][/db]`, as Celery's
    /// `result_backend`).
    pub async fn connect(url: &str) -> Result<RedisBackend> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::new(ErrorKind::InvalidUrl, format!("redis result backend URL: {e}")))?;
        let connection = client.get_connection_manager().await.map_err(redis_error)?;
        Ok(RedisBackend {
            connection,
            expires: Some(Duration::from_secs(86_400)),
        })
    }

    /// How long results are kept (Celery's `result_expires`; `None`: forever).
    pub fn expires(mut self, expires: Option<Duration>) -> Self {
        self.expires = expires;
        self
    }

    /// The key of a task's result.
    pub fn key_for(id: &TaskId) -> String {
        format!("{TASK_KEY_PREFIX}{id}")
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(&self, meta: &ResultMeta) -> Result<()> {
        let key = Self::key_for(&meta.task_id);
        let value = serde_json::to_string(meta).map_err(|e| Error::new(ErrorKind::Encode, e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        match self.expires {
            Some(expires) => pipe
                .cmd("SETEX")
                .arg(&key)
                .arg(expires.as_secs().max(1))
                .arg(&value),
            None => pipe.cmd("SET").arg(&key).arg(&value),
        }
        .ignore();
        pipe.cmd("PUBLISH").arg(&key).arg(&value).ignore();
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await.map_err(redis_error)
    }

    async fn get(&self, id: &TaskId) -> Result<Option<ResultMeta>> {
        let mut connection = self.connection.clone();
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(Self::key_for(id))
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        stored
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::new(ErrorKind::Decode, format!("the stored result of {id}: {e}")))
            })
            .transpose()
    }
}
