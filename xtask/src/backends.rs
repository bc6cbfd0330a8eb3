//! The backends of the test matrix and how to provision each one.
//!
//! A backend is a transport (or one driver of it) whose crate has a conformance
//! integration test (driven by `kombu-testkit`, usually named `conformance`). To add one, add a [`Backend`] to [`BACKENDS`]:
//!
//! * transports that need nothing outside the process use
//!   [`Provision::InProcess`] with a fixed URL;
//! * transports that need a real server (redis, rabbitmq, zookeeper, moto SQS,
//!   a mongo emulator, ...) use [`Provision::Server`] with a [`ServerSpec`]:
//!   xtask installs the apt/pip packages if the program is missing, starts a
//!   throwaway server on a free loopback port with a temporary data directory
//!   under `target/xtask-tmp`, waits for the port to accept connections and
//!   tears everything down when the [`Provisioned`] value is dropped.
//!
//! For example (sketch):
//!
//! ```text
//! Backend {
//!     name: "redis",
//!     crate_name: "kombu-redis",
//!     test_name: "conformance",
//!     provision: Provision::Server(ServerSpec {
//!         program: "redis-server",
//!         args: &["--port", "{port}", "--bind", "127.0.0.1", "--dir", "{data_dir}", "--save", ""],
//!         apt: &["redis-server"],
//!         url: "redis://127.0.0.1:{port}/0",
//!         ..ServerSpec::DEFAULT
//!     }),
//! }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    describe, fail, free_loopback_port, probe, run_streaming, status_text, tail_of, wait_for_port, Error,
    Result, TempDir,
};
use crate::venv::Venv;

/// One backend of the test matrix.
#[derive(Debug)]
pub(crate) struct Backend {
    /// Name used on the command line and in reports (`memory`, `redis`, ...).
    pub(crate) name: &'static str,
    /// Crate whose conformance integration test exercises the backend.
    pub(crate) crate_name: &'static str,
    /// That integration test's target name (`conformance`; a crate with two drivers has one
    /// per driver, e.g. `conformance_amiquip`). It runs with `--all-features`, which also
    /// satisfies its `required-features`.
    pub(crate) test_name: &'static str,
    /// How to get a broker URL for it.
    pub(crate) provision: Provision,
}

/// Every backend the matrix knows, in the order it runs them.
pub(crate) static BACKENDS: &[Backend] = &[
    Backend {
        name: "memory",
        crate_name: "kombu-memory",
        test_name: "conformance",
        provision: Provision::InProcess { url: "memory://" },
    },
    // A third-party transport (its own package, unknown to the facade): the proof that a
    // crate outside the workspace's features registers itself and runs the suite.
    Backend {
        name: "toy",
        crate_name: "kombu-toy-transport",
        test_name: "conformance",
        provision: Provision::InProcess {
            url: "toy:///conformance",
        },
    },
    Backend {
        name: "sqlite",
        crate_name: "kombu-sqlite",
        test_name: "conformance",
        provision: Provision::InProcess {
            url: "sqlite://{data_dir}/conformance.db",
        },
    },
    Backend {
        name: "redis",
        crate_name: "kombu-redis",
        test_name: "conformance",
        provision: Provision::Server(REDIS_SERVER),
    },
    Backend {
        name: "sqs",
        crate_name: "kombu-sqs",
        test_name: "conformance",
        provision: Provision::Server(MOTO_SERVER),
    },
    Backend {
        name: "amqp",
        crate_name: "kombu-amqp",
        test_name: "conformance",
        provision: Provision::Server(RABBITMQ_SERVER),
    },
    Backend {
        name: "amqp-amiquip",
        crate_name: "kombu-amqp",
        test_name: "conformance_amiquip",
        provision: Provision::Server(RABBITMQ_SERVER_AMIQUIP),
    },
    Backend {
        name: "zookeeper",
        crate_name: "kombu-zookeeper",
        test_name: "conformance",
        provision: Provision::Server(ZOOKEEPER_SERVER),
    },
    Backend {
        name: "mongodb",
        crate_name: "kombu-mongodb",
        test_name: "conformance",
        provision: Provision::Server(FERRETDB_SERVER),
    },
];

