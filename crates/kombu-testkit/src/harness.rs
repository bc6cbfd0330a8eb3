//! Runs behaviours, prints libtest-style lines, writes the JSON report.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kombu::{Capabilities, Connection};

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
    /// Stable name, used for filtering and in reports.
    pub name: &'static str,
    /// `Err(reason)` when the transport's capabilities rule the behaviour out.
    pub requires: fn(&Capabilities) -> Result<(), &'static str>,
    /// The test.
    pub run: fn(Ctx) -> BoxTest,
}

/// Everything a behaviour needs: the URL, the capabilities, unique names.
#[derive(Debug, Clone)]
pub struct Ctx {
    url: String,
    caps: Capabilities,
    id: String,
}

impl Ctx {
    /// A context for `url`.
    pub fn new(url: &str, caps: Capabilities) -> Self {
        Ctx {
            url: url.to_owned(),
            caps,
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        }
    }

    /// A unique name for this test run: `base-<id>`.
    pub fn name(&self, base: &str) -> String {
        format!("kt-{base}-{}", self.id)
    }

    /// The transport's capabilities.
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

    /// How long to wait to conclude that nothing arrives.
    pub fn quiet_period(&self) -> Duration {
        Duration::from_millis(400)
    }

    /// How long to wait for something that should arrive.
    pub fn patience(&self) -> Duration {
        Duration::from_secs(10)
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

#[derive(Debug)]
enum Outcome {
    Passed(Duration),
    Failed(String),
    Skipped(&'static str),
}

/// Register `descriptor` and run the suite for it against `KOMBU_TEST_URL` (or `default_url`); exit code 0 when
/// nothing failed. Command-line arguments that do not start with `-` filter behaviours by
/// substring.
pub fn run_main(
    descriptor: &'static kombu::transport::registry::TransportDescriptor,
    default_url: &str,
) -> ExitCode {
    kombu::transport::registry::register(descriptor);
    let backend = descriptor.name;
    if std::env::var_os("KOMBU_TESTKIT_DEFER").is_some() {
        println!("conformance suite for {backend}: deferred to `cargo xtask test-matrix` (KOMBU_TESTKIT_DEFER is set)");
        return ExitCode::SUCCESS;
    }
    let url = std::env::var("KOMBU_TEST_URL").unwrap_or_else(|_| default_url.to_owned());
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let shown_url = kombu::transport::url::redact_raw(&url);
    // The URL must select the transport under test, or the suite would test another one.
    let selected = kombu::transport::url::parse_failover(&url)
        .and_then(|urls| kombu::transport::registry::lookup_url(&urls[0]));
    match selected {
        Ok(d) if d.name == backend => {}
        Ok(d) => {
            eprintln!(
                "conformance suite for {backend}: {shown_url} selects the {} transport",
                d.name
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("conformance suite for {backend}: cannot use {shown_url}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let caps = descriptor.capabilities;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let all = crate::behaviours::all();
    let total = all.len();
    let selected: Vec<Behaviour> = all
        .into_iter()
        .filter(|b| filters.is_empty() || filters.iter().any(|f| b.name.contains(f.as_str())))
        .collect();
    let filtered_out = total - selected.len();
    println!(
        "\nrunning {} conformance behaviours for {backend} against {}",
        selected.len(),
        shown_url
    );
    let started = Instant::now();
    let mut results: Vec<(&'static str, Outcome)> = Vec::new();
    for b in &selected {
        let outcome = match (b.requires)(&caps) {
            Err(reason) => Outcome::Skipped(reason),
            Ok(()) => {
                let ctx = Ctx::new(&url, caps);
                let t0 = Instant::now();
                let fut = (b.run)(ctx);
                let joined = runtime.block_on(async move {
                    tokio::time::timeout(Duration::from_secs(120), tokio::spawn(fut)).await
                });
                match joined {
                    Err(_) => Outcome::Failed("timed out after 120 s".into()),
                    Ok(Err(join)) => Outcome::Failed(format!("panicked: {join}")),
                    Ok(Ok(Err(Failure(msg)))) => Outcome::Failed(msg),
                    Ok(Ok(Ok(()))) => Outcome::Passed(t0.elapsed()),
                }
            }
        };
        match &outcome {
            Outcome::Passed(d) => println!("test {} ... ok ({} ms)", b.name, d.as_millis()),
            Outcome::Failed(msg) => println!("test {} ... FAILED\n    {msg}", b.name),
            Outcome::Skipped(reason) => println!("test {} ... ignored, {reason}", b.name),
        }
        let _ = std::io::stdout().flush();
        results.push((b.name, outcome));
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    let passed = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Passed(_)))
        .count();
    let failed: Vec<_> = results
        .iter()
        .filter_map(|(n, o)| match o {
            Outcome::Failed(m) => Some((*n, m.clone())),
            _ => None,
        })
        .collect();
    let skipped: Vec<_> = results
        .iter()
        .filter_map(|(n, o)| match o {
            Outcome::Skipped(r) => Some((*n, *r)),
            _ => None,
        })
        .collect();
    let elapsed = started.elapsed();
    if !failed.is_empty() {
        println!("\nfailures:");
        for (n, m) in &failed {
            println!("    {n}: {m}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {} ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        skipped.len(),
        elapsed.as_secs_f64()
    );
    if let Ok(path) = std::env::var("KOMBU_TESTKIT_REPORT") {
        let report = serde_json::json!({
            "backend": backend,
            "passed": passed,
            "failed": failed.len(),
            "skipped": skipped.iter().map(|(n, r)| serde_json::json!({"name": n, "reason": r})).collect::<Vec<_>>(),
            "failures": failed.iter().map(|(n, m)| serde_json::json!({"name": n, "error": m})).collect::<Vec<_>>(),
            "duration_ms": elapsed.as_millis() as u64,
        });
        if let Err(e) = std::fs::write(&path, format!("{report}\n")) {
            eprintln!("cannot write the report to {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
