//! `cargo xtask bench`: kombu-rs next to Python Kombu and a raw channel, per
//! transport, written to `docs/BENCHMARKS.md`.
//!
//! The benchmarks are organised in [`GROUPS`]: one group per transport, each
//! running up to three entries with the same workload:
//!
//! * kombu-rs: `kombu --url <url> bench`, the `bench` command of the `kombu`
//!   CLI (crate `kombu-cli`, built in release mode);
//! * the raw baseline (optional): `kombu-bench <name> --url <url>`, the same
//!   message flow over a bare driver without Kombu, i.e. the ceiling (the
//!   bench-only package `kombu-bench`, built in release mode);
//! * Python Kombu: `tests/python/bench_kombu.py --url <python url>`;
//! * batches: kombu-rs and the raw baseline again, publishing in batches of
//!   `--batch` messages (`kombu bench --batch N`: `Producer::batch`; the raw
//!   drivers pipeline N sends, then await them). Python Kombu has no batch
//!   API, so batch publishing is compared with its one-at-a-time publish.
//!
//! Adding a transport (redis, amqp, ...) means adding one [`BenchGroup`];
//! server-backed ones reuse [`Provision::Server`] from the test matrix to get a
//! throwaway broker, file-backed ones [`Provision::InProcess`] with a
//! `{data_dir}` URL. A slow transport can cap the workload of its group
//! ([`BenchGroup::max_messages`]), the same cap for every entry.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::backends::Provision;
use crate::cli::{positive, Args};
use crate::util::{
    self, cargo, describe, fail, probe, run_capture_stdout, run_streaming, status_text, Error, Result,
};
use crate::venv::{self, Venv};

/// Help text of the subcommand.
pub(crate) const USAGE: &str = "\
cargo xtask bench [--messages N] [--latency-samples M] [--size BYTES] [--rounds R]
                  [--batch N] [--groups memory,redis,...]

Ensures the Python venv .venv (Kombu from tests/python/requirements.txt), builds
the kombu CLI and kombu-bench in release mode, runs kombu-rs (`kombu bench`),
the raw baseline (`kombu-bench`) and Python Kombu on the same workload for every
transport group, prints the results and writes docs/BENCHMARKS.md.

Options:
  --messages N          messages published then consumed (default 100000;
                        groups of slow transports cap it, e.g. sqlite at 5000)
  --latency-samples M   publish→receive round trips for p50/p99 (default 2000;
                        capped likewise, e.g. sqlite at 1000)
  --size BYTES          approximate serialized JSON body size (default 100)
  --rounds R            run every entry of a group R times, interleaved
                        (kombu-rs, raw, Python, then again), and report the
                        median of each number (default 3)
  --batch N             also run kombu-rs and the raw baseline publishing in
                        batches of N (default 100; 1 leaves the batch entries out)
  --groups a,b          run only these groups (memory, sqlite, redis, amqp,
                        amqp-noconfirm, zookeeper, mongodb, sqs); the report then
                        goes to target/bench-<groups>.md, and docs/BENCHMARKS.md
                        is left as it is";

/// Where the report goes, relative to the workspace root.
const REPORT: &str = "docs/BENCHMARKS.md";
/// The Python side of the benchmark, relative to the workspace root.
const PYTHON_BENCH: &str = "tests/python/bench_kombu.py";

/// The workload parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    messages: u64,
    latency_samples: u64,
    size: u64,
    /// Interleaved repetitions of every entry; the report shows medians.
    rounds: u64,
    /// Messages per batch of the batch entries (1: no batch entries).
    batch: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            messages: 100_000,
            latency_samples: 2_000,
            size: 100,
            rounds: 3,
            batch: 100,
        }
    }
}

impl Options {
    /// The workload flags shared by every entry (the rounds are the xtask's own).
    fn flags(&self) -> Vec<String> {
        vec![
            "--messages".into(),
            self.messages.to_string(),
            "--latency-samples".into(),
            self.latency_samples.to_string(),
            "--size".into(),
            self.size.to_string(),
        ]
    }
}

/// The options, and the groups asked for with `--groups` (empty: all).
fn parse_options(mut args: Args) -> Result<(Options, Vec<String>)> {
    let mut options = Options::default();
    let mut groups = Vec::new();
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--messages" => options.messages = positive(&args.value(&flag)?, &flag)?,
            "--latency-samples" => options.latency_samples = positive(&args.value(&flag)?, &flag)?,
            "--size" => options.size = positive(&args.value(&flag)?, &flag)?,
            "--rounds" => options.rounds = positive(&args.value(&flag)?, &flag)?,
            "--batch" => options.batch = positive(&args.value(&flag)?, &flag)?,
            "--groups" => {
                for name in args
                    .value(&flag)?
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                {
                    if !GROUPS.iter().any(|g| g.transport == name) {
                        let known: Vec<&str> = GROUPS.iter().map(|g| g.transport).collect();
                        return fail(format!(
                            "--groups: no group {name:?} (there are: {})",
                            known.join(", ")
                        ));
                    }
                    groups.push(name.to_owned());
                }
            }
            _ => return args.unknown(&flag),
        }
    }
    Ok((options, groups))
}

/// One transport's benchmarks.
#[derive(Debug)]
struct BenchGroup {
    /// Short transport name, used in progress lines (`memory`).
    transport: &'static str,
    /// Heading of its section in the report.
    title: &'static str,
    /// How to get the broker; its URL is what kombu-rs gets.
    provision: Provision,
    /// `kombu-bench <name>`, if the transport has a raw counterpart.
    baseline: Option<&'static str>,
    /// The Python Kombu URL for a kombu-rs URL (they differ for e.g. SQLAlchemy).
    python_url: fn(&str) -> String,
    /// At most this many messages for every entry of the group (a slow
    /// transport would otherwise dominate the run time).
    max_messages: Option<u64>,
    /// At most this many latency samples for every entry of the group.
    max_latency_samples: Option<u64>,
    /// Appended to the provisioned URL for every entry (`?confirm_publish=false`).
    url_query: &'static str,
}