/// A throwaway FerretDB (a MongoDB-wire server; SQLite files in the temp dir) on loopback,
/// built from its Go module and cached under the target directory (see [`crate::ferretdb`]).
/// Short claim deadlines (`visibility_timeout`) keep the crash behaviours fast.
pub(crate) const FERRETDB_SERVER: ServerSpec = ServerSpec {
    program: "ferretdb",
    args: &[
        "--listen-addr=127.0.0.1:{port}",
        "--handler=sqlite",
        "--sqlite-url=file:{data_dir}/",
        "--state-dir={data_dir}",
        "--debug-addr=-",
        "--telemetry=disable",
        "--log-level=warn",
    ],
    build: Some(crate::ferretdb::ensure_built),
    url_env: Some("KOMBU_TEST_MONGODB_URL"),
    url: "mongodb://127.0.0.1:{port}/kombu_conformance",
    ready_timeout: Duration::from_secs(60),
    ..ServerSpec::DEFAULT
};

/// A throwaway standalone ZooKeeper (`../shared/reference/infra.md`): Debian's `zookeeper`
/// jars run by `java` with a `zoo.cfg` of its own (loopback port, data in the temp dir, no
/// admin server). Sessions may be as short as 1 s, so the tests of a consumer that died
/// (its claims go with its session) run fast.
pub(crate) const ZOOKEEPER_SERVER: ServerSpec = ServerSpec {
    program: "java",
    args: &[
        "-cp",
        "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar:{data_dir}",
        "org.apache.zookeeper.server.ZooKeeperServerMain",
        "{config}",
    ],
    config_file: Some(ConfigFile {
        name: "zoo.cfg",
        template: "tickTime=2000\n\
                   dataDir={data_dir}/data\n\
                   clientPort={port}\n\
                   clientPortAddress=127.0.0.1\n\
                   admin.enableServer=false\n\
                   4lw.commands.whitelist=ruok,srvr,stat,mntr\n\
                   minSessionTimeout=1000\n\
                   maxSessionTimeout=60000\n",
    }),
    apt: &["zookeeper"],
    requires: &[
        "/usr/share/java/zookeeper.jar",
        "/usr/share/java/slf4j-log4j12.jar",
        "/usr/share/java/log4j-1.2.jar",
    ],
    url: "zookeeper://127.0.0.1:{port}/kombu-conformance",
    ready_timeout: Duration::from_secs(60),
    ..ServerSpec::DEFAULT
};

/// A throwaway RabbitMQ node (`../shared/reference/infra.md`): its own node name, AMQP port
/// and Erlang distribution port on loopback, its database and logs in the temp dir.
///
/// It runs `/usr/lib/rabbitmq/bin/rabbitmq-server` directly: Debian's `/usr/sbin` wrapper
/// would switch to the `rabbitmq` user, which cannot write the temp dir. The script stays in
/// the foreground and stops the node on SIGTERM. The empty env and config files keep the
/// machine's own `/etc/rabbitmq` settings (and any system node's name) out of the test node.
pub(crate) const RABBITMQ_SERVER: ServerSpec = ServerSpec {
    program: "/usr/lib/rabbitmq/bin/rabbitmq-server",
    env: &[
        ("RABBITMQ_NODENAME", "kombu-test-{port}@localhost"),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1"),
        ("RABBITMQ_NODE_PORT", "{port}"),
        ("RABBITMQ_DIST_PORT", "{aux_port}"),
        ("ERL_EPMD_ADDRESS", "127.0.0.1"),
        ("RABBITMQ_MNESIA_BASE", "{data_dir}/mnesia"),
        ("RABBITMQ_LOG_BASE", "{data_dir}/log"),
        ("RABBITMQ_CONF_ENV_FILE", "{config}"),
        ("RABBITMQ_CONFIG_FILE", "{data_dir}/rabbitmq"),
        ("RABBITMQ_ADVANCED_CONFIG_FILE", "{data_dir}/advanced.config"),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", "{data_dir}/enabled_plugins"),
        ("RABBITMQ_ENABLED_PLUGINS", ""),
    ],
    config_file: Some(ConfigFile {
        name: "rabbitmq-env.conf",
        template: "# kombu-rs test node: settings come from the environment\n",
    }),
    apt: &["rabbitmq-server"],
    url: "amqp://guest:guest@127.0.0.1:{port}//",
    ready_timeout: Duration::from_secs(60),
    ..ServerSpec::DEFAULT
};

/// The same throwaway RabbitMQ node, addressed through kombu-amqp's amiquip driver: its own
/// node per matrix row, so the two drivers' suites never share a broker.
pub(crate) const RABBITMQ_SERVER_AMIQUIP: ServerSpec = ServerSpec {
    url: "amqp+amiquip://guest:guest@127.0.0.1:{port}//",
    ..RABBITMQ_SERVER
};

