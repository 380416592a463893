//! A real etcd (Debian's `etcd-server`, 3.4) on free loopback ports with its own data
//! directory, for the fleet tests; stopped when dropped, restartable on the same ports and
//! data.

use std::process::{Child, Command, Stdio};

use super::{free_port, wait_for_port};

/// Attempts at finding free ports before giving up.
const ATTEMPTS: usize = 5;

/// A running single-member etcd cluster.
pub struct Etcd {
    /// The process.
    child: Child,
    /// The client port.
    pub port: u16,
    /// The peer port.
    peer: u16,
    /// Its data directory (and log), removed on drop.
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Start etcd on free ports.
    pub fn start() -> Etcd {
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let (port, peer) = (free_port(), free_port());
            let mut child = spawn(port, peer, dir.path());
            if wait_for_port(&mut child, port) {
                return Etcd {
                    child,
                    port,
                    peer,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("etcd did not start after {ATTEMPTS} attempts (apt-get install etcd-server)");
    }

    /// `etcd://127.0.0.1:PORT/PREFIX`, a fleet's `coordination:`.
    pub fn coordination(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{}/{prefix}", self.port)
    }

    /// Stop it and start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kill it (`kill -9`): the fleet loses contact until [`Etcd::start_again`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again after [`Etcd::stop`], on the same ports and data.
    pub fn start_again(&mut self) {
        let mut child = spawn(self.port, self.peer, self.dir.path());
        assert!(wait_for_port(&mut child, self.port), "etcd restarted");
        self.child = child;
    }
}

/// Spawn etcd with client port `port` and peer port `peer`, its data and log in `dir`.
fn spawn(port: u16, peer: u16, dir: &std::path::Path) -> Child {
    let client = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
    Command::new("etcd")
        .args(["--name", "test"])
        .args(["--data-dir", &dir.join("data").display().to_string()])
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd on PATH (apt-get install etcd-server)")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
