//! Runs behaviours, prints libtest-style lines, writes the JSON report.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu::transport::registry::TransportDescriptor;
use kombu::{Capabilities, Connection, ConnectionOptions};

/// How long behaviours wait for what should arrive, by default.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(10);

/// A failed check, with a readable explanation.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<kombu::Error> for Failure {
    fn from(e: kombu::Error) -> Self {
        Failure(format!("unexpected error: {e}"))
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Failure(s.to_owned())
    }
}

/// What a behaviour returns.
pub type TestResult = Result<(), Failure>;

/// A boxed behaviour future.
pub type BoxTest = Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// One behaviour of the suite.
pub struct Behaviour {
    /// Stable name, used for filtering, exclusions and in reports.
    pub name: &'static str,
    /// `Err(reason)` when the connection's capabilities rule the behaviour out.
    pub requires: fn(&Capabilities) -> Result<(), &'static str>,
    /// The test.
    pub run: fn(Ctx) -> BoxTest,
}

/// Everything a behaviour needs: the URL, the connection's capabilities, unique names.
#[derive(Debug, Clone)]
pub struct Ctx {
    url: String,
    caps: Capabilities,
    id: String,
    recovery_options: Arc<Vec<(String, String)>>,
    child_exe: Option<PathBuf>,
    patience: Duration,
}

impl Ctx {
    /// A context for `url`, whose connections have capabilities `caps`.
    pub fn new(url: &str, caps: Capabilities) -> Self {
        Ctx {
            url: url.to_owned(),
            caps,
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            recovery_options: Arc::new(Vec::new()),
            child_exe: None,
            patience: DEFAULT_PATIENCE,
        }
    }

    /// A unique name for this test run: `base-<id>`.
    pub fn name(&self, base: &str) -> String {
        format!("kt-{base}-{}", self.id)
    }

    /// The capabilities of a connection to [`url`](Self::url), read after connecting.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// The broker URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the broker.
    pub fn conn(&self) -> Result<Connection, Failure> {
        Ok(Connection::new(&self.url)?)
    }

    /// A new connection with extra transport options (which win over the URL's).
    pub fn conn_with(&self, options: &[(String, String)]) -> Result<Connection, Failure> {
        let mut connection_options = ConnectionOptions::default();
        connection_options
            .transport_options
            .extend(options.iter().cloned());
        Ok(Connection::with_options(&self.url, connection_options)?)
    }

    /// The transport options under which a message taken by a consumer that died comes back
    /// within [`patience`](Self::patience) (see [`Suite::recovery_option`]).
    pub fn recovery_options(&self) -> &[(String, String)] {
        &self.recovery_options
    }

    /// The test binary, when behaviours may start it again as a second process (only under
    /// [`Suite::run`]).
    pub fn child_exe(&self) -> Option<&PathBuf> {
        self.child_exe.as_ref()
    }

    /// How long to wait to conclude that nothing (more) arrives, where no positive control can
    /// stand in for waiting: prefetch limits, and transports without FIFO order.
    pub fn quiet_period(&self) -> Duration {
        Duration::from_millis(400)
    }

    /// How long to wait for something that should arrive, or for a condition that should
    /// come to hold (10 s unless [`Suite::patience`] says otherwise).
    pub fn patience(&self) -> Duration {
        self.patience
    }
}

/// `check!(cond, "message {}", args)`: fail the behaviour unless `cond`.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::Failure(format!($($arg)+)));
        }
    };
}

/// `check_eq!(left, right, "context")`: fail unless equal, showing both.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::Failure(format!("{}: expected {:?}, got {:?}", format!($($arg)+), r, l)));
        }
    }};
}