/// The `openssl` command: the Redis TLS test makes its certificate authority with it.
pub(crate) const OPENSSL: ServerSpec = ServerSpec {
    program: "openssl",
    apt: &["openssl"],
    ..ServerSpec::DEFAULT
};

/// A throwaway redis-server: loopback only, data in the temp dir, append-only file on (so a
/// restart keeps what was published).
pub(crate) const REDIS_SERVER: ServerSpec = ServerSpec {
    program: "redis-server",
    args: &[
        "--port",
        "{port}",
        "--bind",
        "127.0.0.1",
        "--dir",
        "{data_dir}",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--daemonize",
        "no",
    ],
    apt: &["redis-server"],
    url: "redis://127.0.0.1:{port}/0",
    ..ServerSpec::DEFAULT
};

/// The pins of moto's server (SQS and SNS), installed into the project venv; the same pins are
/// in `tests/python/requirements.txt`.
pub(crate) const MOTO_PIP: &[&str] = &["moto==5.2.1", "flask==3.1.3", "flask-cors==6.0.2"];

/// A throwaway moto server (an SQS and SNS emulator, in memory) on loopback. Requests are
/// SigV4-signed as for AWS with moto's test credentials. The URL's options keep long polls
/// short for the suite.
pub(crate) const MOTO_SERVER: ServerSpec = ServerSpec {
    program: "moto_server",
    args: &["-H", "127.0.0.1", "-p", "{port}"],
    pip: MOTO_PIP,
    url: "sqs://testing:testing@127.0.0.1:{port}?region=us-east-1&wait_time_seconds=1",
    ready_timeout: Duration::from_secs(60),
    ..ServerSpec::DEFAULT
};

/// The backend called `name`, if any.
pub(crate) fn find(name: &str) -> Option<&'static Backend> {
    BACKENDS.iter().find(|backend| backend.name == name)
}

/// Names of all backends, for error messages and help.
pub(crate) fn names() -> Vec<&'static str> {
    BACKENDS.iter().map(|backend| backend.name).collect()
}

/// How a backend (or a benchmark group) gets its broker.
#[derive(Debug)]
pub(crate) enum Provision {
    /// The transport lives in the test process; the URL is all it needs.
    InProcess {
        /// Broker URL handed to the tests (`memory://`); `{data_dir}` is replaced by a
        /// fresh temporary directory that lives as long as the run (for database files).
        url: &'static str,
    },
    /// A real server started for the run and stopped afterwards.
    Server(ServerSpec),
}

impl Provision {
    /// Gets a broker for backend `name`: for servers, installs and starts one.
    /// The broker lives as long as the returned value.
    pub(crate) fn provision(&self, root: &Path, name: &str) -> Result<Provisioned> {
        match self {
            Self::InProcess { url } => {
                let data_dir = if url.contains("{data_dir}") {
                    Some(TempDir::new(root, name)?)
                } else {
                    None
                };
                let url = match &data_dir {
                    Some(dir) => url.replace("{data_dir}", &dir.path().display().to_string()),
                    None => (*url).to_owned(),
                };
                Ok(Provisioned {
                    url,
                    server: None,
                    data_dir,
                })
            }
            Self::Server(spec) => {
                if let Some(url) = spec
                    .url_env
                    .and_then(|var| std::env::var(var).ok())
                    .filter(|url| !url.trim().is_empty())
                {
                    println!(
                        "xtask: {name}: using the server of {}",
                        spec.url_env.unwrap_or_default()
                    );
                    return Ok(Provisioned {
                        url,
                        server: None,
                        data_dir: None,
                    });
                }
                let server = spec
                    .start(root, name)
                    .map_err(|e| Error::new(format!("cannot provision backend `{name}`: {e}")))?;
                Ok(Provisioned {
                    url: server.url.clone(),
                    server: Some(server),
                    data_dir: None,
                })
            }
        }
    }
}

/// A provisioned broker: its URL, and the server (if any) that is stopped when
/// this is dropped.
#[derive(Debug)]
pub(crate) struct Provisioned {
    /// Broker URL for `KOMBU_TEST_URL`.
    pub(crate) url: String,
    /// The running server, stopped on drop.
    server: Option<ServerGuard>,
    /// The temporary directory of an in-process broker's files, removed on drop.
    data_dir: Option<TempDir>,
}

