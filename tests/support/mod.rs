//! Shared test support: real `redis-server` and `nutcracker` processes on free loopback
//! ports, each stopped (killed and reaped) when its handle is dropped, and a tiny RESP
//! client for talking to proxies byte for byte.
#![allow(dead_code)]

pub mod compare;
pub mod dashboard;
pub mod etcd;
pub mod workload;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long a started process gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when one turns out to be taken.
const START_ATTEMPTS: usize = 5;

/// Every port [`free_port`] has handed out in this test process. The OS may offer a port
/// again once its probe socket is closed; two tests starting servers on the same port at
/// once would then talk to each other's processes.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How many ports already handed out the OS may offer in a row before
/// [`listen_on_free_port`] gives up (under a second of tries): even with nine in ten of the
/// ephemeral ports handed out, a run this long is out of reach; only an exhausted range
/// makes one.
const PORT_TRIES: usize = 10_000;

/// Set once [`listen_on_free_port`] found no port left, so later calls fail at once.
static PORTS_EXHAUSTED: AtomicBool = AtomicBool::new(false);

/// A loopback port that was free a moment ago (the OS picks it) and that no other test of
/// this process has been given: [`listen_on_free_port`]'s, its listener closed.
pub fn free_port() -> u16 {
    listen_on_free_port()
        .local_addr()
        .expect("a listener's address")
        .port()
}

/// A loopback listener of the test's own, on a port no other test of this process has
/// been given, and which [`free_port`] will not hand out. A listener bound to port 0
/// directly could take a port another test holds unbound for a while (a dead server's,
/// started later): that test's proxy would then connect to this listener.
///
/// Panics once the OS offers nothing but ports already handed out: the process has used
/// up the loopback's ephemeral ports (about 28,000), which a test that starts that many
/// servers has to hear about rather than wait on forever.
pub fn listen_on_free_port() -> TcpListener {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let tries = if PORTS_EXHAUSTED.load(Relaxed) {
        0
    } else {
        PORT_TRIES
    };
    for _ in 0..tries {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let port = listener.local_addr().expect("its address").port();
        if handed_out.insert(port) {
            return listener;
        }
    }
    PORTS_EXHAUSTED.store(true, Relaxed);
    panic!(
        "no loopback port left that this test process has not handed out ({} handed out): \
         the OS offered only used ones, {PORT_TRIES} in a row",
        handed_out.len()
    );
}

/// How many cases a property test runs: `default` (what CI runs), or `PROPTEST_CASES`
/// when it is set, for a longer soak of the parsers
/// (`PROPTEST_CASES=100000 cargo test --release --test resp_fuzz`).
pub fn property_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