/// How one behaviour ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed, in this time.
    Passed(Duration),
    /// It failed: why.
    Failed(String),
    /// The connection's capabilities rule it out: the reason.
    Skipped(&'static str),
    /// The transport crate excluded it: the reason it gave.
    Excluded(&'static str),
}

/// One behaviour's result.
#[derive(Debug, Clone)]
pub struct BehaviourResult {
    /// The behaviour.
    pub name: &'static str,
    /// How it ended.
    pub outcome: Outcome,
}

/// What a suite run produced.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The transport's registered name.
    pub backend: &'static str,
    /// The capabilities the behaviours were selected by (the connection's).
    pub capabilities: Capabilities,
    /// One result per behaviour run (filtered-out behaviours are not listed).
    pub results: Vec<BehaviourResult>,
    /// Behaviours left out by the command-line filters.
    pub filtered_out: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl SuiteReport {
    /// The outcome of behaviour `name`, if it was run.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.results.iter().find(|r| r.name == name).map(|r| &r.outcome)
    }

    /// The behaviours that passed.
    pub fn passed(&self) -> Vec<&'static str> {
        self.pick(|o| matches!(o, Outcome::Passed(_)))
    }

    /// The behaviours that failed, with their failure.
    pub fn failed(&self) -> Vec<(&'static str, &str)> {
        self.results
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Failed(m) => Some((r.name, m.as_str())),
                _ => None,
            })
            .collect()
    }

    fn pick(&self, f: impl Fn(&Outcome) -> bool) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|r| f(&r.outcome))
            .map(|r| r.name)
            .collect()
    }

    fn reasons(&self, excluded: bool) -> Vec<(&'static str, &'static str)> {
        self.results
            .iter()
            .filter_map(|r| match r.outcome {
                Outcome::Skipped(reason) if !excluded => Some((r.name, reason)),
                Outcome::Excluded(reason) if excluded => Some((r.name, reason)),
                _ => None,
            })
            .collect()
    }

    /// The JSON report `cargo xtask test-matrix` reads.
    pub fn to_json(&self) -> serde_json::Value {
        let named = |list: Vec<(&str, &str)>, key: &str| {
            list.into_iter()
                .map(|(n, r)| serde_json::json!({"name": n, key: r}))
                .collect::<Vec<_>>()
        };
        let capabilities: serde_json::Map<String, serde_json::Value> = self
            .capabilities
            .rows()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
            .collect();
        serde_json::json!({
            "backend": self.backend,
            "passed": self.passed().len(),
            "failed": self.failed().len(),
            "skipped": named(self.reasons(false), "reason"),
            "excluded": named(self.reasons(true), "reason"),
            "failures": named(self.failed(), "error"),
            "capabilities": capabilities,
            "duration_ms": self.elapsed.as_millis() as u64,
        })
    }
}

/// The conformance suite for one transport: what [`conformance_main!`](crate::conformance_main)
/// builds. Exclusions name behaviours the transport cannot pass although its capabilities
/// select them, each with the reason; they are reported, never silent.
///
/// ```no_run
/// use kombu::transport::registry::TransportDescriptor;
///
/// // The `main` of a harness = false test target, spelled out.
/// fn main_of(descriptor: &'static TransportDescriptor) -> std::process::ExitCode {
///     kombu_testkit::Suite::new(descriptor, "toy://")
///         .exclude("prefetch_bounds_in_flight", "the toy broker ignores prefetch")
///         .run()
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Suite {
    descriptor: &'static TransportDescriptor,
    default_url: String,
    exclusions: Vec<(&'static str, &'static str)>,
    recovery_options: Vec<(String, String)>,
    patience: Duration,
}

impl Suite {
    /// The suite for `descriptor`, against `KOMBU_TEST_URL` or else `default_url`.
    pub fn new(descriptor: &'static TransportDescriptor, default_url: impl Into<String>) -> Self {
        Suite {
            descriptor,
            default_url: default_url.into(),
            exclusions: Vec::new(),
            recovery_options: Vec::new(),
            patience: DEFAULT_PATIENCE,
        }
    }

    /// How long behaviours wait for a message that should arrive, or a condition that should
    /// come to hold, before failing (default 10 s).
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Leave behaviour `name` out, for `reason` (printed and reported).
    pub fn exclude(mut self, name: &'static str, reason: &'static str) -> Self {
        self.exclusions.push((name, reason));
        self
    }