impl BenchGroup {
    /// The workload of this group: `options` with the group's caps applied.
    fn workload(&self, options: &Options) -> Options {
        let cap = |value: u64, max: Option<u64>| max.map_or(value, |max| value.min(max));
        Options {
            messages: cap(options.messages, self.max_messages),
            latency_samples: cap(options.latency_samples, self.max_latency_samples),
            size: options.size,
            rounds: options.rounds,
            batch: options.batch,
        }
    }
}

/// The Python Kombu URL is the kombu-rs one.
fn same_url(url: &str) -> String {
    url.to_owned()
}

/// Python Kombu's SQLAlchemy URL for a file next to the kombu-rs database:
/// `sqlite:///dir/bench.db` → `sqla+sqlite:////dir/bench-py.db` (SQLAlchemy
/// spells an absolute path with four slashes). A separate file, so neither run
/// sees the other's rows.
fn sqla_url(url: &str) -> String {
    let path = Path::new(url.strip_prefix("sqlite://").unwrap_or(url));
    format!("sqla+sqlite:///{}", path.with_file_name("bench-py.db").display())
}

/// Python Kombu's SQS URL: the kombu-rs URL without its query (Kombu's SQS transport takes
/// its options from `transport_options` only; its defaults match the region used here).
fn without_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// Every benchmark group, in report order.
static GROUPS: &[BenchGroup] = &[
    BenchGroup {
        transport: "memory",
        title: "memory — in-process transport (`memory://`)",
        provision: Provision::InProcess { url: "memory://" },
        baseline: Some("mpsc"),
        python_url: same_url,
        max_messages: None,
        max_latency_samples: None,
        url_query: "",
    },
    BenchGroup {
        transport: "sqlite",
        title: "sqlite — embedded database file (`sqlite://`; Python: `sqla+sqlite://`)",
        provision: Provision::InProcess {
            url: "sqlite://{data_dir}/bench.db",
        },
        baseline: None,
        python_url: sqla_url,
        // Every publish and ack is a transaction on both sides; Python's
        // SQLAlchemy transport manages a few hundred per second.
        max_messages: Some(5_000),
        max_latency_samples: Some(1_000),
        url_query: "",
    },
    BenchGroup {
        transport: "redis",
        title: "redis — a throwaway redis-server on loopback (`redis://`)",
        provision: Provision::Server(crate::backends::REDIS_SERVER),
        baseline: Some("redis"),
        python_url: same_url,
        // One round trip per publish and per ack on every side.
        max_messages: Some(20_000),
        max_latency_samples: Some(1_000),
        url_query: "",
    },
    BenchGroup {
        transport: "amqp",
        title: "amqp — a throwaway RabbitMQ node on loopback, every publish confirmed \
                (`amqp://…?confirm_publish=true`; prefetch 100)",
        provision: Provision::Server(crate::backends::RABBITMQ_SERVER),
        baseline: Some("lapin"),
        python_url: same_url,
        max_messages: Some(20_000),
        max_latency_samples: Some(1_000),
        url_query: "?confirm_publish=true",
    },
    BenchGroup {
        transport: "amqp-noconfirm",
        title: "amqp without publisher confirms (`amqp://…?confirm_publish=false`; prefetch 100)",
        provision: Provision::Server(crate::backends::RABBITMQ_SERVER),
        baseline: Some("lapin"),
        python_url: same_url,
        max_messages: Some(20_000),
        max_latency_samples: Some(1_000),
        url_query: "?confirm_publish=false",
    },
    BenchGroup {
        transport: "zookeeper",
        title: "zookeeper — a throwaway standalone ZooKeeper on loopback (`zookeeper://`)",
        provision: Provision::Server(crate::backends::ZOOKEEPER_SERVER),
        baseline: None,
        python_url: same_url,
        // Every publish and ack is a quorum write (fsynced); Python Kombu's consumer polls
        // once a second when its queue is empty, so its latency samples are slow.
        max_messages: Some(5_000),
        max_latency_samples: Some(200),
        url_query: "",
    },
    BenchGroup {
        transport: "mongodb",
        title: "mongodb — a throwaway FerretDB (MongoDB-wire, SQLite files) on loopback (`mongodb://`)",
        provision: Provision::Server(crate::backends::FERRETDB_SERVER),
        baseline: None,
        python_url: same_url,
        // Every publish and ack is a SQLite write behind FerretDB; Python Kombu's consumer
        // polls once a second when its queue is empty.
        max_messages: Some(2_000),
        max_latency_samples: Some(200),
        url_query: "",
    },
    BenchGroup {
        transport: "sqs",
        title: "sqs — a throwaway moto server on loopback (`sqs://`; SigV4-signed HTTP as to AWS; \
                moto serves a few hundred requests per second)",
        provision: Provision::Server(crate::backends::MOTO_SERVER),
        baseline: None,
        python_url: without_query,
        max_messages: Some(1_000),
        max_latency_samples: Some(100),
        url_query: "",
    },
];

/// Which entry of a group a result is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    KombuRs,
    Baseline,
    Python,
    /// kombu-rs publishing in batches.
    KombuRsBatch,
    /// The raw baseline publishing in batches.
    BaselineBatch,
}

impl Role {
    fn is_batch(self) -> bool {
        matches!(self, Role::KombuRsBatch | Role::BaselineBatch)
    }
}

/// What each benchmark program prints: one JSON object on stdout.
#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Measurement {
    name: String,
    transport: String,
    messages: u64,
    size: u64,
    publish_msgs_per_s: f64,
    consume_msgs_per_s: f64,
    total_msgs_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