impl Provisioned {
    /// One line describing what was provisioned, for progress output.
    pub(crate) fn describe(&self) -> String {
        match &self.server {
            None => match &self.data_dir {
                Some(dir) => format!("in-process, {} (files in {})", self.url, dir.path().display()),
                None => format!("in-process, {}", self.url),
            },
            Some(server) => format!(
                "{} (pid {}) at {}, data in {}",
                server.program,
                server.child.id(),
                self.url,
                server.data_dir.path().display()
            ),
        }
    }
}

/// A config file written into the server's data directory before it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConfigFile {
    /// File name inside the data directory; `{config}` expands to its path.
    pub(crate) name: &'static str,
    /// Contents, with placeholders expanded.
    pub(crate) template: &'static str,
}

/// How to install and start a throwaway server.
///
/// `args`, `env` values, the config template and `url` may use these
/// placeholders: `{port}` (a free loopback port the server must listen on),
/// `{aux_port}` (a second free port, e.g. for a management or distribution
/// port), `{data_dir}` (a fresh empty directory, removed afterwards) and
/// `{config}` (the path of [`ServerSpec::config_file`]).
///
/// The process runs in the data directory with stdout and stderr going to
/// `server.log` there (its tail is shown when the server fails to come up).
/// It should stay in the foreground and `exec` the real server if a wrapper
/// script starts it: teardown sends SIGTERM to that one process, waits up to
/// 10 s, then kills it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerSpec {
    /// Executable: a path, or a name looked up in the project venv's `bin/`
    /// (when `pip` is non-empty), then `PATH`, then `search_dirs`.
    pub(crate) program: &'static str,
    /// Arguments.
    pub(crate) args: &'static [&'static str],
    /// Extra environment variables.
    pub(crate) env: &'static [(&'static str, &'static str)],
    /// Optional config file to write first.
    pub(crate) config_file: Option<ConfigFile>,
    /// Debian packages providing `program`, installed with apt-get if it is missing.
    pub(crate) apt: &'static [&'static str],
    /// pip requirements providing `program`, installed into the project venv if
    /// it is missing there (e.g. `moto[server]==5.1.4`).
    pub(crate) pip: &'static [&'static str],
    /// Directories outside `PATH` to look for `program` in (`/usr/lib/rabbitmq/bin`).
    pub(crate) search_dirs: &'static [&'static str],
    /// Files the server needs besides `program` (the jars of a Java server run by `java`):
    /// when one is missing, the `apt` packages are installed even if `program` exists.
    pub(crate) requires: &'static [&'static str],
    /// A server built from source instead of installed (FerretDB, with Go): returns the
    /// path of the (cached) program, building it first when needed.
    pub(crate) build: Option<fn(&Path) -> Result<PathBuf>>,
    /// An environment variable that may name a running server to use instead of starting
    /// one (`KOMBU_TEST_MONGODB_URL`: a real `mongod` rather than FerretDB).
    pub(crate) url_env: Option<&'static str>,
    /// Broker URL template (`redis://127.0.0.1:{port}/0`).
    pub(crate) url: &'static str,
    /// How long the server may take to accept connections.
    pub(crate) ready_timeout: Duration,
}

impl ServerSpec {
    /// Defaults for the optional fields, for `..ServerSpec::DEFAULT`.
    pub(crate) const DEFAULT: Self = Self {
        program: "",
        args: &[],
        env: &[],
        config_file: None,
        apt: &[],
        pip: &[],
        search_dirs: &[],
        requires: &[],
        build: None,
        url_env: None,
        url: "",
        ready_timeout: Duration::from_secs(30),
    };
}

/// Values of the placeholders of a [`ServerSpec`].
struct Placeholders {
    port: u16,
    aux_port: u16,
    data_dir: PathBuf,
    config: PathBuf,
}

impl Placeholders {
    /// `template` with every placeholder replaced.
    fn expand(&self, template: &str) -> String {
        template
            .replace("{port}", &self.port.to_string())
            .replace("{aux_port}", &self.aux_port.to_string())
            .replace("{data_dir}", &self.data_dir.to_string_lossy())
            .replace("{config}", &self.config.to_string_lossy())
    }
}