    /// A transport option under which the message of a consumer that died without acking is
    /// delivered again within seconds (e.g. a short `visibility_timeout`), for the
    /// crash-safety behaviour. Transports that redeliver at once need none.
    pub fn recovery_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.recovery_options.push((key.into(), value.into()));
        self
    }

    /// The body of a conformance test target's `main`: runs the suite (or, started by a
    /// behaviour as its second process, does that process's part), prints libtest-style
    /// lines, writes the JSON report to `KOMBU_TESTKIT_REPORT` if set; exit code 0 when
    /// nothing failed. Command-line arguments that do not start with `-` filter behaviours by
    /// substring. With `KOMBU_TESTKIT_DEFER` set it defers to the matrix and exits.
    pub fn run(self) -> ExitCode {
        if let Ok(spec) = std::env::var(crate::child::ENV) {
            return crate::child::main(&spec);
        }
        let backend = self.descriptor.name;
        if std::env::var_os("KOMBU_TESTKIT_DEFER").is_some() {
            println!("conformance suite for {backend}: deferred to `cargo xtask test-matrix` (KOMBU_TESTKIT_DEFER is set)");
            return ExitCode::SUCCESS;
        }
        let url = std::env::var("KOMBU_TEST_URL").unwrap_or_else(|_| self.default_url.clone());
        let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
        let child_exe = std::env::current_exe().ok();
        let report = self.run_inner(&url, &filters, child_exe);
        let (report, code) = match report {
            Ok(report) => {
                let code = if report.failed().is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
                (report.to_json(), code)
            }
            Err(setup) => {
                eprintln!("conformance suite for {backend}: {setup}");
                let report = serde_json::json!({
                    "backend": backend,
                    "passed": 0,
                    "failed": 1,
                    "failures": [{"name": "setup", "error": setup}],
                });
                (report, ExitCode::FAILURE)
            }
        };
        if let Ok(path) = std::env::var("KOMBU_TESTKIT_REPORT") {
            if let Err(e) = std::fs::write(&path, format!("{report}\n")) {
                eprintln!("cannot write the report to {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
        code
    }

    /// Run the behaviours whose names contain one of `filters` (all when empty) against
    /// `url`, printing libtest-style lines; `Err` when the suite cannot start (an unknown
    /// exclusion, a URL of another transport, no connection). Behaviours that start a second
    /// process fail here: they need [`run`](Self::run) as the test binary's `main`.
    pub fn run_with(&self, url: &str, filters: &[&str]) -> Result<SuiteReport, String> {
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        self.run_inner(url, &filters, None)
    }

    fn run_inner(
        &self,
        url: &str,
        filters: &[String],
        child_exe: Option<PathBuf>,
    ) -> Result<SuiteReport, String> {
        let backend = self.descriptor.name;
        let all = crate::behaviours::all();
        for (name, _) in &self.exclusions {
            if !all.iter().any(|b| b.name == *name) {
                return Err(format!(
                    "excluded behaviour {name:?} does not exist; the behaviours are: {}",
                    all.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let shown_url = kombu::transport::url::redact_raw(url);
        let registration = self.check_registration(url, &shown_url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
        // Capabilities describe the connection (its options may turn features off), so
        // connect first and select behaviours by what this connection reports.
        let caps = runtime
            .block_on(async {
                let conn = Connection::new(url)?;
                let caps = conn.transport().await?.capabilities();
                conn.close().await?;
                Ok::<_, kombu::Error>(caps)
            })
            .map_err(|e| format!("cannot connect to {shown_url}: {e}"))?;
        let total = all.len();
        let selected: Vec<Behaviour> = all
            .into_iter()
            .filter(|b| filters.is_empty() || filters.iter().any(|f| b.name.contains(f.as_str())))
            .collect();
        let filtered_out = total - selected.len();
        println!(
            "\nrunning {} conformance behaviours for {backend} against {shown_url} ({registration})",
            selected.len(),
        );
        if caps != self.descriptor.capabilities {
            let declared = self.descriptor.capabilities.rows();
            let differences: Vec<String> = caps
                .rows()
                .into_iter()
                .zip(declared)
                .filter(|(now, declared)| now.1 != declared.1)
                .map(|((name, now), (_, declared))| format!("{name}: {now} (descriptor: {declared})"))
                .collect();
            println!("capabilities of this connection: {}", differences.join("; "));
        }
        let recovery_options = Arc::new(self.recovery_options.clone());
        let started = Instant::now();
        let mut results = Vec::new();
        for b in &selected {
            let excluded = self
                .exclusions
                .iter()
                .find(|(name, _)| *name == b.name)
                .map(|(_, reason)| *reason);
            let outcome = match ((b.requires)(&caps), excluded) {
                (Err(reason), _) => Outcome::Skipped(reason),
                (Ok(()), Some(reason)) => Outcome::Excluded(reason),
                (Ok(()), None) => {
                    let mut ctx = Ctx::new(url, caps);
                    ctx.recovery_options = recovery_options.clone();
                    ctx.child_exe = child_exe.clone();
                    ctx.patience = self.patience;
                    run_one(&runtime, b, ctx)
                }
            };
            match &outcome {
                Outcome::Passed(d) => println!("test {} ... ok ({} ms)", b.name, d.as_millis()),
                Outcome::Failed(msg) => println!("test {} ... FAILED\n    {msg}", b.name),
                Outcome::Skipped(reason) => match excluded {
                    None => println!("test {} ... ignored, {reason}", b.name),
                    Some(also) => println!(
                        "test {} ... ignored, {reason} (its exclusion is not needed: {also})",
                        b.name
                    ),
                },
                Outcome::Excluded(reason) => {
                    println!("test {} ... ignored, excluded by the transport: {reason}", b.name)
                }
            }
            let _ = std::io::stdout().flush();
            results.push(BehaviourResult {
                name: b.name,
                outcome,
            });
        }
        runtime.shutdown_timeout(Duration::from_secs(2));
        let report = SuiteReport {
            backend,
            capabilities: caps,
            results,
            filtered_out,
            elapsed: started.elapsed(),
        };
        print_summary(&report);
        Ok(report)
    }

    /// The URL must select this transport, found in the registry without any explicit
    /// registration here (a transport crate submits its descriptor with `inventory`).
    fn check_registration(&self, url: &str, shown_url: &str) -> Result<&'static str, String> {
        let backend = self.descriptor.name;
        // What applications get without registering anything themselves.
        kombu::install_default_transports();
        let urls =
            kombu::transport::url::parse_failover(url).map_err(|e| format!("cannot use {shown_url}: {e}"))?;
        let selected = kombu::transport::registry::lookup_url(&urls[0]).map_err(|e| {
            format!(
                "{shown_url} selects no registered transport ({e}); submit the descriptor with \
                 `kombu_core::inventory::submit! {{ kombu_core::registry::Registration(&DESCRIPTOR) }}`"
            )
        })?;
        if selected.name != backend {
            return Err(format!(
                "{shown_url} selects the {} transport, not {backend}",
                selected.name
            ));
        }
        Ok(if kombu::transport::registry::is_submitted(self.descriptor) {
            "registered through inventory"
        } else {
            "registered explicitly"
        })
    }
}

fn run_one(runtime: &tokio::runtime::Runtime, b: &Behaviour, ctx: Ctx) -> Outcome {
    let t0 = Instant::now();
    let fut = (b.run)(ctx);
    let joined = runtime
        .block_on(async move { tokio::time::timeout(Duration::from_secs(120), tokio::spawn(fut)).await });
    match joined {
        Err(_) => Outcome::Failed("timed out after 120 s".into()),
        Ok(Err(join)) => Outcome::Failed(format!("panicked: {join}")),
        Ok(Ok(Err(Failure(msg)))) => Outcome::Failed(msg),
        Ok(Ok(Ok(()))) => Outcome::Passed(t0.elapsed()),
    }
}

fn print_summary(report: &SuiteReport) {
    let failed = report.failed();
    if !failed.is_empty() {
        println!("\nfailures:");
        for (n, m) in &failed {
            println!("    {n}: {m}");
        }
    }
    let excluded = report.reasons(true);
    if !excluded.is_empty() {
        println!("\nexcluded by the transport:");
        for (n, r) in &excluded {
            println!("    {n}: {r}");
        }
    }
    let ignored = report.reasons(false).len() + excluded.len();
    println!(
        "\ntest result: {}. {} passed; {} failed; {ignored} ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        report.passed().len(),
        failed.len(),
        report.filtered_out,
        report.elapsed.as_secs_f64()
    );
}

/// Run the suite for `descriptor` against `KOMBU_TEST_URL` (or `default_url`), with no
/// exclusions: `Suite::new(descriptor, default_url).run()`.
pub fn run_main(descriptor: &'static TransportDescriptor, default_url: &str) -> ExitCode {
    Suite::new(descriptor, default_url).run()
}
