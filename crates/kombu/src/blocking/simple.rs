//! The blocking [`SimpleQueue`] and [`SimpleBuffer`]: a queue as easy as a local one.

use std::sync::Arc;
use std::time::Duration;

use kombu_core::{Queue, Result};
use serde::Serialize;

use super::runtime::{InRuntime, Runtime};
use super::Message;
use crate::PublishOptions;

/// A named queue with `put` and `get` (Kombu's `SimpleQueue`): a direct exchange and a queue
/// both named `name`, routing key `name`. Nothing is buffered on the client: dropping it
/// loses nothing.
///
/// ```
/// use std::time::Duration;
/// let conn = kombu::blocking::Connection::new("memory:///blocking-simple-doc")?;
/// let queue = conn.simple_queue("greetings");
/// queue.put(&"hello")?;
/// assert_eq!(queue.qsize()?, 1);
/// let message = queue.get(Duration::from_secs(1))?;
/// assert_eq!(message.decode::<String>()?, "hello");
/// message.ack()?;
/// assert!(queue.get_nowait()?.is_none());
/// assert_eq!(queue.get(Duration::from_millis(10)).unwrap_err().kind(), kombu::ErrorKind::Timeout);
/// # Ok::<(), kombu::Error>(())
/// ```
#[derive(Debug)]
pub struct SimpleQueue {
    inner: InRuntime<crate::SimpleQueue>,
}

impl SimpleQueue {
    pub(crate) fn new(queue: crate::SimpleQueue, runtime: Runtime) -> Self {
        SimpleQueue {
            inner: InRuntime::new(queue, runtime),
        }
    }

    /// The async queue underneath.
    pub fn as_async(&self) -> &crate::SimpleQueue {
        self.inner.get()
    }

    /// Accepted serializer names or content types for `get`.
    pub fn accept<I, S>(self, names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let (queue, runtime) = self.inner.into_parts();
        Ok(SimpleQueue::new(queue.accept(names)?, runtime))
    }

    /// The serializer used by `put`.
    pub fn serializer(self, name: impl Into<String>) -> Self {
        SimpleQueue {
            inner: self.inner.map(|q| q.serializer(name)),
        }
    }

    /// The compression used by `put`.
    pub fn compression(self, name: impl Into<String>) -> Self {
        SimpleQueue {
            inner: self.inner.map(|q| q.compression(name)),
        }
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        self.inner.get().queue()
    }

    /// Put a message.
    pub fn put<T: Serialize + ?Sized>(&self, body: &T) -> Result<()> {
        let queue = self.inner.get();
        self.inner.runtime().block_on(queue.put(body))
    }

    /// Put a message with options (headers, priority, expiration, …).
    pub fn put_with<T: Serialize + ?Sized>(&self, body: &T, options: PublishOptions) -> Result<()> {
        let queue = self.inner.get();
        self.inner.runtime().block_on(queue.put_with(body, options))
    }

    /// Take a message if one is ready.
    pub fn get_nowait(&self) -> Result<Option<Message>> {
        let runtime = self.inner.runtime();
        let message = runtime.block_on(self.inner.get().get_nowait())?;
        Ok(message.map(|m| Message::new(Arc::new(m), runtime.clone())))
    }

    /// Wait for a message, at most `timeout` (`None`: as long as it takes); a
    /// [`Timeout`](crate::ErrorKind::Timeout) error (Kombu's `SimpleQueue.Empty`) if none
    /// arrives.
    pub fn get(&self, timeout: impl Into<Option<Duration>>) -> Result<Message> {
        let runtime = self.inner.runtime();
        let message = runtime.block_on(self.inner.get().get(timeout.into()))?;
        Ok(Message::new(Arc::new(message), runtime.clone()))
    }

    /// Messages ready in the queue (Kombu's `qsize`).
    pub fn qsize(&self) -> Result<u64> {
        self.inner.runtime().block_on(self.inner.get().qsize())
    }

    /// Remove every message; returns how many.
    pub fn clear(&self) -> Result<u64> {
        self.inner.runtime().block_on(self.inner.get().clear())
    }

    /// Close the queue's channel (unacked messages are restored).
    pub fn close(&self) -> Result<()> {
        self.inner.runtime().block_on(self.inner.get().close())
    }
}

/// A transient, auto-deleted, no-ack queue (Kombu's `SimpleBuffer`): for data that may be
/// lost, such as progress events. Everything else is [`SimpleQueue`]'s.
#[derive(Debug)]
pub struct SimpleBuffer {
    inner: SimpleQueue,
}

impl SimpleBuffer {
    pub(crate) fn new(buffer: crate::SimpleBuffer, runtime: Runtime) -> Self {
        SimpleBuffer {
            inner: SimpleQueue::new(buffer.inner, runtime),
        }
    }
}

impl std::ops::Deref for SimpleBuffer {
    type Target = SimpleQueue;
    fn deref(&self) -> &SimpleQueue {
        &self.inner
    }
}
