//! The transport registry.
//!
//! Each transport crate defines one `static` [`TransportDescriptor`], built with its `const`
//! constructor, and submits a reference to it with `inventory`:
//!
//! ```
//! # use kombu_core::registry::{ConnectFuture, TransportDescriptor};
//! # use kombu_core::{Capabilities, ConnectOptions, Error};
//! # fn connect(_: ConnectOptions) -> ConnectFuture {
//! #     Box::pin(async { Err(Error::unsupported("a doc example")) })
//! # }
//! pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("toy", connect)
//!     .schemes(&["toy", "toy+tls"])
//!     .description("an example transport")
//!     .capabilities(Capabilities::NONE);
//! kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }
//! # assert!(kombu_core::registry::is_submitted(&DESCRIPTOR));
//! ```
//!
//! and exports the same descriptor so applications can [`register`] it explicitly. Both are
//! needed: the linker drops `inventory` submissions of crates nothing references
//! (dtolnay/inventory#7), so the `kombu` facade references every enabled transport crate and
//! offers `install_default_transports()`, the way sqlx offers `install_default_drivers()`.
//!
//! Lookup is by URL scheme, and only by the schemes a descriptor declares: a `transport+url`
//! scheme (`redis+socket`, `amqp+amiquip`) resolves because a descriptor lists it, never by
//! its prefix. An unknown scheme is an [`ErrorKind::UnknownTransport`] error that lists the
//! schemes available and, for a scheme of a [`FeatureHint`] (the `kombu` facade adds one for
//! each of its transports), the Cargo feature that compiles its transport in.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};

use crate::capabilities::Capabilities;
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{ConnectOptions, Transport};
use crate::url::BrokerUrl;

/// The future returned by a transport's connect function.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Transport>>> + Send>>;

/// Describes one transport: its schemes, capabilities and how to connect.
///
/// Built in a `static` with [`TransportDescriptor::new`] and the `const` builder methods; the
/// struct is `#[non_exhaustive]`, so fields added later (with defaults in `new`) break no
/// descriptor written outside this crate. The fields are public for reading.
///
/// ```
/// # use kombu_core::registry::{ConnectFuture, TransportDescriptor};
/// # use kombu_core::{Capabilities, ConnectOptions, Error};
/// # fn connect(_: ConnectOptions) -> ConnectFuture {
/// #     Box::pin(async { Err(Error::unsupported("a doc example")) })
/// # }
/// static TOY: TransportDescriptor = TransportDescriptor::new("toy", connect)
///     .schemes(&["toy"])
///     .description("an example transport")
///     .capabilities(Capabilities::NONE);
/// assert_eq!(TOY.name, "toy");
/// assert_eq!(TOY.kombu_feature, None); // not a transport of the `kombu` crate
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct TransportDescriptor {
    /// Short, unique name (`"memory"`, `"amqp-amiquip"`): registering a second descriptor of
    /// the same name does nothing.
    pub name: &'static str,
    /// Every URL scheme it serves, lower case, Kombu's aliases and `transport+url` spellings
    /// included (`["redis", "rediss", "redis+socket", "socket", "redis+unix"]`). Lookup
    /// matches these exactly: a scheme not listed here never reaches this transport.
    pub schemes: &'static [&'static str],
    /// The feature of the `kombu` facade crate that compiles this transport in, for the
    /// transports kombu-rs ships (`Some("redis")`); `None` for any other crate, whose users
    /// enable it by depending on that crate.
    pub kombu_feature: Option<&'static str>,
    /// One-line description.
    pub description: &'static str,
    /// What it supports.
    pub capabilities: Capabilities,
    /// Connect to a broker.
    pub connect: fn(ConnectOptions) -> ConnectFuture,
}

impl TransportDescriptor {
    /// A descriptor named `name` that connects with `connect`; it serves no scheme until
    /// [`schemes`](Self::schemes) names them, has no `kombu` feature, an empty description and
    /// [`Capabilities::NONE`].
    pub const fn new(name: &'static str, connect: fn(ConnectOptions) -> ConnectFuture) -> Self {
        TransportDescriptor {
            name,
            schemes: &[],
            kombu_feature: None,
            description: "",
            capabilities: Capabilities::NONE,
            connect,
        }
    }

