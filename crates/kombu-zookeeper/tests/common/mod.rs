//! A throwaway standalone ZooKeeper per test (loopback, free port, temp dir, sessions from
//! 1 s), run from Debian's `zookeeper` jars as `cargo xtask test-matrix` runs it, and the
//! Python with Kombu.
#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLASSPATH: &str =
    "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar";

pub struct ZkServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl ZkServer {
    /// Start one; panics with a clear message when Java or the ZooKeeper jars are missing
    /// (install `zookeeper`, or run `cargo xtask test-matrix`, which does).
    pub fn start() -> ZkServer {
        assert!(
            std::path::Path::new("/usr/share/java/zookeeper.jar").is_file(),
            "the ZooKeeper tests need Debian's zookeeper package (apt-get install zookeeper, or run `cargo xtask test-matrix`)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let dir = std::env::temp_dir().join(format!("kombu-zk-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=2000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat,mntr\n\
                 minSessionTimeout=1000\nmaxSessionTimeout=60000\n",
                dir.join("data").display()
            ),
        )
        .expect("zoo.cfg");
        let mut server = ZkServer {
            child: None,
            port,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log");
        let child = Command::new("java")
            .arg("-cp")
            .arg(format!("{CLASSPATH}:{}", self.dir.display()))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("java must be installed for the ZooKeeper tests (apt-get install zookeeper)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.is_ok() {
            assert!(
                Instant::now() < deadline,
                "ZooKeeper did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ruok` → `imok`.
    fn is_ok(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"ruok").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer == "imok"
    }

    pub fn url(&self) -> String {
        format!("zookeeper://127.0.0.1:{}/kombu-test", self.port)
    }

    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL: what the transaction log holds survives).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
