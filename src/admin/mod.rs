//! The admin API on `--admin` (default 127.0.0.1:22223): `GET /metrics` (Prometheus text)
//! and `GET /status` (JSON). The migration controls join it with the migration engine.
//!
//! May import: everything below it (`proxy`, `migrate`, `upstream`, ...); nothing
//! imports it but the binary (`main.rs`, `cli/`).

pub mod ctl;
mod forward;
mod http;
mod status_text;
pub mod token;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use http::{HttpRequest, HttpResponse};

use crate::migrate::Migration;
use crate::migrate::verify::{self, VerifyOptions};
use crate::migrate::{FlipError, Phase};
use crate::proxy::reload::Reloader;
use crate::proxy::{BusyPoll, Served};

/// Histogram buckets for every `_seconds` histogram: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into buckets. The exporter keeps every sample
/// (24 bytes: the value and when) until then, and folding them takes about 7 ns each: at
/// 5 s (the first choice) a proxy serving 900,000 requests/s held 110 MB of samples and
/// spent 30 ms folding them, which on the runtime's thread stalled every client for that
/// long (a 36 ms maximum latency against nutcracker's 7 ms, `benches/README.md`). A
/// quarter second keeps both small, on a thread of its own.
const UPKEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Install the Prometheus recorder for the `metrics` crate; call once, before any pool is
/// built, so every handle resolved afterwards is exported.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .ok()?;
    match builder.install_recorder() {
        Ok(handle) => {
            spawn_upkeep(handle.clone());
            Some(handle)
        }
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed");
            None
        }
    }
}

/// Fold histogram samples into buckets every [`UPKEEP_INTERVAL`] on a thread of its own,
/// so the folding never holds up the runtime's threads (and so the clients), for the
/// life of the process.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no thread to fold histogram samples; /metrics scrapes will fold them");
    }
}

/// What the admin API serves.
pub struct Admin {
    /// The Prometheus handle, when the recorder is installed.
    metrics: Option<PrometheusHandle>,
    /// The proxy's pools, with their migrations.
    pools: Vec<Arc<Served>>,
    /// When set, every POST must carry `Authorization: Bearer <token>`.
    token: Option<String>,
    /// Reloads the config (`POST /reload`).
    reloader: Option<Arc<Reloader>>,
    /// The proxy's busy polling, when it is on (shown by `/status`).
    busy_poll: Option<Arc<BusyPoll>>,
    /// Turns true when the proxy begins to shut down (`GET /health` then answers 503).
    stopping: Option<watch::Receiver<bool>>,
}

impl Admin {
    /// An admin API over `pools`; mutating calls need `token` when one is given.
    pub fn new(
        metrics: Option<PrometheusHandle>,
        pools: Vec<Arc<Served>>,
        token: Option<String>,
    ) -> Admin {
        Admin {
            metrics,
            pools,
            token,
            reloader: None,
            busy_poll: None,
            stopping: None,
        }
    }

    /// Answer `GET /health` with 503 once `stopping` turns true.
    pub fn with_stopping(mut self, stopping: watch::Receiver<bool>) -> Admin {
        self.stopping = Some(stopping);
        self
    }

    /// Show `busy_poll` in `/status`.
    pub fn with_busy_poll(mut self, busy_poll: Option<Arc<BusyPoll>>) -> Admin {
        self.busy_poll = busy_poll;
        self
    }

    /// Answer `POST /reload` with `reloader`.
    pub fn with_reloader(mut self, reloader: Arc<Reloader>) -> Admin {
        self.reloader = Some(reloader);
        self
    }