/// The results of one group.
#[derive(Debug)]
struct GroupResult {
    group: &'static BenchGroup,
    /// The workload its entries ran (the run's, capped by the group).
    workload: Options,
    /// One measurement per entry: the median of its rounds, number by number.
    runs: Vec<(Role, Measurement)>,
    /// Every round's measurement per entry, in the order they ran (the spread behind a
    /// median, and the pairs of a round).
    rounds: Vec<(Role, Vec<Measurement>)>,
}

impl GroupResult {
    fn get(&self, role: Role) -> Option<&Measurement> {
        self.runs.iter().find(|(r, _)| *r == role).map(|(_, m)| m)
    }

    /// One number of `role`'s measurements, round by round.
    fn series(&self, role: Role, number: fn(&Measurement) -> f64) -> Option<Vec<f64>> {
        self.rounds
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, rounds)| rounds.iter().map(number).collect())
    }

    /// How many rounds ran.
    fn round_count(&self) -> usize {
        self.rounds.first().map_or(0, |(_, rounds)| rounds.len())
    }

    /// The per-round totals behind the medians (`None` for a single round).
    fn spread(&self) -> Option<String> {
        let rounds = self.round_count();
        if rounds < 2 {
            return None;
        }
        let entries: Vec<String> = self
            .rounds
            .iter()
            .map(|(role, measured)| {
                let name = self.get(*role).map_or("?", |m| m.name.as_str());
                let values: Vec<String> = measured.iter().map(|m| thousands(m.total_msgs_per_s)).collect();
                format!("{name} {}", values.join(" / "))
            })
            .collect();
        Some(format!(
            "total msg/s in each of the {rounds} rounds: {}",
            entries.join("; ")
        ))
    }

    /// The total ratios round by round (`None` for a single round). A round's entries ran back
    /// to back, so each pair saw the same machine; their median resists a slow spell that hit
    /// one entry's rounds more than another's, which the ratio of medians does not.
    fn paired(&self) -> Option<String> {
        if self.round_count() < 2 {
            return None;
        }
        let totals = |role: Role| self.series(role, |m| m.total_msgs_per_s);
        let mut parts = Vec::new();
        if let (Some(rs), Some(py)) = (totals(Role::KombuRs), totals(Role::Python)) {
            parts.push(format!("kombu-rs ÷ Python Kombu {}", paired_series(&rs, &py)));
        }
        if let (Some(raw), Some(rs), Some(name)) =
            (totals(Role::Baseline), totals(Role::KombuRs), self.group.baseline)
        {
            parts.push(format!("raw {name} ÷ kombu-rs {}", paired_series(&raw, &rs)));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "total ratios round by round (a round's entries ran back to back): {}",
                parts.join("; ")
            )
        })
    }

    /// The batch publish ratios round by round (`None` without batch entries or rounds).
    fn paired_batches(&self) -> Option<String> {
        let publish = |role: Role| self.series(role, |m| m.publish_msgs_per_s);
        let batches = publish(Role::KombuRsBatch)?;
        if batches.len() < 2 {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(py) = publish(Role::Python) {
            parts.push(format!(
                "kombu-rs batches ÷ Python Kombu {}",
                paired_series(&batches, &py)
            ));
        }
        if let Some(single) = publish(Role::KombuRs) {
            parts.push(format!(
                "kombu-rs batches ÷ kombu-rs one at a time {}",
                paired_series(&batches, &single)
            ));
        }
        if let (Some(raw), Some(name)) = (publish(Role::BaselineBatch), self.group.baseline) {
            parts.push(format!(
                "raw {name} batches ÷ kombu-rs batches {}",
                paired_series(&raw, &batches)
            ));
        }
        Some(format!("publish ratios round by round: {}", parts.join("; ")))
    }

    /// Ratio lines: kombu-rs ÷ Python Kombu, and raw baseline ÷ kombu-rs.
    fn ratios(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let kombu = self.get(Role::KombuRs);
        if let (Some(rs), Some(py)) = (kombu, self.get(Role::Python)) {
            lines.push(format!("kombu-rs ÷ Python Kombu: {}", ratio_triplet(rs, py)));
        }
        if let (Some(raw), Some(rs), Some(name)) = (self.get(Role::Baseline), kombu, self.group.baseline) {
            lines.push(format!(
                "raw {name} ÷ kombu-rs: {} (how many times faster the raw channel is)",
                ratio_triplet(raw, rs)
            ));
        }
        if let Some(batches) = self.get(Role::KombuRsBatch) {
            let mut parts = Vec::new();
            if let Some(py) = self.get(Role::Python) {
                parts.push(format!(
                    "{} Python Kombu's publish (one at a time: it has no batch API)",
                    ratio(batches.publish_msgs_per_s, py.publish_msgs_per_s)
                ));
            }
            if let Some(single) = kombu {
                parts.push(format!(
                    "{} its own one-at-a-time publish",
                    ratio(batches.publish_msgs_per_s, single.publish_msgs_per_s)
                ));
            }
            if let (Some(raw), Some(name)) = (self.get(Role::BaselineBatch), self.group.baseline) {
                parts.push(format!(
                    "raw {name} batches ÷ kombu-rs batches {}",
                    ratio(raw.publish_msgs_per_s, batches.publish_msgs_per_s)
                ));
            }
            lines.push(format!(
                "kombu-rs publishing in batches of {}: {}",
                self.workload.batch,
                parts.join("; ")
            ));
        }
        lines
    }
}

/// `1.10× / 1.30× / 1.20× (median 1.20×)`: `a ÷ b` round by round.
fn paired_series(a: &[f64], b: &[f64]) -> String {
    let per_round: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    let listed: Vec<String> = per_round.iter().map(|r| format!("{r:.2}×")).collect();
    match median(per_round) {
        Some(m) => format!("{} (median {m:.2}×)", listed.join(" / ")),
        None => "n/a".into(),
    }
}

