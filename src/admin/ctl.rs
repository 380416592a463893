//! `cutover ctl`: the admin API from a terminal. Each command calls one endpoint and prints
//! a readable summary (a bar for the backfill, the phase, lag, mismatches, what blocks a
//! cutover; written by `status_text.rs`); errors say what to do next.

use std::time::Duration;

use serde_json::Value;

use super::status_text::{flipped, migrations, summary, verify_text};

/// How long one call may take (a flip waits for in-flight writes, at most a few seconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What `cutover ctl` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// `GET /status`.
    Status,
    /// `POST /cutover`.
    Cutover {
        /// Override the readiness checks.
        force: bool,
    },
    /// `POST /rollback`.
    Rollback {
        /// Override the dirty-key check.
        force: bool,
    },
    /// `POST /finalize`.
    Finalize,
    /// `POST /verify`, then follow it to its result unless `wait` is false.
    Verify {
        /// Copy differing keys again.
        repair: bool,
        /// Wait for the result.
        wait: bool,
    },
    /// `POST /backfill/pause`.
    Pause,
    /// `POST /backfill/resume`.
    Resume,
}

/// Where the admin API is and how to call it.
#[derive(Debug, Clone)]
pub struct CtlOptions {
    /// `HOST:PORT` of the admin API.
    pub admin: String,
    /// The bearer token for POSTs, if the proxy has one.
    pub token: Option<String>,
    /// The pool, when the proxy migrates several.
    pub pool: Option<String>,
}

/// Why a ctl command failed; the message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The admin API cannot be reached.
    #[error(
        "cannot reach the admin API at {admin}: {reason}. Is cutover running, with --admin {admin}? (use `cutover ctl --admin HOST:PORT`)"
    )]
    Unreachable {
        /// The address tried.
        admin: String,
        /// Why.
        reason: String,
    },
    /// The call was refused; the API's own explanation follows.
    #[error("{0}")]
    Refused(String),
    /// A verify pass found differences and did not repair them: the report, for stdout,
    /// and a non-zero exit status.
    #[error("{0}")]
    Differences(String),
    /// The answer was not what the API sends.
    #[error("unexpected answer from the admin API: {0}")]
    Garbled(String),
}

/// Run `command` and return what to print.
pub fn run(options: &CtlOptions, command: &CtlCommand) -> Result<String, CtlError> {
    let pool = options
        .pool
        .as_deref()
        .map(|p| format!("pool={p}"))
        .unwrap_or_default();
    let query = |extra: &[&str]| -> String {
        let parts: Vec<&str> = std::iter::once(pool.as_str())
            .chain(extra.iter().copied())
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    };
    let force = |f: bool| if f { "force=true" } else { "" };
    match command {
        CtlCommand::Status => Ok(summary(&call(options, "GET", "/status")?)),
        CtlCommand::Cutover { force: f } => Ok(flipped(&call(
            options,
            "POST",
            &format!("/cutover{}", query(&[force(*f)])),
        )?)),
        CtlCommand::Rollback { force: f } => Ok(flipped(&call(
            options,
            "POST",
            &format!("/rollback{}", query(&[force(*f)])),
        )?)),
        CtlCommand::Finalize => Ok(flipped(&call(
            options,
            "POST",
            &format!("/finalize{}", query(&[])),
        )?)),
        CtlCommand::Pause => Ok(summary(&call(
            options,
            "POST",
            &format!("/backfill/pause{}", query(&[])),
        )?)),
        CtlCommand::Resume => Ok(summary(&call(
            options,
            "POST",
            &format!("/backfill/resume{}", query(&[])),
        )?)),
        CtlCommand::Verify { repair, wait } => {
            let repair = if *repair { "repair=true" } else { "" };
            call(options, "POST", &format!("/verify{}", query(&[repair])))?;
            if !*wait {
                return Ok("verify started; follow it with `cutover ctl status`\n".into());
            }
            follow_verify(options)
        }
    }
}