    /// The URL schemes it serves (see [the field](#structfield.schemes)).
    #[must_use]
    pub const fn schemes(mut self, schemes: &'static [&'static str]) -> Self {
        self.schemes = schemes;
        self
    }

    /// The `kombu` feature that compiles it in: for kombu-rs's own transports only.
    #[must_use]
    pub const fn kombu_feature(mut self, feature: &'static str) -> Self {
        self.kombu_feature = Some(feature);
        self
    }

    /// Its one-line description.
    #[must_use]
    pub const fn description(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    /// What it supports.
    #[must_use]
    pub const fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Whether it serves `scheme` (case-insensitive).
    pub fn serves(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }
}

/// What a transport crate submits to `inventory`: a reference to its descriptor, so the
/// descriptor is written once.
#[derive(Debug)]
pub struct Registration(pub &'static TransportDescriptor);

inventory::collect!(Registration);

/// A transport this build may lack: the schemes it serves and the `kombu` feature that
/// compiles it in. Looking up one of those schemes when no registered transport serves it
/// fails with an error that names the feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeatureHint {
    /// The feature of the `kombu` crate.
    pub kombu_feature: &'static str,
    /// The schemes its transport serves.
    pub schemes: &'static [&'static str],
}

impl FeatureHint {
    /// The transport of `kombu_feature` serves `schemes`.
    pub const fn new(kombu_feature: &'static str, schemes: &'static [&'static str]) -> Self {
        FeatureHint {
            kombu_feature,
            schemes,
        }
    }
}

fn hints() -> &'static RwLock<Vec<&'static [FeatureHint]>> {
    static HINTS: OnceLock<RwLock<Vec<&'static [FeatureHint]>>> = OnceLock::new();
    HINTS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Add hints for [`lookup`]'s errors (idempotent for the same slice). The `kombu` facade adds
/// one per transport it ships, compiled in or not.
pub fn add_feature_hints(list: &'static [FeatureHint]) {
    let mut all = hints().write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !all.iter().any(|known| std::ptr::eq(*known, list)) {
        all.push(list);
    }
}

/// The feature of the first hint naming `scheme`.
fn hinted_feature(scheme: &str) -> Option<&'static str> {
    let all = hints().read().unwrap_or_else(|poisoned| poisoned.into_inner());
    all.iter()
        .flat_map(|list| list.iter())
        .find(|hint| hint.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
        .map(|hint| hint.kombu_feature)
}

fn explicit() -> &'static RwLock<Vec<&'static TransportDescriptor>> {
    static EXPLICIT: OnceLock<RwLock<Vec<&'static TransportDescriptor>>> = OnceLock::new();
    EXPLICIT.get_or_init(|| RwLock::new(Vec::new()))
}

/// Register a transport explicitly (idempotent). Needed where `inventory`'s constructors do not
/// run (e.g. `staticlib` builds) or the transport crate is otherwise unreferenced.
pub fn register(descriptor: &'static TransportDescriptor) {
    let mut list = explicit()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !list.iter().any(|d| d.name == descriptor.name) {
        list.push(descriptor);
    }
}

/// Whether `descriptor` itself was submitted to `inventory` (not just registered explicitly):
/// each transport crate's unit test checks its `submit!` with this.
pub fn is_submitted(descriptor: &'static TransportDescriptor) -> bool {
    inventory::iter::<Registration>
        .into_iter()
        .any(|Registration(d)| std::ptr::eq(*d, descriptor))
}

/// Every registered transport, explicit and `inventory`-submitted, deduplicated by name and
/// sorted by name.
pub fn transports() -> Vec<&'static TransportDescriptor> {
    let mut all: Vec<&'static TransportDescriptor> = explicit()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    for Registration(d) in inventory::iter::<Registration> {
        if !all.iter().any(|e| e.name == d.name) {
            all.push(d);
        }
    }
    all.sort_by_key(|d| d.name);
    all
}