    /// Answer one request.
    pub async fn handle(&self, request: &HttpRequest) -> HttpResponse {
        if request.method == "POST"
            && let Some(token) = &self.token
            && request.authorization.as_deref() != Some(format!("Bearer {token}").as_str())
        {
            return HttpResponse::error(
                401,
                "this call needs Authorization: Bearer <token> (the proxy's --admin-token)",
            );
        }
        if request.method == "POST"
            && forward::FORWARDED.contains(&request.path.as_str())
            && let Some(fleet) = self.fleet(&request.query).filter(|f| !f.leading())
        {
            return match fleet.leader_admin() {
                Some(leader) => forward::to_leader(leader, request).await,
                None => HttpResponse::error(
                    503,
                    "this member follows and the fleet has no leader with an admin API yet; try again",
                ),
            };
        }
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/metrics") => match &self.metrics {
                Some(handle) => {
                    for pool in &self.pools {
                        pool.publish_metrics();
                    }
                    // Rendering folds the samples since the last upkeep and formats every
                    // series: work for a thread of the blocking pool, not the runtime's.
                    let handle = handle.clone();
                    match tokio::task::spawn_blocking(move || handle.render()).await {
                        Ok(text) => HttpResponse::text(200, "text/plain; version=0.0.4", text),
                        Err(error) => HttpResponse::error(
                            500,
                            &format!("rendering the metrics failed: {error}"),
                        ),
                    }
                }
                None => HttpResponse::error(404, "metrics recorder not installed"),
            },
            ("GET", "/status") => HttpResponse::json(200, &self.status()),
            ("GET", "/health") => self.health(),
            ("POST", "/backfill/pause") => {
                self.each_migration(&request.query, |m| m.backfill.set_paused(true))
            }
            ("POST", "/backfill/resume") => {
                self.each_migration(&request.query, |m| m.backfill.set_paused(false))
            }
            ("POST", "/backfill/rate") => {
                let keys = query_number(&request.query, "keys_per_second");
                let bytes = query_number(&request.query, "bytes_per_second");
                if keys.is_none() && bytes.is_none() {
                    return HttpResponse::error(
                        400,
                        "give keys_per_second=N and/or bytes_per_second=N (0 = unlimited)",
                    );
                }
                self.each_migration(&request.query, |m| {
                    if let Some(k) = keys {
                        m.set_rate_limit(k);
                    }
                    if let Some(b) = bytes {
                        m.backfill.set_byte_limit(b);
                    }
                })
            }
            ("POST", "/reload") => {
                let Some(reloader) = &self.reloader else {
                    return HttpResponse::error(404, "reload is not available here");
                };
                match reloader.reload().await {
                    Ok(done) => HttpResponse::json(200, &json!({ "reloaded": true, "done": done })),
                    Err(error) => {
                        let reasons: Vec<String> =
                            error.to_string().lines().map(str::to_string).collect();
                        HttpResponse::json(
                            409,
                            &json!({
                                "error": "the reload was refused; nothing changed",
                                "reasons": reasons,
                            }),
                        )
                    }
                }
            }
            ("POST", "/cutover") => {
                let force = query_flag(&request.query, "force");
                self.flip(&request.query, "cutover", Phase::Cutover, force)
                    .await
            }
            ("POST", "/rollback") => {
                let force = query_flag(&request.query, "force");
                self.flip(&request.query, "rollback", Phase::Migrating, force)
                    .await
            }
            ("POST", "/finalize") => {
                self.flip(&request.query, "finalize", Phase::Finalized, false)
                    .await
            }
            ("POST", "/verify") => {
                let options = VerifyOptions {
                    repair: query_flag(&request.query, "repair"),
                    rounds: query_number(&request.query, "rounds")
                        .map_or(3, |r| r.clamp(1, 20) as u32),
                    ..VerifyOptions::default()
                };
                let Some(migration) = self.migration(&request.query) else {
                    return no_migration();
                };
                if let Some(silent) = verify::silent_server(&migration).await {
                    return HttpResponse::error(
                        409,
                        &format!(
                            "{silent}: a verify pass now would count each of its keys as a difference; bring it back first"
                        ),
                    );
                }
                if !verify::start(&migration, options) {
                    return HttpResponse::error(
                        409,
                        "a verify pass is already running; wait for its result in /status",
                    );
                }
                HttpResponse::json(
                    202,
                    &json!({ "started": true, "status": migration.status_json() }),
                )
            }
            (_, "/metrics" | "/status" | "/health") => HttpResponse::error(405, "use GET"),
            _ => HttpResponse::error(404, &format!("no such endpoint: {}", request.path)),
        }
    }

    /// `GET /health`, for a load balancer or an orchestrator's readiness probe: 200 while
    /// this proxy serves every pool; 503, with the reasons, while it should get no new
    /// clients: it is shutting down (finishing what clients sent, accepting no one), or it
    /// is a fleet member whose lease may have lapsed (every request gets `-TRYAGAIN` until
    /// it is renewed, rule 15), when the other members can serve the client.
    fn health(&self) -> HttpResponse {
        let mut reasons = Vec::new();
        if self.stopping.as_ref().is_some_and(|s| *s.borrow()) {
            reasons.push(
                "shutting down: accepting no new client, finishing requests in flight".to_string(),
            );
        }
        for served in &self.pools {
            // A finalized migration's fence is retired (no flip is left to guard
            // against), so `fenced` is what the session's gate refuses on, and what
            // `/status` reports.
            if let Some(m) = served.migration()
                && m.fenced()
            {
                reasons.push(format!(
                    "pool '{}': fenced, lost contact with coordination: requests get -TRYAGAIN until the lease is renewed",
                    served.name()
                ));
            }
        }
        if reasons.is_empty() {
            HttpResponse::json(200, &json!({ "healthy": true }))
        } else {
            HttpResponse::json(503, &json!({ "healthy": false, "reasons": reasons }))
        }
    }

    /// The migration of `?pool=NAME`, or the only one running.
    fn migration(&self, query: &str) -> Option<Arc<Migration>> {
        let wanted = query_value(query, "pool");
        let mut found = self
            .pools
            .iter()
            .filter(|p| wanted.is_none_or(|name| name == p.name()))
            .filter_map(|p| p.migration().cloned());
        let first = found.next()?;
        // Several migrations and no pool named: ambiguous.
        found.next().is_none().then_some(first)
    }

    /// The fleet of the pool named by the query (or the only migrating pool), if any.
    fn fleet(&self, query: &str) -> Option<Arc<crate::fleet::Fleet>> {
        let wanted = query_value(query, "pool");
        self.pools
            .iter()
            .filter(|p| wanted.is_none_or(|name| name == p.name()))
            .find_map(|p| p.fleet.get().cloned())
    }

    /// Run a flip (`cutover`, `rollback`, `finalize`: to phase `to`) on the migration named
    /// by the query; in a fleet, the fleet-wide flip (on its leader).
    async fn flip(&self, query: &str, action: &str, to: Phase, force: bool) -> HttpResponse {
        let Some(migration) = self.migration(query) else {
            return no_migration();
        };
        let flipped = match (self.fleet(query), to) {
            (Some(fleet), _) => crate::fleet::flip(&fleet, to, force).await,
            (None, Phase::Cutover) => migration.cutover(force).await,
            (None, Phase::Migrating) => migration.rollback(force).await,
            (None, Phase::Finalized) => migration.finalize().await,
        };
        match flipped {
            Ok(flipped) => HttpResponse::json(
                200,
                &json!({
                    action: true,
                    "from": flipped.from.name(),
                    "to": flipped.to.name(),
                    "pause_ms": flipped.pause.as_secs_f64() * 1000.0,
                    "forced": flipped.forced,
                    "status": migration.status_json(),
                }),
            ),
            Err(error) => {
                let reasons = match &error {
                    FlipError::NotReady(reasons) => reasons.clone(),
                    other => vec![other.to_string()],
                };
                HttpResponse::json(
                    409,
                    &json!({
                        "error": error.to_string(),
                        "reasons": reasons,
                        "hint": "fix the reasons, or add ?force=true to override (logged)",
                    }),
                )
            }
        }
    }

    /// Apply `change` to the migration of every pool (or of `?pool=NAME`), then show status.
    fn each_migration(
        &self,
        query: &str,
        change: impl Fn(&crate::migrate::Migration),
    ) -> HttpResponse {
        let wanted = query_value(query, "pool");
        let mut touched = 0;
        for pool in &self.pools {
            if let Some(migration) = pool.migration()
                && wanted.is_none_or(|name| name == pool.name())
            {
                change(migration);
                touched += 1;
            }
        }
        if touched == 0 {
            return no_migration();
        }
        HttpResponse::json(200, &self.status())
    }

    /// `/status`: the pools and their servers.
    fn status(&self) -> serde_json::Value {
        let pools: Vec<serde_json::Value> = self
            .pools
            .iter()
            .map(|p| {
                json!({
                    "name": p.name(),
                    "client_connections": p.pool.counters.client_connections.load(Relaxed),
                    "servers": p.pool.server_states(),
                    "migration": p.migration().map(|m| m.status_json()),
                    "fleet": p.fleet.get().map(|f| f.status_json()),
                })
            })
            .collect();
        let phase = self
            .pools
            .iter()
            .find_map(|p| p.migration())
            .map(|m| m.phase().name());
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "phase": phase,
            "pools": pools,
            "busy_poll": self.busy_poll.as_ref().map(|b| b.status_json()),
        })
    }
}

/// The answer when no migration matches.
fn no_migration() -> HttpResponse {
    HttpResponse::error(
        409,
        "no migration is running (or no such pool; with several, name one with ?pool=NAME)",
    )
}

/// Whether a query flag is set (`name=true` or `name=1`, or just `name`).
fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|pair| {
        pair == name || matches!(pair.split_once('='), Some((k, v)) if k == name && (v == "true" || v == "1"))
    })
}

/// The value of `name` in a query string.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A number in a query string.
fn query_number(query: &str, name: &str) -> Option<u64> {
    query_value(query, name).and_then(|v| v.parse().ok())
}

/// Serve the admin API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Admin) {
    let admin = Arc::new(admin);
    http::serve(listener, admin).await;
}
