//! A fleet member's controls go to its leader: `cutover ctl cutover|rollback|finalize|
//! verify` work against any member. The request is sent on, with the caller's
//! `Authorization` (a fleet's members share one admin token), to the leader's admin API,
//! which each member publishes in etcd; the leader's answer comes back with
//! `forwarded_to` added.

use std::time::Duration;

use serde_json::json;

use super::ctl::HttpFailure;
use super::http::{HttpRequest, HttpResponse};

/// The paths sent on to the leader.
pub const FORWARDED: [&str; 4] = ["/cutover", "/rollback", "/finalize", "/verify"];

/// How long the leader may take (a flip waits for the fleet's barrier).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Send `request` to the leader's admin API at `leader` and answer with its answer.
pub async fn to_leader(leader: String, request: &HttpRequest) -> HttpResponse {
    let url = if request.query.is_empty() {
        format!("http://{leader}{}", request.path)
    } else {
        format!("http://{leader}{}?{}", request.path, request.query)
    };
    let authorization = request.authorization.clone();
    let sent = tokio::task::spawn_blocking(move || {
        super::ctl::send("POST", &url, authorization.as_deref(), TIMEOUT)
    })
    .await;
    match sent {
        Ok(Ok((status, body))) => {
            let mut answer: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|_| json!({ "error": body }));
            if let Some(fields) = answer.as_object_mut() {
                fields.insert("forwarded_to".into(), json!(leader));
            }
            HttpResponse::json(status, &answer)
        }
        Ok(Err(HttpFailure::Unreachable(reason) | HttpFailure::Unreadable(reason))) => {
            HttpResponse::error(
                502,
                &format!("the fleet's leader (admin {leader}) did not answer: {reason}"),
            )
        }
        Err(_) => HttpResponse::error(500, "forwarding to the fleet's leader failed"),
    }
}