/// Every registered scheme, sorted.
pub fn schemes() -> Vec<&'static str> {
    let mut s: Vec<&'static str> = transports()
        .iter()
        .flat_map(|d| d.schemes.iter().copied())
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// The transport serving `scheme` (case-insensitive): the registered descriptor that lists it
/// among its [`schemes`](TransportDescriptor::schemes). Nothing else resolves: `redis+foo` is
/// not served by a transport that lists only `redis`.
pub fn lookup(scheme: &str) -> Result<&'static TransportDescriptor> {
    let scheme = scheme.to_ascii_lowercase();
    if let Some(d) = transports().into_iter().find(|d| d.serves(&scheme)) {
        return Ok(d);
    }
    let available = schemes();
    let available = if available.is_empty() {
        "none (enable a transport feature of the `kombu` crate, or call \
         kombu::install_default_transports())"
            .to_owned()
    } else {
        available.join(", ")
    };
    let mut message = format!("no transport for scheme {scheme:?}; available: {available}");
    if let Some(feature) = hinted_feature(&scheme) {
        message.push_str(&format!(
            "; enable the `{feature}` feature of the `kombu` crate to use {scheme}://"
        ));
    }
    Err(Error::new(ErrorKind::UnknownTransport, message).with_context("scheme", scheme))
}

/// The transport for a URL.
pub fn lookup_url(url: &BrokerUrl) -> Result<&'static TransportDescriptor> {
    lookup(url.scheme())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(_: ConnectOptions) -> ConnectFuture {
        Box::pin(async { Err(Error::unsupported("a test descriptor")) })
    }

    /// Stand-ins for the Redis transport and the lapin AMQP driver, as they declare themselves.
    static REDIS: TransportDescriptor = TransportDescriptor::new("test-redis", refuse)
        .schemes(&["redis", "rediss", "redis+socket", "socket"])
        .kombu_feature("redis");
    static AMQP: TransportDescriptor = TransportDescriptor::new("test-amqp", refuse)
        .schemes(&["amqp", "amqps", "pyamqp"])
        .kombu_feature("amqp");
    /// What the `kombu` facade knows of them, and of the amiquip driver (not registered here).
    static HINTS: &[FeatureHint] = &[
        FeatureHint::new("redis", &["redis", "rediss", "redis+socket", "socket"]),
        FeatureHint::new("amqp", &["amqp", "amqps", "pyamqp"]),
        FeatureHint::new("amqp-amiquip", &["amqp+amiquip", "pyamqp+amiquip"]),
    ];

    fn setup() {
        register(&REDIS);
        register(&AMQP);
        add_feature_hints(HINTS);
        add_feature_hints(HINTS);
    }

    #[test]
    fn the_builder_fills_every_field() {
        assert_eq!(REDIS.name, "test-redis");
        assert_eq!(REDIS.schemes.len(), 4);
        assert_eq!(REDIS.kombu_feature, Some("redis"));
        assert_eq!(REDIS.description, "");
        assert_eq!(REDIS.capabilities, Capabilities::NONE);
        assert!(REDIS.serves("REDIS+Socket"));
    }

    #[test]
    fn a_declared_alias_resolves() {
        setup();
        assert!(std::ptr::eq(lookup("redis+socket").unwrap(), &REDIS));
        assert!(std::ptr::eq(lookup("Redis+Socket").unwrap(), &REDIS));
        assert!(std::ptr::eq(lookup("pyamqp").unwrap(), &AMQP));
    }

    #[test]
    fn an_undeclared_plus_scheme_is_unknown() {
        setup();
        let err = lookup("redis+foo").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownTransport);
        assert!(
            err.to_string().contains("no transport for scheme \"redis+foo\""),
            "{err}"
        );
        assert!(
            !err.to_string().contains("feature"),
            "no hint for an unknown scheme: {err}"
        );
    }

    #[test]
    fn a_driver_alias_without_its_driver_names_the_feature_not_the_prefix() {
        setup();
        for scheme in ["amqp+amiquip", "pyamqp+amiquip"] {
            let err = lookup(scheme).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnknownTransport);
            assert!(
                err.to_string()
                    .contains("enable the `amqp-amiquip` feature of the `kombu` crate"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_schemes_list_what_is_available() {
        setup();
        let err = lookup("gopher").unwrap_err();
        assert!(
            err.to_string().contains("no transport for scheme \"gopher\""),
            "{err}"
        );
        assert!(err.to_string().contains("redis+socket"), "{err}");
    }
}