/// `publish 1.23×, consume+ack 4.56×, total 7.89×` for `a ÷ b`.
fn ratio_triplet(a: &Measurement, b: &Measurement) -> String {
    format!(
        "publish {}, consume+ack {}, total {}",
        ratio(a.publish_msgs_per_s, b.publish_msgs_per_s),
        ratio(a.consume_msgs_per_s, b.consume_msgs_per_s),
        ratio(a.total_msgs_per_s, b.total_msgs_per_s)
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

/// Runs the subcommand.
pub(crate) fn run(args: Args) -> Result<bool> {
    let (options, only) = parse_options(args)?;
    let root = util::workspace_root();

    let venv = venv::ensure_bench_venv(&root, "bench")?;

    println!("bench: building the kombu CLI and the raw baselines (release)…");
    let mut build = cargo(&root);
    build.args(["build", "--release", "-p", "kombu-cli", "-p", "kombu-bench"]);
    let status = run_streaming(&mut build)?;
    if !status.success() {
        return fail(format!("`{}` failed ({})", describe(&build), status_text(status)));
    }
    let release = util::target_dir(&root).join("release");
    let binary = |name: &str| release.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let bins = Binaries {
        kombu: binary("kombu"),
        baseline: binary("kombu-bench"),
    };
    for bin in [&bins.kombu, &bins.baseline] {
        if !bin.is_file() {
            return fail(format!("{} is missing after the build", bin.display()));
        }
    }

    let mut results = Vec::new();
    for group in GROUPS {
        if only.is_empty() || only.iter().any(|name| name == group.transport) {
            results.push(run_group(&root, group, &options, &bins, &venv)?);
        }
    }

    println!();
    for result in &results {
        println!("{}", terminal_table(result));
    }

    let machine = Machine::probe(&root, &venv);
    let report = markdown(&options, &machine, &util::utc_now(), &results);
    let path = if only.is_empty() {
        root.join(REPORT)
    } else {
        // A partial run must not replace the full report.
        util::target_dir(&root).join(format!("bench-{}.md", only.join("-")))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(&path, report).map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    println!("bench: wrote {}", path.display());
    Ok(true)
}

/// The release binaries the entries run.
struct Binaries {
    /// The `kombu` CLI (`kombu bench`).
    kombu: PathBuf,
    /// The raw baselines (`kombu-bench <name>`).
    baseline: PathBuf,
}

/// Provisions a group's broker and runs its entries.
fn run_group(
    root: &Path,
    group: &'static BenchGroup,
    options: &Options,
    bins: &Binaries,
    venv: &Venv,
) -> Result<GroupResult> {
    let provisioned = group
        .provision
        .provision(root, &format!("bench-{}", group.transport))?;
    let url = format!("{}{}", provisioned.url, group.url_query);
    let options = &group.workload(options);
    let entry = |role: Role| -> Command {
        let mut command = match role {
            Role::KombuRs | Role::KombuRsBatch => {
                let mut kombu = Command::new(&bins.kombu);
                kombu.args(["--url", &url, "bench"]);
                kombu
            }
            Role::Baseline | Role::BaselineBatch => {
                let mut raw = Command::new(&bins.baseline);
                raw.args([group.baseline.unwrap_or_default(), "--url", &url]);
                raw
            }
            Role::Python => {
                let mut python = Command::new(venv.python());
                python
                    .arg(root.join(PYTHON_BENCH))
                    .args(["--url", &(group.python_url)(&url)]);
                python
            }
        };
        command.args(options.flags());
        if role.is_batch() {
            command.args(["--batch".to_owned(), options.batch.to_string()]);
        }
        if role != Role::Python {
            command.arg("--json");
        }
        command.current_dir(root);
        command
    };
    let mut roles = vec![Role::KombuRs];
    if group.baseline.is_some() {
        roles.push(Role::Baseline);
    }
    roles.push(Role::Python);
    if options.batch > 1 {
        roles.push(Role::KombuRsBatch);
        if group.baseline.is_some() {
            roles.push(Role::BaselineBatch);
        }
    }

    // Interleaved rounds: a slow spell of the machine hits every entry alike instead of one.
    let mut measured: Vec<(Role, Vec<Measurement>)> = roles.iter().map(|r| (*r, Vec::new())).collect();
    for round in 1..=options.rounds {
        for (role, rounds) in &mut measured {
            let mut command = entry(*role);
            println!(
                "bench: {} (round {round}/{}): {}",
                group.transport,
                options.rounds,
                describe(&command)
            );
            let stdout = run_capture_stdout(&mut command)?;
            let mut measurement = parse_measurement(&stdout)
                .map_err(|e| Error::new(format!("`{}`: {e}", describe(&command))))?;
            measurement.name =
                shorten_temp_paths(&measurement.name, &util::target_dir(root).join("xtask-tmp"));
            if role.is_batch() {
                measurement.name = format!("{} — batches of {}", measurement.name, options.batch);
            }
            if measurement.messages != options.messages || measurement.size != options.size {
                println!(
                    "bench: warning: {} reports messages={} size={}, asked for {} and {}",
                    measurement.name, measurement.messages, measurement.size, options.messages, options.size
                );
            }
            println!(
                "bench:   {}: publish {} msg/s, consume+ack {} msg/s, total {} msg/s, p50 {} ms",
                measurement.name,
                thousands(measurement.publish_msgs_per_s),
                thousands(measurement.consume_msgs_per_s),
                thousands(measurement.total_msgs_per_s),
                millis(measurement.latency_p50_ms)
            );
            rounds.push(measurement);
        }
    }
    let runs = measured
        .iter()
        .filter_map(|(role, rounds)| median_measurement(rounds.clone()).map(|m| (*role, m)))
        .collect();
    drop(provisioned);
    Ok(GroupResult {
        group,
        workload: *options,
        runs,
        rounds: measured,
    })
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One measurement whose every number is the median of that number over `rounds` (named and
/// sized as the first round).
fn median_measurement(rounds: Vec<Measurement>) -> Option<Measurement> {
    let pick = |f: fn(&Measurement) -> f64| median(rounds.iter().map(f).collect());
    let first = rounds.first()?;
    Some(Measurement {
        publish_msgs_per_s: pick(|m| m.publish_msgs_per_s)?,
        consume_msgs_per_s: pick(|m| m.consume_msgs_per_s)?,
        total_msgs_per_s: pick(|m| m.total_msgs_per_s)?,
        latency_p50_ms: pick(|m| m.latency_p50_ms)?,
        latency_p99_ms: pick(|m| m.latency_p99_ms)?,
        ..first.clone()
    })
}

/// The last line of `stdout` that is a JSON object, as a [`Measurement`].
fn parse_measurement(stdout: &str) -> Result<Measurement> {
    let Some(line) = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('{'))
    else {
        let shown: String = stdout.trim().chars().take(200).collect();
        return fail(format!("printed no JSON object on stdout (got `{shown}`)"));
    };
    let measurement: Measurement =
        serde_json::from_str(line).map_err(|e| Error::new(format!("unexpected JSON `{line}`: {e}")))?;
    let numbers = [
        measurement.publish_msgs_per_s,
        measurement.consume_msgs_per_s,
        measurement.total_msgs_per_s,
        measurement.latency_p50_ms,
        measurement.latency_p99_ms,
    ];
    if numbers.iter().any(|n| !n.is_finite() || *n < 0.0) {
        return fail(format!("non-finite or negative numbers in `{line}`"));
    }
    Ok(measurement)
}

/// `name` with a per-run temporary directory under `tmp` (in a database URL)
/// written as `<tmp>`, so the report's run names stay short and stable:
/// `kombu-rs sqlite:///…/xtask-tmp/bench-sqlite-42-0/bench.db` →
/// `kombu-rs sqlite://<tmp>/bench.db`.
fn shorten_temp_paths(name: &str, tmp: &Path) -> String {
    let tmp = tmp.display().to_string();
    let Some(start) = name.find(&tmp) else {
        return name.to_owned();
    };
    let rest = &name[start + tmp.len()..];
    // Drop the run's own directory (`/bench-sqlite-42-0`) too.
    let after = rest
        .strip_prefix('/')
        .map_or(rest, |r| r.find('/').map_or("", |i| &r[i..]));
    format!("{}<tmp>{after}", &name[..start])
}

/// `1234567.8` → `1,234,568`.
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Milliseconds with three decimals.
fn millis(value: f64) -> String {
    format!("{value:.3}")
}

/// The table columns.
const COLUMNS: [&str; 6] = [
    "run",
    "publish msg/s",
    "consume+ack msg/s",
    "total msg/s",
    "p50 ms",
    "p99 ms",
];

/// The cells of one row.
fn cells(m: &Measurement) -> [String; 6] {
    [
        m.name.clone(),
        thousands(m.publish_msgs_per_s),
        thousands(m.consume_msgs_per_s),
        thousands(m.total_msgs_per_s),
        millis(m.latency_p50_ms),
        millis(m.latency_p99_ms),
    ]
}

/// A group's results as an aligned text table plus ratio lines.
fn terminal_table(result: &GroupResult) -> String {
    let mut rows = vec![COLUMNS.map(str::to_owned)];
    rows.extend(result.runs.iter().map(|(_, m)| cells(m)));
    let mut out = format!("{}\n", result.group.title);
    for line in crate::util::text_table(&rows) {
        let _ = writeln!(out, "{line}");
    }
    for line in result
        .ratios()
        .into_iter()
        .chain(result.paired())
        .chain(result.paired_batches())
    {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Facts about the machine, for the report.
#[derive(Debug)]
struct Machine {
    nproc: String,
    cpu: String,
    os: String,
    rustc: String,
    python: String,
}

impl Machine {
    fn probe(root: &Path, venv: &Venv) -> Self {
        let unknown = || "unknown".to_owned();
        let nproc = probe(&mut Command::new("nproc"))
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.to_string()))
            .unwrap_or_else(unknown);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(unknown);
        let os = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| format!("{} {}", std::env::consts::OS, release.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_owned());
        let rustc_program: PathBuf = std::env::var_os("RUSTC").map_or_else(|| "rustc".into(), PathBuf::from);
        let rustc = probe(Command::new(rustc_program).arg("-V").current_dir(root)).unwrap_or_else(unknown);
        let python = probe(Command::new(venv.python()).arg("--version")).unwrap_or_else(unknown);
        let kombu = probe(Command::new(venv.python()).args(["-c", "import kombu; print(kombu.__version__)"]))
            .map(|version| format!(", Kombu {version}"))
            .unwrap_or_default();
        Self {
            nproc,
            cpu,
            os,
            rustc,
            python: format!("{python}{kombu}"),
        }
    }
}

/// The whole `docs/BENCHMARKS.md`.
///
/// Its sections are stable: the header sections, then `## Results` with one
/// `### <group title>` per [`BenchGroup`], each a table plus ratio lines.
fn markdown(options: &Options, machine: &Machine, date: &str, results: &[GroupResult]) -> String {
    let Options {
        messages,
        latency_samples,
        size,
        rounds,
        batch,
    } = *options;
    let Options {
        messages: default_messages,
        latency_samples: default_samples,
        size: default_size,
        rounds: default_rounds,
        batch: default_batch,
    } = Options::default();
    let mut md = String::new();
    let _ = write!(
        md,
        "# kombu-rs benchmarks\n\n\
         Throughput and latency of kombu-rs transports next to Python Kombu running the same \
         workload, and next to a raw channel without Kombu (the ceiling).\n\n\
         _Generated by `cargo xtask bench`; edits are overwritten._\n\n\
         ## How to reproduce\n\n\
         ```sh\n\
         cargo xtask bench [--messages N] [--latency-samples M] [--size BYTES] [--rounds R] [--batch N]\n\
         ```\n\n\
         Defaults: {default_messages} messages, {default_samples} latency samples, {default_size}-byte \
         bodies, {default_rounds} rounds, batches of {default_batch}; the flags of this run are \
         under [Run](#run). \
         It creates the Python venv `.venv` with the pinned `tests/python/requirements.txt` if needed, \
         builds the `kombu` CLI and the raw baselines (`cargo build --release -p kombu-cli -p \
         kombu-bench`), and for every transport runs `kombu --url <url> bench`, the raw baseline \
         `kombu-bench <name> --url <url>` (a bare driver, from the bench-only `kombu-bench` \
         package) and \
         `{PYTHON_BENCH} --url <url>`; then kombu-rs and the raw baseline again with `--batch N`, \
         publishing N messages together (kombu-rs: `Producer::batch`, every message still \
         confirmed; raw: N pipelined sends, then their replies), which Python Kombu, having no \
         batch API, is compared with by its one-at-a-time publish. \
         Every entry of a group runs once per round, the entries interleaved (kombu-rs, raw, \
         Python, then again), so a slow spell of the machine falls on all of them; every number \
         in the tables is the median over the rounds, and the ratios are taken between medians. \
         Each group also lists its total ratios round by round, with their median: the entries \
         of a round ran back to back, so each such pair saw the same state of the machine.\n\n\
         ## Run\n\n\
         - Date: {date}\n\
         - Command: `cargo xtask bench --messages {messages} --latency-samples {latency_samples} --size {size} --rounds {rounds} --batch {batch}`\n\n\
         ## Machine\n\n\
         - CPUs (`nproc`): {}\n\
         - CPU model: {}\n\
         - OS: {}\n\
         - Rust: {}\n\
         - Python: {}\n\n\
         ## Workload\n\n\
         - Body: the JSON object `{{\"n\": i, \"pad\": \"xx…\"}}` padded so the serialized JSON is \
         ~{size} bytes; serializer `json`.\n\
         - Publish: declare the direct exchange `bench` and a fresh queue `bench-<uuid>` bound with \
         routing key `bench`, then publish {messages} messages (timed; groups of slow transports \
         publish fewer, the same number on every side, as stated under their heading).\n\
         - Consume+ack: a consumer whose callback acks each message drains the queue until all \
         {messages} messages arrived (timed); on the kombu-rs side that consumer is a \
         `kombu::Worker` (its start is timed too), on the Python side a `Consumer` callback.\n\
         - Total msg/s = messages ÷ (publish seconds + consume seconds).\n\
         - Latency: {latency_samples} round trips, each publishing one message that carries its send \
         time and draining until it arrives; p50 and p99 in milliseconds.\n\
         - Raw baseline: the same bodies through a bare channel with no Kombu layer.\n\n\
         ## Results\n",
        machine.nproc, machine.cpu, machine.os, machine.rustc, machine.python
    );
    for result in results {
        let _ = write!(md, "\n### {}\n\n", result.group.title);
        if result.workload != *options {
            let _ = write!(
                md,
                "Workload of this group: {} messages, {} latency samples, {}-byte bodies.\n\n",
                result.workload.messages, result.workload.latency_samples, result.workload.size
            );
        }
        let _ = writeln!(md, "| {} |", COLUMNS.join(" | "));
        let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|");
        for (_, m) in &result.runs {
            let _ = writeln!(md, "| {} |", cells(m).join(" | "));
        }
        let ratios = result.ratios();
        if !ratios.is_empty() {
            md.push('\n');
            for line in ratios {
                let _ = writeln!(md, "- {line}");
            }
        }
        for line in result
            .spread()
            .into_iter()
            .chain(result.paired())
            .chain(result.paired_batches())
        {
            let _ = writeln!(md, "- {line}");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::new(words.iter().map(|w| (*w).to_owned()).collect())
    }

    fn measurement(name: &str, publish: f64, consume: f64, total: f64) -> Measurement {
        Measurement {
            name: name.into(),
            transport: "memory".into(),
            messages: 10,
            size: 100,
            publish_msgs_per_s: publish,
            consume_msgs_per_s: consume,
            total_msgs_per_s: total,
            latency_p50_ms: 0.0123,
            latency_p99_ms: 0.5,
        }
    }

    fn memory_result() -> GroupResult {
        GroupResult {
            group: &GROUPS[0],
            workload: Options::default(),
            runs: vec![
                (
                    Role::KombuRs,
                    measurement("kombu-rs memory://", 1_000_000.0, 500_000.0, 333_333.3),
                ),
                (
                    Role::Baseline,
                    measurement("raw mpsc", 4_000_000.0, 4_000_000.0, 2_000_000.0),
                ),
                (
                    Role::Python,
                    measurement("Python Kombu 5.7 memory://", 50_000.0, 62_500.0, 27_777.7),
                ),
            ],
            rounds: vec![
                (
                    Role::KombuRs,
                    rounds_of(
                        "kombu-rs memory://",
                        &[1_000_000.0, 900_000.0, 1_100_000.0],
                        &[333_333.3, 300_000.0, 350_000.0],
                    ),
                ),
                (
                    Role::Baseline,
                    rounds_of(
                        "raw mpsc",
                        &[4_000_000.0; 3],
                        &[2_000_000.0, 1_900_000.0, 2_100_000.0],
                    ),
                ),
                (
                    Role::Python,
                    rounds_of(
                        "Python Kombu 5.7 memory://",
                        &[50_000.0, 45_000.0, 55_000.0],
                        &[27_777.7, 27_000.0, 28_000.0],
                    ),
                ),
            ],
        }
    }

    /// One entry's rounds with these publish and total rates.
    fn rounds_of(name: &str, publish: &[f64], totals: &[f64]) -> Vec<Measurement> {
        publish
            .iter()
            .zip(totals)
            .map(|(p, t)| measurement(name, *p, 0.0, *t))
            .collect()
    }

    /// `memory_result` with batch entries.
    fn memory_result_with_batches() -> GroupResult {
        let mut result = memory_result();
        result.runs.push((
            Role::KombuRsBatch,
            measurement(
                "kombu-rs memory:// — batches of 100",
                3_000_000.0,
                500_000.0,
                400_000.0,
            ),
        ));
        result.runs.push((
            Role::BaselineBatch,
            measurement("raw mpsc — batches of 100", 6_000_000.0, 4_000_000.0, 2_400_000.0),
        ));
        result.rounds.push((
            Role::KombuRsBatch,
            rounds_of("b", &[3_000_000.0, 2_700_000.0, 3_300_000.0], &[400_000.0; 3]),
        ));
        result.rounds.push((
            Role::BaselineBatch,
            rounds_of("rb", &[6_000_000.0, 5_400_000.0, 6_600_000.0], &[2_400_000.0; 3]),
        ));
        result
    }

    #[test]
    fn medians_are_taken_number_by_number() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let mut slow_publish = measurement("kombu-rs memory://", 100.0, 900.0, 90.0);
        slow_publish.latency_p50_ms = 3.0;
        let rounds = vec![
            measurement("kombu-rs memory://", 300.0, 100.0, 75.0),
            slow_publish,
            measurement("kombu-rs memory://", 200.0, 200.0, 100.0),
        ];
        let m = median_measurement(rounds).expect("three rounds");
        assert_eq!(
            (m.publish_msgs_per_s, m.consume_msgs_per_s, m.total_msgs_per_s),
            (200.0, 200.0, 90.0)
        );
        assert_eq!(m.latency_p50_ms, 0.0123);
        assert_eq!(m.name, "kombu-rs memory://");
        assert!(median_measurement(Vec::new()).is_none());
    }

    #[test]
    fn parses_options() -> Result<()> {
        assert_eq!(parse_options(args(&[]))?, (Options::default(), Vec::new()));
        let o = parse_options(args(&[
            "--messages",
            "20",
            "--latency-samples=5",
            "--size",
            "64",
            "--rounds",
            "1",
            "--batch",
            "50",
            "--groups",
            "redis,amqp",
        ]))?;
        assert_eq!(
            o,
            (
                Options {
                    messages: 20,
                    latency_samples: 5,
                    size: 64,
                    rounds: 1,
                    batch: 50,
                },
                vec!["redis".to_owned(), "amqp".to_owned()]
            )
        );
        assert!(parse_options(args(&["--groups", "redis,kafka"])).is_err());
        assert!(parse_options(args(&["--batch", "0"])).is_err());
        assert!(parse_options(args(&["--rounds", "0"])).is_err());
        assert!(parse_options(args(&["--messages", "lots"])).is_err());
        assert!(parse_options(args(&["--size", "0"])).is_err());
        assert!(parse_options(args(&["--url", "x"])).is_err());
        Ok(())
    }

    #[test]
    fn parses_measurements() -> Result<()> {
        let stdout =
            "warming up\n{\"name\": \"kombu-rs memory://\", \"transport\": \"memory\", \"messages\": 10, \
                      \"size\": 100, \"publish_msgs_per_s\": 1e6, \"consume_msgs_per_s\": 5e5, \
                      \"total_msgs_per_s\": 333333.3, \"latency_p50_ms\": 0.0123, \"latency_p99_ms\": 0.5}\n";
        let m = parse_measurement(stdout)?;
        assert_eq!(m, measurement("kombu-rs memory://", 1e6, 5e5, 333_333.3));
        assert!(parse_measurement("nothing here").is_err());
        assert!(parse_measurement("{\"name\": \"x\"}").is_err());
        let negative = stdout.replace("1e6", "-1");
        assert!(parse_measurement(&negative).is_err());
        // What `kombu bench --json` prints: the fields above and more, which are ignored.
        let cli = "{\"name\":\"kombu-rs memory://\",\"transport\":\"memory\",\"url\":\"memory://\",\
                   \"messages\":10,\"size\":100,\"producers\":1,\"consumers\":1,\"prefetch\":100,\
                   \"latency_samples\":20,\"publish_s\":0.00001,\"consume_s\":0.00002,\
                   \"publish_msgs_per_s\":1e6,\"consume_msgs_per_s\":5e5,\"total_msgs_per_s\":333333.3,\
                   \"latency_p50_ms\":0.0123,\"latency_p99_ms\":0.5,\"latency_max_ms\":0.9}";
        assert_eq!(
            parse_measurement(cli)?,
            measurement("kombu-rs memory://", 1e6, 5e5, 333_333.3)
        );
        Ok(())
    }

    #[test]
    fn temp_paths_are_shortened_in_names() {
        let tmp = Path::new("/w/target/xtask-tmp");
        assert_eq!(
            shorten_temp_paths(
                "kombu-rs sqlite:///w/target/xtask-tmp/bench-sqlite-42-0/bench.db",
                tmp
            ),
            "kombu-rs sqlite://<tmp>/bench.db"
        );
        assert_eq!(
            shorten_temp_paths(
                "Python Kombu 5.7 sqla+sqlite:////w/target/xtask-tmp/bench-sqlite-42-0/bench-py.db",
                tmp
            ),
            "Python Kombu 5.7 sqla+sqlite:///<tmp>/bench-py.db"
        );
        assert_eq!(
            shorten_temp_paths("kombu-rs memory://", tmp),
            "kombu-rs memory://"
        );
    }

    #[test]
    fn groups_cap_the_workload_and_map_urls() {
        let sqlite = GROUPS.iter().find(|g| g.transport == "sqlite");
        let Some(sqlite) = sqlite else {
            panic!("no sqlite group");
        };
        let capped = sqlite.workload(&Options::default());
        assert_eq!(
            (capped.messages, capped.latency_samples, capped.size),
            (5_000, 1_000, 100)
        );
        let small = Options {
            messages: 10,
            latency_samples: 5,
            size: 64,
            rounds: 2,
            batch: 10,
        };
        assert_eq!(sqlite.workload(&small), small);
        assert_eq!(GROUPS[0].workload(&Options::default()), Options::default());
        assert_eq!(
            (sqlite.python_url)("sqlite:///tmp/x/bench.db"),
            "sqla+sqlite:////tmp/x/bench-py.db"
        );
        assert_eq!((GROUPS[0].python_url)("memory://"), "memory://");
    }

    #[test]
    fn formats_numbers_and_ratios() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(0.0), "0");
        assert_eq!(ratio(10.0, 4.0), "2.50×");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        let ratios = memory_result().ratios();
        assert_eq!(
            ratios[0],
            "kombu-rs ÷ Python Kombu: publish 20.00×, consume+ack 8.00×, total 12.00×"
        );
        assert!(ratios[1].starts_with("raw mpsc ÷ kombu-rs: publish 4.00×, consume+ack 8.00×, total 6.00×"));
        assert_eq!(
            memory_result().paired().as_deref(),
            Some(
                "total ratios round by round (a round's entries ran back to back): \
                 kombu-rs ÷ Python Kombu 12.00× / 11.11× / 12.50× (median 12.00×); \
                 raw mpsc ÷ kombu-rs 6.00× / 6.33× / 6.00× (median 6.00×)"
            )
        );
        assert_eq!(paired_series(&[2.0, 3.0], &[1.0, 0.0]), "2.00× (median 2.00×)");
        assert_eq!(memory_result().paired_batches(), None);

        let batches = memory_result_with_batches();
        assert_eq!(
            batches.ratios()[2],
            "kombu-rs publishing in batches of 100: 60.00× Python Kombu's publish (one at a time: \
             it has no batch API); 3.00× its own one-at-a-time publish; raw mpsc batches ÷ kombu-rs batches 2.00×"
        );
        assert_eq!(
            batches.paired_batches().as_deref(),
            Some(
                "publish ratios round by round: kombu-rs batches ÷ Python Kombu 60.00× / 60.00× / \
                 60.00× (median 60.00×); kombu-rs batches ÷ kombu-rs one at a time 3.00× / 3.00× / \
                 3.00× (median 3.00×); raw mpsc batches ÷ kombu-rs batches 2.00× / 2.00× / 2.00× \
                 (median 2.00×)"
            )
        );
    }

    #[test]
    fn renders_tables() {
        let text = terminal_table(&memory_result());
        assert!(
            text.contains("run                        | publish msg/s |"),
            "{text}"
        );
        assert!(
            text.contains("kombu-rs memory://         |     1,000,000 |"),
            "{text}"
        );
        let machine = Machine {
            nproc: "2".into(),
            cpu: "Test CPU".into(),
            os: "linux 6".into(),
            rustc: "rustc 1.95.0".into(),
            python: "Python 3.11.7, Kombu 5.7.0".into(),
        };
        let sqlite_result = GroupResult {
            group: &GROUPS[1],
            workload: GROUPS[1].workload(&Options::default()),
            runs: vec![(
                Role::KombuRs,
                measurement("kombu-rs sqlite:///tmp/bench.db", 2_000.0, 2_000.0, 1_000.0),
            )],
            rounds: vec![(Role::KombuRs, rounds_of("s", &[2_000.0], &[1_000.0]))],
        };
        let md = markdown(
            &Options::default(),
            &machine,
            "2026-01-02 03:04 UTC",
            &[memory_result_with_batches(), sqlite_result],
        );
        for needle in [
            "# kombu-rs benchmarks\n",
            "## How to reproduce\n",
            "cargo xtask bench",
            "- Date: 2026-01-02 03:04 UTC\n",
            "- CPUs (`nproc`): 2\n",
            "- CPU model: Test CPU\n",
            "## Workload\n",
            "`{\"n\": i, \"pad\": \"xx…\"}`",
            "## Results\n\n### memory — in-process transport (`memory://`)\n\n| run | publish msg/s |",
            "| kombu-rs memory:// | 1,000,000 | 500,000 | 333,333 | 0.012 | 0.500 |\n",
            "- kombu-rs ÷ Python Kombu: publish 20.00×",
            "- total msg/s in each of the 3 rounds: kombu-rs memory:// 333,333 / 300,000 / 350,000; raw mpsc 2,000,000 / 1,900,000 / 2,100,000; Python Kombu 5.7 memory:// 27,778 / 27,000 / 28,000; kombu-rs memory:// — batches of 100 400,000 / 400,000 / 400,000; raw mpsc — batches of 100 2,400,000 / 2,400,000 / 2,400,000\n",
            "--size 100 --rounds 3 --batch 100`",
            "| kombu-rs memory:// — batches of 100 | 3,000,000 |",
            "- kombu-rs publishing in batches of 100: 60.00×",
            "- publish ratios round by round: kombu-rs batches ÷ Python Kombu 60.00×",
            "`kombu --url <url> bench`",
            "Workload of this group: 5000 messages, 1000 latency samples, 100-byte bodies.\n\n| run |",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }
}