/// Poll `/status` until the verify pass ends, showing keys checked, then print its report.
fn follow_verify(options: &CtlOptions) -> Result<String, CtlError> {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let status = call(options, "GET", "/status")?;
        let Some(migration) = migrations(&status).into_iter().find(|m| {
            options
                .pool
                .as_deref()
                .is_none_or(|p| m["source"].as_str() == Some(p))
        }) else {
            return Err(CtlError::Garbled("no migration in /status".into()));
        };
        let verify = &migration["verify"];
        if verify["running"].as_bool() == Some(true) {
            if terminal {
                eprint!(
                    "\rverify: {} keys checked",
                    verify["checked"].as_u64().unwrap_or(0)
                );
            }
            continue;
        }
        if terminal {
            eprintln!();
        }
        let last = &verify["last"];
        let text = verify_text(last);
        if last["differences"].as_u64().unwrap_or(0) > 0 && last["repair"].as_bool() != Some(true) {
            return Err(CtlError::Differences(text));
        }
        return Ok(text);
    }
}

/// Why an HTTP call to an admin API got no answer to read.
#[derive(Debug)]
pub(super) enum HttpFailure {
    /// The call did not go through.
    Unreachable(String),
    /// The answer's body could not be read.
    Unreadable(String),
}

/// One HTTP call (`GET`, or `POST` with no body) to `url` with `authorization`, waiting
/// at most `timeout`: the status and the body, whatever the status (blocking; `cutover
/// ctl`, and a fleet member forwarding a control to its leader).
pub(super) fn send(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), HttpFailure> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let sent = if method == "POST" {
        let mut request = agent.post(url);
        if let Some(auth) = authorization {
            request = request.header("Authorization", auth);
        }
        request.send_empty()
    } else {
        let mut request = agent.get(url);
        if let Some(auth) = authorization {
            request = request.header("Authorization", auth);
        }
        request.call()
    };
    let mut answer = sent.map_err(|e| HttpFailure::Unreachable(e.to_string()))?;
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .read_to_string()
        .map_err(|e| HttpFailure::Unreadable(e.to_string()))?;
    Ok((status, body))
}

/// One HTTP call; the body parsed as JSON. Non-2xx answers become errors with the API's
/// reasons and hint.
fn call(options: &CtlOptions, method: &str, path: &str) -> Result<Value, CtlError> {
    let url = format!("http://{}{path}", options.admin);
    let auth = options.token.as_deref().map(|t| format!("Bearer {t}"));
    let (status, body) =
        send(method, &url, auth.as_deref(), CALL_TIMEOUT).map_err(|failure| match failure {
            HttpFailure::Unreachable(reason) => CtlError::Unreachable {
                admin: options.admin.clone(),
                reason,
            },
            HttpFailure::Unreadable(reason) => CtlError::Garbled(reason),
        })?;
    let body = body.as_str();
    let json: Value = serde_json::from_str(body).map_err(|e| {
        CtlError::Garbled(format!(
            "{e}: {}",
            body.chars().take(200).collect::<String>()
        ))
    })?;
    match status {
        200..=299 => Ok(json),
        401 => Err(CtlError::Refused(
            "the admin API needs a token for this call: pass --token TOKEN or set CUTOVER_ADMIN_TOKEN (the proxy's --admin-token)".into(),
        )),
        _ => {
            let mut message = json["error"].as_str().unwrap_or("refused").to_string();
            if let Some(reasons) = json["reasons"].as_array()
                && reasons.len() > 1
            {
                for reason in reasons {
                    message.push_str(&format!("\n  - {}", reason.as_str().unwrap_or("")));
                }
            }
            if let Some(hint) = json["hint"].as_str() {
                message.push_str(&format!("\n{hint}"));
            }
            Err(CtlError::Refused(message))
        }
    }
}