/// A synchronous `redis` client connection to a loopback port (a redis-server or a proxy).
pub fn connect_to(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Wait until `port` accepts a connection, or the child exits, or time runs out. A child
/// that lost the port to another process exits soon after it tried to bind; a short settle
/// after the first connection makes sure the listener found is still the child's.
pub fn wait_for_port(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
            return matches!(child.try_wait(), Ok(None));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether the redis-server answering on `port` is the process `pid` (INFO's process_id);
/// `extra` are its arguments, where a `--requirepass` is found.
fn redis_is_process(port: u16, pid: u32, extra: &[&str]) -> bool {
    let password = extra
        .iter()
        .position(|a| *a == "--requirepass")
        .and_then(|i| extra.get(i + 1))
        .map(|p| format!(":{p}@"))
        .unwrap_or_default();
    let info: Option<String> = redis::Client::open(format!("redis://{password}127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .and_then(|mut conn| redis::cmd("INFO").arg("server").query(&mut conn))
        .ok();
    info.is_some_and(|text| {
        text.lines()
            .any(|l| l.trim() == format!("process_id:{pid}"))
    })
}

/// Kill and reap a child process.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A redis-server on a free loopback port, with persistence off, stopped on drop.
pub struct RedisServer {
    /// The running process.
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// Its working directory (removed on drop).
    dir: tempfile::TempDir,
    /// The extra arguments it was started with.
    extra: Vec<String>,
    /// The server program (Debian's `redis-server`, or another engine's).
    program: PathBuf,
}

/// Server engines other than Debian's redis-server, installed by
/// `tests/engines/install.sh` (which `.ci/run` runs) into `target/engines/bin/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherEngine {
    /// Valkey 9.1.
    Valkey9,
    /// Valkey 8.1.
    Valkey8,
    /// Redis 6.2.
    Redis62,
    /// Redis 6.0.
    Redis60,
}

impl OtherEngine {
    /// The server binary.
    pub fn program(self) -> PathBuf {
        let name = match self {
            OtherEngine::Valkey9 => "valkey-9-server",
            OtherEngine::Valkey8 => "valkey-8-server",
            OtherEngine::Redis62 => "redis-6.2-server",
            OtherEngine::Redis60 => "redis-6.0-server",
        };
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/engines/bin")
            .join(name);
        assert!(
            path.exists(),
            "{} is missing: run tests/engines/install.sh (.ci/run does)",
            path.display()
        );
        path
    }
}

impl RedisServer {
    /// Start a redis-server with no password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Start a redis-server with extra `--name value` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::launch(Path::new("redis-server"), None, extra)
    }

    /// Start another engine's server (Valkey, an older Redis).
    pub fn start_engine(engine: OtherEngine) -> RedisServer {
        RedisServer::launch(&engine.program(), None, &[])
    }

    /// Start a redis-server on a given port (one picked earlier with [`free_port`]).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::launch(Path::new("redis-server"), Some(port), &[])
    }

    /// Stop it after saving its data (SHUTDOWN SAVE) and start it again on the same port
    /// and directory, so it comes back with the same keys.
    pub fn restart(&mut self) {
        self.shut_down();
        self.start_again();
    }

    /// Stop it after saving its data (SHUTDOWN SAVE): its port refuses connections until
    /// [`RedisServer::start_again`].
    pub fn shut_down(&mut self) {
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query::<()>(&mut self.client());
        let _ = self.child.wait();
    }

    /// Hold it busy for `seconds` (`DEBUG SLEEP`: it must have been started with
    /// `--enable-debug-command`), from a thread; returns once it no longer answers a PING
    /// within 50 ms. Join the thread to wait for it to wake.
    pub fn hold_busy(&self, seconds: u32) -> std::thread::JoinHandle<()> {
        // Connected first: a connection made while it sleeps would wait for it to wake.
        let mut conn = self.client();
        conn.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let port = self.port;
        let sleeper = std::thread::spawn(move || {
            let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(seconds)
                .query(&mut connect_to(port));
        });
        wait_for("the server asleep", Duration::from_secs(5), || {
            redis::cmd("PING").query::<String>(&mut conn).is_err()
        });
        sleeper
    }

    /// Stop it without saving (if it runs) and start it again, on the same port, empty (as
    /// a server without persistence comes back from a crash): a new `run_id`, no keys.
    pub fn restart_empty(&mut self) {
        self.stop_without_saving();
        // Removed once it is down: a snapshot it was making (for a replica's full sync,
        // say) can no longer land.
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        self.start_again();
    }

    /// Stop it without saving (SHUTDOWN NOSAVE) and start it again on the same port and
    /// directory: it comes back with what its last `SAVE` wrote, or empty if none did.
    pub fn restart_from_last_save(&mut self) {
        self.stop_without_saving();
        self.start_again();
    }

    /// SHUTDOWN NOSAVE, and wait for the process to end (at once if it is down already,
    /// after [`RedisServer::shut_down`]).
    fn stop_without_saving(&mut self) {
        let address = format!("redis://127.0.0.1:{}", self.port);
        if let Ok(mut conn) = redis::Client::open(address).and_then(|c| c.get_connection()) {
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut conn);
        }
        let _ = self.child.wait();
    }

    /// Start it again after [`RedisServer::shut_down`], on the same port and directory,
    /// with the keys it saved.
    pub fn start_again(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let mut child = RedisServer::spawn(&self.program, self.port, self.dir.path(), &extra);
        assert!(
            wait_for_port(&mut child, self.port),
            "redis-server restarted on port {}",
            self.port
        );
        self.child = child;
    }

    /// Spawn redis-server on `port` in `dir`.
    fn spawn(program: &Path, port: u16, dir: &Path, extra: &[&str]) -> Child {
        Command::new(program)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", &dir.display().to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)")
    }

    /// Start on `port` (or a free one, retrying on collisions) with `extra` arguments.
    fn launch(program: &Path, fixed: Option<u16>, extra: &[&str]) -> RedisServer {
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = fixed.unwrap_or_else(free_port);
            let mut child = RedisServer::spawn(program, port, dir.path(), extra);
            if wait_for_port(&mut child, port) && redis_is_process(port, child.id(), extra) {
                return RedisServer {
                    child,
                    port,
                    dir,
                    extra: extra.iter().map(|s| s.to_string()).collect(),
                    program: program.to_path_buf(),
                };
            }
            stop(&mut child);
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A synchronous client connection straight to this server.
    pub fn client(&self) -> redis::Connection {
        connect_to(self.port)
    }

    /// Remove every key (all databases).
    pub fn flush(&self) {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut self.client())
            .expect("FLUSHALL");
    }

    /// Every key of this server with its DUMP payload, sorted: what the server holds.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut conn = self.client();
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = self
            .keys()
            .into_iter()
            .map(|k| {
                let dump: Vec<u8> = redis::cmd("DUMP")
                    .arg(&k)
                    .query(&mut conn)
                    .unwrap_or_default();
                (k, dump)
            })
            .collect();
        out.sort();
        out
    }

    /// Its `master_repl_offset` (`INFO replication`).
    pub fn master_repl_offset(&self) -> u64 {
        self.info_number("replication", "master_repl_offset")
            .expect("master_repl_offset")
    }

    /// Make each snapshot it writes, so each full sync a replica asks of it, take
    /// `per_key` per key (`rdb-key-save-delay`): a window of known length while a
    /// replica's full sync runs.
    pub fn slow_snapshots(&self, per_key: Duration) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("rdb-key-save-delay")
            .arg(per_key.as_micros().to_string())
            .query(&mut self.client())
            .expect("CONFIG SET rdb-key-save-delay");
    }

    /// Its number of keys (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        redis::cmd("DBSIZE")
            .query(&mut self.client())
            .expect("DBSIZE")
    }

    /// The number `field` of `INFO section`, if the server reports it.
    pub fn info_number(&self, section: &str, field: &str) -> Option<u64> {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.client())
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Let it hold `room` bytes more than it uses now, then evict keys at random
    /// (`maxmemory`, `maxmemory-policy allkeys-random`).
    pub fn evict_beyond(&self, room: u64) {
        let used = self
            .info_number("memory", "used_memory")
            .expect("used_memory");
        let limit = (used + room).to_string();
        let mut conn = self.client();
        for (name, value) in [
            ("maxmemory", limit.as_str()),
            ("maxmemory-policy", "allkeys-random"),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query(&mut conn)
                .expect("CONFIG SET");
        }
    }

    /// Drop every replica connection (`CLIENT KILL TYPE replica`), as a network fault would.
    pub fn drop_replicas(&self) {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query(&mut self.client())
            .expect("CLIENT KILL");
    }

    /// Every key on this server (db 0), by SCAN.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut conn = self.client();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The server of `servers` holding `key` (a migrated key lives on exactly one).
