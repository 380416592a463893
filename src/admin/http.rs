//! The admin API's HTTP transport, on hyper (HTTP/1.1) with an axum router: bounded
//! header and body sizes, and a time limit for a client to send its request, so a stuck
//! or hostile local client cannot hold the admin API. [`Admin::handle`](super::Admin)
//! sees a plain [`HttpRequest`] and answers an [`HttpResponse`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::Admin;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// How long a client has to send its request head, and then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most admin connections open at once: a flood of them cannot take the file descriptors
/// the proxy's clients need (and clients over `--max-clients` cannot take the admin's).
const MAX_CONNECTIONS: usize = 64;
/// The answer of a connection over [`MAX_CONNECTIONS`], before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 49\r\nConnection: close\r\n\r\n{\"error\":\"too many admin connections; try again\"}";

/// A parsed admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string (after `?`), possibly empty.
    pub query: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A JSON response (serialized by serde_json, so any text in it is escaped as JSON).
    pub fn json(status: u16, body: &serde_json::Value) -> HttpResponse {
        let mut body = body.to_string().into_bytes();
        body.push(b'\n');
        HttpResponse {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A JSON error response: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> HttpResponse {
        HttpResponse::json(status, &serde_json::json!({ "error": message }))
    }

    /// A plain-text response.
    pub fn text(status: u16, content_type: &'static str, body: String) -> HttpResponse {
        HttpResponse {
            status,
            content_type,
            body: body.into_bytes(),
        }
    }
}

/// Serve `admin` on `listener` until the task is dropped: one hyper HTTP/1.1 connection
/// task per client.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let app = Router::new().fallback(handle).with_state(admin);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let busy = async {
                    let _ = stream.write_all(BUSY).await;
                    let _ = stream.shutdown().await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), busy).await;
            });
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            // One request per connection, as scrapers and `cutover ctl` expect.
            http.timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false);
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Turn an HTTP request into an [`HttpRequest`] (the body read within the limits), let
/// the admin answer it, and turn the answer into an HTTP response.
async fn handle(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(body)) => body.to_vec(),
        Ok(Err(_)) => return to_http(HttpResponse::error(413, "body too large")),
        Err(_) => return to_http(HttpResponse::error(408, "the body did not arrive in time")),
    };
    let request = HttpRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        authorization: parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
    };
    to_http(admin.handle(&request).await)
}

/// An [`HttpResponse`] as an HTTP response.
fn to_http(response: HttpResponse) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = HeaderValue::from_static(response.content_type);
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        response.body,
    )
        .into_response()
}