impl ServerSpec {
    /// Installs (if needed) and starts the server, and waits until it accepts
    /// connections.
    fn start(&self, root: &Path, name: &str) -> Result<ServerGuard> {
        let program = self.ensure_installed(root, name)?;
        let data_dir = TempDir::new(root, name)?;
        let port = free_loopback_port()?;
        let mut aux_port = free_loopback_port()?;
        while aux_port == port {
            aux_port = free_loopback_port()?;
        }
        let config = data_dir
            .path()
            .join(self.config_file.map_or("server.conf", |c| c.name));
        let values = Placeholders {
            port,
            aux_port,
            data_dir: data_dir.path().to_path_buf(),
            config,
        };
        if let Some(file) = self.config_file {
            std::fs::write(&values.config, values.expand(file.template))
                .map_err(|e| Error::new(format!("cannot write {}: {e}", values.config.display())))?;
        }
        let log = data_dir.path().join("server.log");
        let stdout =
            File::create(&log).map_err(|e| Error::new(format!("cannot create {}: {e}", log.display())))?;
        let stderr = stdout
            .try_clone()
            .map_err(|e| Error::new(format!("cannot open {}: {e}", log.display())))?;

        let mut command = Command::new(&program);
        command
            .args(self.args.iter().map(|arg| values.expand(arg)))
            .envs(self.env.iter().map(|(key, value)| (*key, values.expand(value))))
            .current_dir(data_dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let text = describe(&command);
        println!("xtask: starting {name} server: {text}");
        let child = command
            .spawn()
            .map_err(|e| Error::new(format!("cannot start `{text}`: {e}")))?;
        let mut guard = ServerGuard {
            child,
            program: self.program,
            url: values.expand(self.url),
            data_dir,
            log,
        };
        let started = Instant::now();
        wait_for_port(port, self.ready_timeout, || match guard.child.try_wait() {
            Ok(Some(status)) => fail(format!(
                "`{text}` exited ({}) before accepting connections; server.log:\n{}",
                status_text(status),
                tail_of(&guard.log, 20)
            )),
            Ok(None) => Ok(()),
            Err(e) => fail(format!("cannot check on `{text}`: {e}")),
        })
        .map_err(|e| {
            if e.to_string().starts_with("nothing accepted") {
                Error::new(format!(
                    "{e} after starting `{text}`; server.log:\n{}",
                    tail_of(&guard.log, 20)
                ))
            } else {
                e
            }
        })?;
        println!(
            "xtask: {name} server ready on 127.0.0.1:{port} after {}",
            crate::util::format_duration(started.elapsed())
        );
        Ok(guard)
    }

    /// Path of `program`, installing its apt or pip packages first if it is missing.
    pub(crate) fn ensure_installed(&self, root: &Path, name: &str) -> Result<PathBuf> {
        if let Some(build) = self.build {
            return build(root).map_err(|e| Error::new(format!("backend `{name}`: {e}")));
        }
        let has_requirements = || self.requires.iter().all(|file| Path::new(file).is_file());
        if let Some(path) = self.find_program(root).filter(|_| has_requirements()) {
            return Ok(path);
        }
        if !self.pip.is_empty() {
            let venv = Venv::project(root);
            venv.ensure_exists("xtask")?;
            venv.pip_install(self.pip, "xtask")?;
        } else if !self.apt.is_empty() {
            apt_install(self.apt)?;
        }
        if let Some(missing) = self.requires.iter().find(|file| !Path::new(file).is_file()) {
            return fail(format!(
                "`{missing}` for backend `{name}` is missing (after apt-get install {})",
                self.apt.join(" ")
            ));
        }
        match self.find_program(root) {
            Some(path) => Ok(path),
            None => {
                let mut hint = String::new();
                if !self.apt.is_empty() {
                    hint = format!(" (after apt-get install {})", self.apt.join(" "));
                } else if !self.pip.is_empty() {
                    hint = format!(" (after pip install {})", self.pip.join(" "));
                }
                fail(format!(
                    "`{}` for backend `{name}` is not installed{hint}; looked in {}",
                    self.program,
                    self.search_path(root)
                        .iter()
                        .map(|dir| dir.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ))
            }
        }
    }

    /// Directories searched for `program`, in order.
    fn search_path(&self, root: &Path) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if !self.pip.is_empty() {
            dirs.push(Venv::project(root).bin(""));
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.extend(self.search_dirs.iter().map(PathBuf::from));
        dirs
    }

    /// Where `program` is, if anywhere.
    fn find_program(&self, root: &Path) -> Option<PathBuf> {
        if self.program.contains('/') {
            let path = root.join(self.program);
            return path.is_file().then_some(path);
        }
        self.search_path(root)
            .into_iter()
            .map(|dir| dir.join(self.program))
            .find(|path| path.is_file())
    }
}

/// `apt-get install -y` the packages (through `sudo -n` unless we are root),
/// running `apt-get update` and retrying once if the first attempt fails.
fn apt_install(packages: &[&str]) -> Result<()> {
    let is_root = probe(Command::new("id").arg("-u")).as_deref() == Some("0");
    let apt = |args: &[&str]| {
        let mut command = if is_root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(packages);
    println!("xtask: installing {}: {}", packages.join(" "), describe(&install));
    if run_streaming(&mut install)?.success() {
        return Ok(());
    }
    println!("xtask: apt-get install failed; running apt-get update and retrying");
    let _ = run_streaming(&mut apt(&["update"]))?;
    let status = run_streaming(&mut install)?;
    if !status.success() {
        return fail(format!(
            "`{}` failed ({}); install {} by hand",
            describe(&install),
            status_text(status),
            packages.join(" ")
        ));
    }
    Ok(())
}

/// A running throwaway server; stops it and removes its data directory on drop.
#[derive(Debug)]
struct ServerGuard {
    child: Child,
    program: &'static str,
    url: String,
    data_dir: TempDir,
    log: PathBuf,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let terminated = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if terminated {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpStream};

    use super::*;
    use crate::util::workspace_root;

    /// A stand-in server: Python's http.server on `{port}`, serving `{data_dir}`.
    const HTTP_SERVER: ServerSpec = ServerSpec {
        program: "python3",
        args: &[
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            "{data_dir}",
            "{port}",
        ],
        url: "http://127.0.0.1:{port}/",
        ready_timeout: Duration::from_secs(20),
        ..ServerSpec::DEFAULT
    };

    fn port_of(url: &str) -> Result<u16> {
        url.trim_start_matches("http://127.0.0.1:")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| Error::new(format!("bad url {url}: {e}")))
    }

    #[test]
    fn memory_is_in_process() -> Result<()> {
        let backend = find("memory").ok_or_else(|| Error::new("no memory backend"))?;
        assert_eq!(backend.crate_name, "kombu-memory");
        let provisioned = backend.provision.provision(&workspace_root(), "memory")?;
        assert_eq!(provisioned.url, "memory://");
        assert!(find("nope").is_none());
        Ok(())
    }

    #[test]
    fn server_starts_and_is_torn_down() -> Result<()> {
        let provisioned = Provision::Server(HTTP_SERVER).provision(&workspace_root(), "unit-http")?;
        let port = port_of(&provisioned.url)?;
        let data_dir = provisioned
            .server
            .as_ref()
            .map(|server| server.data_dir.path().to_path_buf())
            .ok_or_else(|| Error::new("no server"))?;
        assert!(data_dir.join("server.log").is_file());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());
        drop(provisioned);
        assert!(!data_dir.exists(), "data dir left behind");
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "server still up"
        );
        Ok(())
    }