pub fn owner<'a>(servers: &'a [RedisServer], key: &str) -> &'a RedisServer {
    servers
        .iter()
        .find(|t| {
            redis::cmd("EXISTS")
                .arg(key)
                .query::<bool>(&mut t.client())
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no server holds {key}"))
}

/// Several redis-servers, for a pool.
pub fn redis_servers(count: usize) -> Vec<RedisServer> {
    (0..count).map(|_| RedisServer::start()).collect()
}

/// A running proxy process (nutcracker or cutover), stopped on drop.
pub struct Proxy {
    /// The running process.
    child: Child,
    /// The client port (the pool's `listen:`).
    pub port: u16,
    /// The stats port.
    pub stats_port: u16,
    /// Its directory: config file and log.
    pub dir: tempfile::TempDir,
    /// cutover's admin port (0 for nutcracker).
    pub admin_port: u16,
    /// The admin token cutover made at start and wrote to its file, if it did.
    made_token: Option<String>,
}

impl Proxy {
    /// Start nutcracker on `config`, a YAML text in which `LISTEN` stands for the pool's
    /// listen address (a free port is put there).
    pub fn nutcracker(config: &str) -> Proxy {
        Proxy::start(Path::new("nutcracker"), config, &[])
    }

    /// Start the cutover binary on `config` (see [`Proxy::nutcracker`]), with its admin
    /// API on a free port ([`Proxy::admin_port`]).
    pub fn cutover(config: &str) -> Proxy {
        Proxy::cutover_with(config, &[])
    }

    /// Start cutover with environment variables.
    pub fn cutover_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::cutover_with_env(config, &[], env)
    }

    /// Start cutover with extra arguments.
    pub fn cutover_with(config: &str, extra: &[&str]) -> Proxy {
        Proxy::cutover_with_env(config, extra, &[])
    }

    /// Start cutover with extra arguments and environment variables.
    pub fn cutover_with_env(config: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
        let admin = free_port();
        let mut args = vec!["--admin".to_string(), format!("127.0.0.1:{admin}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proxy = Proxy::launch(&cutover_bin(), config, &args, env);
        proxy.admin_port = admin;
        proxy.made_token = std::fs::read_to_string(admin_token_file(admin)).ok();
        proxy
    }

    /// Start `program` with `-c config -s stats -a 127.0.0.1 -o log` and `extra` arguments.
    pub fn start(program: &Path, config: &str, extra: &[&str]) -> Proxy {
        Proxy::launch(program, config, extra, &[])
    }

    /// [`Proxy::start`] with environment variables.
    fn launch(program: &Path, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let stats_port = free_port();
            let conf = dir.path().join("proxy.yml");
            std::fs::write(
                &conf,
                config.replace("LISTEN", &format!("127.0.0.1:{port}")),
            )
            .expect("write config");
            let mut child = Command::new(program)
                .arg("-c")
                .arg(&conf)
                .args([
                    "-s",
                    &stats_port.to_string(),
                    "-a",
                    "127.0.0.1",
                    "-i",
                    "1000",
                ])
                .arg("-o")
                .arg(dir.path().join("proxy.log"))
                .args(extra)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
            if wait_for_port(&mut child, port) {
                return Proxy {
                    child,
                    port,
                    stats_port,
                    dir,
                    admin_port: 0,
                    made_token: None,
                };
            }
            stop(&mut child);
        }
        panic!(
            "{} did not start after {START_ATTEMPTS} attempts",
            program.display()
        );
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` (`HUP`, `TTIN`, ...) with `kill`, as an operator would.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// A `redis` client connection to the proxy's client port.
    pub fn client(&self) -> redis::Connection {
        connect_to(self.port)
    }

    /// A raw connection to the proxy's client port.
    pub fn connect(&self) -> RespConn {
        RespConn::connect(self.port)
    }

    /// The stats port's JSON (one snapshot).
    pub fn stats(&self) -> String {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.stats_port)).expect("connect to stats port");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read stats");
        text
    }

    /// `GET path` on cutover's admin API: `(status, body)`.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        try_http_with(self.admin_port, "GET", path, "").unwrap_or_else(|e| {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "GET {path} on the admin API at port {}: {e}; the proxy's log ends:\n{}",
                self.admin_port,
                tail.join("\n")
            )
        })
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// The migration object of the first pool in `/status`.
    pub fn migration(&self) -> serde_json::Value {
        self.status()["pools"][0]["migration"].clone()
    }

    /// Run a verify pass (with `repair`) through the admin API and wait for its end: the
    /// differences it found.
    pub fn verify_pass(&self, repair: bool) -> serde_json::Value {
        let path = if repair {
            "/verify?repair=true"
        } else {
            "/verify"
        };
        assert_eq!(http(self.admin_port, "POST", path).0, 202);
        wait_for("a verify pass", Duration::from_secs(30), || {
            self.migration()["verify"]["running"] == false
        });
        self.migration()["verify"]["last"]["differences"].clone()
    }

    /// The capture's applied offset in the first source server's stream (`/status`).
    pub fn captured(&self) -> u64 {
        self.migration()["capture"]["servers"][0]["offset"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Wait until the migration is drained, its capture has applied `source`'s whole
    /// stream (up to its offset now), and the lanes are drained again after that.
    pub fn wait_capture_caught_up(&self, source: &RedisServer) {
        self.wait_migration_drained(Duration::from_secs(60), 3);
        wait_for(
            "the capture to apply the whole stream",
            Duration::from_secs(30),
            || self.captured() >= source.master_repl_offset(),
        );
        self.wait_migration_drained(Duration::from_secs(60), 3);
    }

    /// Send SIGTERM and wait for the process to exit; returns whether it exited by itself
    /// within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Wait (at most `limit`) until cutover's migration has scanned everything and no
    /// mirror event or dirty key waits, steadily for `quiet_checks` checks 200 ms apart.
    pub fn wait_migration_drained(&self, limit: Duration, quiet_checks: u32) {
        let deadline = Instant::now() + limit;
        let mut quiet = 0;
        while quiet < quiet_checks {
            let status = self.admin_get("/status").1;
            assert!(
                Instant::now() < deadline,
                "the migration did not drain: {status}"
            );
            let document: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
            // Every migrating pool's: its backfill done, no full pass after a server's
            // restart queueing keys, its lanes empty, no dirty key.
            let migrations: Vec<&serde_json::Value> = document["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|pool| &pool["migration"])
                .filter(|m| m.is_object())
                .collect();
            let drained = !migrations.is_empty()
                && migrations.iter().all(|m| {
                    m["backfill"]["done"] == true
                        && m["restarts"]["recopying"] != true
                        && m["mirror"]["queued"] == 0
                        && m["mirror"]["dirty"] == 0
                });
            quiet = if drained { quiet + 1 } else { 0 };
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the process is still running (it has not crashed or exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the process in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The sum of every series of the metric `name` in `/metrics` (0 when it has none).
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.admin_get("/metrics")
            .1
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The value of the first `/metrics` line starting with `line_start` (a metric name
    /// and its labels), 0 when there is none.
    pub fn metric(&self, line_start: &str) -> f64 {
        self.admin_get("/metrics")
            .1
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// What `cutover ctl status` prints for this proxy (asserting it succeeded).
    pub fn ctl_status(&self) -> String {
        let out = Command::new(cutover_bin())
            .args(["ctl", "--admin", &format!("127.0.0.1:{}", self.admin_port)])
            .arg("status")
            .env_remove("CUTOVER_ADMIN_TOKEN")
            .output()
            .expect("cutover ctl");
        assert!(
            out.status.success(),
            "cutover ctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// CPU time the process has used (user and system), from `/proc/PID/stat` (in clock
    /// ticks of 10 ms, the kernel's `USER_HZ` on Linux).
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces), which ends with ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        Duration::from_millis(ticks * 10)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pid = self.child.id();
        stop(&mut self.child);
        // A cutover killed, not stopped, leaves its admin token's file (unless another
        // process on the port has written its own since) and its dirty-key file, named
        // after its pid when it has no state file (`cutover-POOL-PID.dirty`).
        let token_file = admin_token_file(self.admin_port);
        if self.made_token.is_some() && std::fs::read_to_string(&token_file).ok() == self.made_token
        {
            let _ = std::fs::remove_file(token_file);
        }
        let suffix = format!("-{pid}.dirty");
        for entry in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("cutover-") && name.ends_with(&suffix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// One HTTP/1.1 request to a loopback port: `(status, body)`.
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    http_with(port, method, path, "")
}

/// One HTTP/1.1 request with extra header lines (each ending in CRLF).
pub fn http_with(port: u16, method: &str, path: &str, headers: &str) -> (u16, String) {
    try_http_with(port, method, path, headers)
        .unwrap_or_else(|e| panic!("{method} {path} on the admin API at port {port}: {e}"))
}

/// [`http_with`], failing with the error instead of panicking.
pub fn try_http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String)> {
    // The token a cutover made at start (safe by default), as `cutover ctl` reads it,
    // unless the caller sends its own.
    let token = std::fs::read_to_string(admin_token_file(port))
        .ok()
        .filter(|_| !headers.to_ascii_lowercase().contains("authorization"))
        .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
        .unwrap_or_default();
    let headers = format!("{token}{headers}");
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    // As long as `cutover ctl` waits: a flip that cannot hold answers only after the
    // barrier's 8 s, later still on a loaded machine.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Length: 0\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Where a cutover whose admin API is on `port` writes the token it makes at start.
pub fn admin_token_file(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("cutover-admin-{port}.token"))
}

/// The cutover binary built for these tests.
pub fn cutover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cutover"))
}

/// A RESP request: an array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A raw RESP connection that reads whole replies and returns their exact bytes.
pub struct RespConn {
    /// Buffered reader over the socket.
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Connect to a loopback port with a read timeout.
    pub fn connect(port: u16) -> RespConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        RespConn {
            reader: BufReader::new(stream),
        }
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write to proxy");
    }

    /// Read one complete reply and return its exact bytes.
    pub fn reply(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.read_reply(&mut out);
        out
    }

    /// Read one reply, or `None` when the connection closed (or stayed silent past the
    /// read timeout).
    pub fn try_reply(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.try_read_reply(&mut out).then_some(out)
    }

    /// Whether the peer has closed the connection (reads EOF within `wait`).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let stream = self.reader.get_mut();
        stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut byte = [0u8; 1];
        let closed = matches!(self.reader.read(&mut byte), Ok(0));
        self.reader
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        closed
    }

    /// Set how long reads wait.
    pub fn set_timeout(&mut self, wait: Duration) {
        self.reader
            .get_mut()
            .set_read_timeout(Some(wait))
            .expect("timeout");
    }

    /// Send one command and read its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&command(args));
        self.reply()
    }

    /// Append one reply's bytes to `out`; panics when the connection closes or the read
    /// times out first.
    fn read_reply(&mut self, out: &mut Vec<u8>) {
        assert!(
            self.try_read_reply(out),
            "no reply: the connection closed or the read timed out"
        );
    }

    /// Append one reply's bytes (RESP2 or RESP3) to `out`; false on EOF or timeout.
    fn try_read_reply(&mut self, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        match self.reader.read_until(b'\n', out) {
            Ok(n) if n > 0 && out.ends_with(b"\n") => {}
            _ => return false,
        }
        let line = &out[start..];
        let head = line[0];
        let number: i64 = std::str::from_utf8(&line[1..line.len().saturating_sub(2)])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match head {
            b'$' | b'=' | b'!' if number >= 0 => {
                let mut body = vec![0u8; number as usize + 2];
                if self.reader.read_exact(&mut body).is_err() {
                    return false;
                }
                out.extend_from_slice(&body);
            }
            b'*' | b'~' | b'>' if number > 0 => {
                for _ in 0..number {
                    if !self.try_read_reply(out) {
                        return false;
                    }
                }
            }
            b'%' | b'|' if number > 0 => {
                for _ in 0..number * 2 {
                    if !self.try_read_reply(out) {
                        return false;
                    }
                }
                if head == b'|' {
                    return self.try_read_reply(out);
                }
            }
            _ => {}
        }
        true
    }
}

/// A TCP server that accepts connections and reads what it is sent but never answers: a
/// hung backend, for timeout tests. Stops accepting when dropped.
pub struct Blackhole {
    /// Its port.
    pub port: u16,
    /// Set on drop to stop the accept thread.
    stop: std::sync::Arc<AtomicBool>,
}

impl Blackhole {
    /// Start one on a free loopback port.
    pub fn start() -> Blackhole {
        let listener = listen_on_free_port();
        let port = listener.local_addr().expect("addr").port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if flag.load(Relaxed) {
                    break;
                }
                if let Ok(mut stream) = stream {
                    let reader = stream.try_clone().ok();
                    held.push(stream.try_clone().ok());
                    std::thread::spawn(move || {
                        let mut sink = [0u8; 4096];
                        if let Some(mut r) = reader {
                            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
                        }
                        let _ = stream.flush();
                    });
                }
            }
        });
        Blackhole { port, stop }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A one-pool config named `p` listening on `LISTEN` (see [`Proxy::nutcracker`]), with
/// `redis: true`, the given pool keys (`"hash: md5"`) and server lines (`"127.0.0.1:6379:1"`).
pub fn pool_config<S: AsRef<str>>(keys: &[&str], servers: &[S]) -> String {
    let mut text = String::from("p:\n  listen: LISTEN\n  redis: true\n");
    for key in keys {
        text.push_str(&format!("  {key}\n"));
    }
    text.push_str("  servers:\n");
    for server in servers {
        text.push_str(&format!("   - {}\n", server.as_ref()));
    }
    text
}

/// A config migrating pool `legacy` (one server, `source`; listening on `LISTEN`) to pool
/// `fleet` (`targets`, nutcracker's default hash), with `scan_count: 100` and `extra`
/// (more `migrate:` lines, each indented four spaces and ending in a newline).
pub fn migration_config(source: &RedisServer, targets: &[RedisServer], extra: &str) -> String {
    let mut text = format!(
        "legacy:\n  listen: LISTEN\n  redis: true\n  servers:\n   - {}:1\n  migrate_to: fleet\n  migrate:\n    scan_count: 100\n{extra}fleet:\n  redis: true\n  servers:\n",
        source.addr()
    );
    for t in targets {
        text.push_str(&format!("   - {}:1\n", t.addr()));
    }
    text
}

/// Pool lines that eject a server at its first failure (a 300 ms timeout) for `retry_ms`,
/// placing keys by md5 (fnv1a_64 may put all of `k0`..`k199` on one of two servers).
pub fn ejecting(retry_ms: u64) -> String {
    format!(
        "  hash: md5\n  timeout: 300\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: {retry_ms}\n"
    )
}

/// SET `k0`..`k{n-1}` to `value` through `conn`, one at a time, each whatever its reply
/// (a write that finds a busy server before it is ejected fails).
pub fn set_numbered(conn: &mut redis::Connection, n: u64, value: &str) {
    for i in 0..n {
        let _: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(value)
            .query(conn);
    }
}

/// GET `k0`..`k{n-1}` through `conn`: what the app reads.
pub fn get_numbered(conn: &mut redis::Connection, n: u64) -> Vec<Option<String>> {
    (0..n)
        .map(|i| {
            redis::cmd("GET")
                .arg(format!("k{i}"))
                .query(conn)
                .expect("GET")
        })
        .collect()
}

/// Fill `server` with `n` string keys `k0`.. whose values are their numbers.
pub fn fill_numbered(server: &RedisServer, n: u64) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    pipe.query::<()>(&mut server.client()).expect("fill");
}

/// A Lua script for `EVAL` that keeps a Redis server busy for `how_long` (the server
/// serves nobody else meanwhile), then returns 1.
pub fn busy_script(how_long: Duration) -> String {
    format!(
        "local t = redis.call('TIME') \
         local s = t[1] * 1000000 + t[2] \
         repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - s > {} \
         return 1",
        how_long.as_micros()
    )
}

/// Change `key` on whichever of `targets` holds it, behind cutover's back: a shadow read
/// of it then disagrees with the source.
pub fn diverge_on_target(targets: &[RedisServer], key: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("diverged")
        .query(&mut owner(targets, key).client())
        .expect("SET on the target");
}

/// Start a flip (`flip`, an admin API call, in a thread of its own) and wait until it is
/// past its checks, which `past` tells (say, a full sync it started); the flip's thread,
/// to join for its answer. A flip refused by its checks only because a connection the
/// test just closed to a source server is still listed there is tried again.
pub fn past_the_checks(
    flip: impl Fn() -> (u16, String) + Send + Clone + 'static,
    mut past: impl FnMut() -> bool,
) -> std::thread::JoinHandle<(u16, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = std::thread::spawn(flip.clone());
        wait_for("the flip past its checks", Duration::from_secs(15), || {
            past() || attempt.is_finished()
        });
        if !attempt.is_finished() {
            return attempt;
        }
        let (code, body) = attempt.join().expect("the flip's request");
        assert!(
            code == 409
                && body.contains("connected straight to source")
                && Instant::now() < deadline,
            "the flip ended before it was past its checks: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Make `request` (a flip, say: it is refused while a look or a lane is still due) every
/// 50 ms until it is answered 200; fail the test after `limit`, with the last answer.
/// The body of the 200.
pub fn until_accepted(
    what: &str,
    limit: Duration,
    mut request: impl FnMut() -> (u16, String),
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (code, body) = request();
        if code == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the last answer: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll `done` every 50 ms until it holds; fail the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian's `prometheus` on a free loopback port, scraping `targets` (`HOST:PORT` of
/// cutover admin APIs) every second, with its own data directory; stopped on drop.
pub struct Prometheus {
    /// The running process.
    child: Child,
    /// Its HTTP API port.
    pub port: u16,
    /// Its config and data (removed on drop).
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start it, scraping `targets`.
    pub fn start(targets: &[String]) -> Prometheus {
        Prometheus::start_with_rules(targets, None)
    }

    /// Start it, scraping `targets` and evaluating the alerting rules in `rules` (a file),
    /// every second.
    fn start_with_rules(targets: &[String], rules: Option<&Path>) -> Prometheus {
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            let rule_files = rules
                .map(|r| format!("rule_files:\n  - '{}'\n", r.display()))
                .unwrap_or_default();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: cutover\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            );
            let conf = dir.path().join("prometheus.yml");
            std::fs::write(&conf, config).expect("write prometheus config");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", conf.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus on PATH (apt-get install prometheus)");
            if wait_for_port(&mut child, port) {
                return Prometheus {
                    child,
                    port,
                    _dir: dir,
                };
            }
            stop(&mut child);
        }
        panic!("prometheus did not start after {START_ATTEMPTS} attempts");
    }

    /// Evaluate `query` now through the HTTP API; the `data.result` array.
    pub fn query(&self, query: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let body = ureq::get(&url)
            .query("query", query)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let answer: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"));
        assert_eq!(answer["status"], "success", "{query}: {body}");
        answer["data"]["result"].clone()
    }

    /// Start it scraping the admin APIs of `proxies`, with `conf/prometheus-alerts.yml`
    /// loaded.
    pub fn over_with_alerts(proxies: &[Proxy]) -> Prometheus {
        let targets: Vec<String> = proxies
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.admin_port))
            .collect();
        Prometheus::start_with_rules(&targets, Some(Path::new(dashboard::ALERT_RULES)))
    }

    /// Wait until it has scraped its targets (they show as up).
    pub fn wait_scraping(&self) {
        wait_for(
            "Prometheus to scrape cutover",
            Duration::from_secs(60),
            || self.targets().contains("\"health\":\"up\""),
        );
    }

    /// The alerts pending or firing now: each one's name and state, sorted.
    pub fn alerts(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}/api/v1/alerts", self.port);
        let body = ureq::get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("alerts: {e}"));
        let answer: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("alerts: {e}: {body}"));
        let mut alerts: Vec<(String, String)> = answer["data"]["alerts"]
            .as_array()
            .unwrap_or_else(|| panic!("alerts: {body}"))
            .iter()
            .map(|a| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
                (text(&a["labels"]["alertname"]), text(&a["state"]))
            })
            .collect();
        alerts.sort();
        alerts.dedup();
        alerts
    }

    /// Whether the alert `name` is pending or firing now.
    pub fn alert_active(&self, name: &str) -> bool {
        self.alerts()
            .iter()
            .any(|(alert, state)| alert == name && (state == "pending" || state == "firing"))
    }

    /// The scrape targets, as the HTTP API lists them.
    pub fn targets(&self) -> String {
        let url = format!("http://127.0.0.1:{}/api/v1/targets", self.port);
        ureq::get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
