//! [`VirtualTransport`]: a connection made of a [`VirtualBackend`] and a routing
//! [`BrokerState`], with the mechanisms every receipt-based broker needs run once here: the
//! batched settlement queue and the renewal of in-flight deliveries.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, warn};

use super::backend::{Receipts, VirtualBackend};
use super::channel::{ChannelInner, VirtualChannel};
use super::settlement::Settlement;
use super::state::BrokerState;
use crate::capabilities::Capabilities;
use crate::entity::ExchangeType;
use crate::envelope::BodyEncoding;
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Channel, Transport};

/// The open channels of one connection (weak: a channel lives as long as its handles).
pub(super) struct ChannelList<B: VirtualBackend>(Mutex<Vec<Weak<ChannelInner<B>>>>);

impl<B: VirtualBackend> ChannelList<B> {
    fn lock(&self) -> MutexGuard<'_, Vec<Weak<ChannelInner<B>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Vec<Arc<ChannelInner<B>>> {
        self.lock().iter().filter_map(Weak::upgrade).collect()
    }
}

/// A [`Transport`] made of a [`VirtualBackend`] and a routing [`BrokerState`].
pub struct VirtualTransport<B: VirtualBackend> {
    backend: Arc<B>,
    state: Arc<BrokerState>,
    body_encoding: BodyEncoding,
    unsupported_hint: Option<(ExchangeType, &'static str)>,
    connected: AtomicBool,
    channels: Arc<ChannelList<B>>,
    settlement: Option<Settlement>,
}

impl<B: VirtualBackend> fmt::Debug for VirtualTransport<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualTransport")
            .field("backend", &self.backend.name())
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish()
    }
}

impl<B: VirtualBackend> VirtualTransport<B> {
    /// A transport over `backend`, routing with `state`. A backend with
    /// [`Receipts`] gets its settlement queue and, where its messages have a deadline, the
    /// renewal task (both on the current tokio runtime).
    pub fn new(backend: Arc<B>, state: Arc<BrokerState>) -> Self {
        let channels = Arc::new(ChannelList(Mutex::new(Vec::new())));
        let settlement = Settlement::spawn(&backend);
        if let Some(every) = backend.receipts().and_then(Receipts::renewal_interval) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(renew_loop(
                    Arc::downgrade(&backend),
                    Arc::downgrade(&channels),
                    every,
                ));
            }
        }
        VirtualTransport {
            backend,
            state,
            body_encoding: BodyEncoding::Base64,
            unsupported_hint: None,
            connected: AtomicBool::new(true),
            channels,
            settlement,
        }
    }

    /// How bodies are written into envelopes (Kombu's `body_encoding` transport option).
    pub fn with_body_encoding(mut self, encoding: BodyEncoding) -> Self {
        self.body_encoding = encoding;
        self
    }

    /// How to turn on exchange type `kind` where this connection lacks it (a transport option,
    /// a cargo feature): added to the `Unsupported` error of declaring such an exchange.
    pub fn with_unsupported_hint(mut self, kind: ExchangeType, hint: &'static str) -> Self {
        self.unsupported_hint = Some((kind, hint));
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Open a channel with its concrete type.
    pub fn open_channel(&self) -> Result<VirtualChannel<B>> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "connection is closed"));
        }
        let channel = VirtualChannel::new(
            self.backend.clone(),
            self.state.clone(),
            self.body_encoding,
            self.unsupported_hint,
            self.settlement.clone(),
        );
        let mut channels = self.channels.lock();
        channels.retain(|w| w.strong_count() > 0);
        channels.push(channel.downgrade());
        Ok(channel)
    }
}

#[async_trait]
impl<B: VirtualBackend> Transport for VirtualTransport<B> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        Ok(Arc::new(self.open_channel()?))
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    async fn close(&self) -> Result<()> {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let channels: Vec<_> = std::mem::take(&mut *self.channels.lock());
        let mut first_error = None;
        for inner in channels.iter().filter_map(Weak::upgrade) {
            if let Err(e) = inner.close().await {
                first_error.get_or_insert(e);
            }
        }
        if let Some(settlement) = &self.settlement {
            settlement.flush().await;
        }
        self.backend.close().await?;
        first_error.map_or(Ok(()), Err)
    }
}

/// Every `every`, push forward the deadlines of the messages the connection's channels hold
/// (delivered and unsettled, or received ahead for a consumer), in one call. Ends with the
/// connection; holds neither the backend nor the channels while it sleeps, so dropping the
/// connection releases the backend at once.
async fn renew_loop<B: VirtualBackend>(backend: Weak<B>, channels: Weak<ChannelList<B>>, every: Duration) {
    let mut held: Vec<String> = Vec::new();
    loop {
        tokio::time::sleep(every).await;
        let (Some(backend), Some(list)) = (backend.upgrade(), channels.upgrade()) else {
            return;
        };
        let Some(receipts) = backend.receipts() else {
            return;
        };
        held.clear();
        for channel in list.live() {
            channel.held_receipts(&mut held);
        }
        drop(list);
        if held.is_empty() {
            continue;
        }
        let refs: Vec<&str> = held.iter().map(String::as_str).collect();
        match receipts.renew(&refs).await {
            Ok(()) => debug!(count = refs.len(), "renewed in-flight deliveries"),
            Err(e) => warn!(error = %e, count = refs.len(), "could not renew in-flight deliveries"),
        }
    }
}