    #[test]
    fn config_file_and_env_are_expanded() -> Result<()> {
        // The "server" checks its config and env, then listens.
        const SPEC: ServerSpec = ServerSpec {
            program: "python3",
            args: &[
                "-c",
                "import os, sys, http.server as h\n\
                 assert open(sys.argv[1]).read() == 'port=' + sys.argv[2]\n\
                 assert os.environ['DATA'] == os.getcwd()\n\
                 h.HTTPServer(('127.0.0.1', int(sys.argv[2])), h.BaseHTTPRequestHandler).serve_forever()",
                "{config}",
                "{port}",
            ],
            env: &[("DATA", "{data_dir}")],
            config_file: Some(ConfigFile {
                name: "test.cfg",
                template: "port={port}",
            }),
            ..HTTP_SERVER
        };
        let provisioned = Provision::Server(SPEC).provision(&workspace_root(), "unit-cfg")?;
        assert!(provisioned.describe().contains("python3"));
        Ok(())
    }

    #[test]
    fn server_that_exits_is_a_clear_error() {
        const SPEC: ServerSpec = ServerSpec {
            program: "python3",
            args: &["-c", "import sys; print('boom: bad config'); sys.exit(3)"],
            ..HTTP_SERVER
        };
        let result = Provision::Server(SPEC).provision(&workspace_root(), "unit-exit");
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.starts_with("cannot provision backend `unit-exit`"),
            "{message}"
        );
        assert!(message.contains("exit status 3"), "{message}");
        assert!(message.contains("boom: bad config"), "{message}");
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        const SPEC: ServerSpec = ServerSpec {
            program: "kombu-no-such-server",
            ..HTTP_SERVER
        };
        let result = Provision::Server(SPEC).provision(&workspace_root(), "unit-missing");
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("`kombu-no-such-server` for backend `unit-missing` is not installed"),
            "{message}"
        );
    }
}
