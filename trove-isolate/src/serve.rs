//! The metrics endpoint: HTTP/1.1 over hyper, `GET /metrics` and nothing else.
//!
//! Content negotiation as Prometheus does it: a scraper that accepts
//! `application/openmetrics-text` gets OpenMetrics, anyone else (curl, `promtool check metrics`,
//! older scrapers) the classic text format 0.0.4. The server only serves: what the body says is
//! [`crate::metrics`]' business, where the numbers come from the daemon's.

use std::{
    convert::Infallible,
    sync::{atomic::AtomicU32, Arc, Mutex, RwLock},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ACCEPT, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    daemon::DaemonStats,
    datapath::PinnedMaps,
    metrics::{self, Format},
    state::State,
};

/// What a scrape reads: the pinned counters, the record of what is enforced, the daemon's own
/// counts. The daemon updates the last two; the server only reads them.
pub struct Scrape {
    pub maps: PinnedMaps,
    pub state: RwLock<State>,
    pub stats: Mutex<DaemonStats>,
    /// `[drops] log_per_second` in force (a reload may change it).
    pub drop_log_per_second: AtomicU32,
}

/// A slow client cannot hold a connection open longer than this while sending its request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Metrics connections served at once. More wait in the listen backlog: clients that hold
/// connections open cannot take the daemon's file descriptors (at its limit, no NIC move could
/// be followed).
pub const MAX_CONNECTIONS: usize = 64;

/// Accepts and answers, for as long as the daemon runs.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots.clone().acquire_owned().await?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed("metrics", &e).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(respond(&request, &scrape)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}

/// An accept that fails (out of file descriptors or memory, a connection reset before it was
/// taken) fails for the moment, not for good: logged, then tried again shortly. A flood of
/// connections never stops the daemon.
pub async fn accept_failed(what: &str, e: &std::io::Error) {
    log::warn!("accepting a {what} connection: {e}; trying again in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn respond(request: &Request<Incoming>, scrape: &Scrape) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    let format = Format::from_accept(
        request
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    let counts = match scrape.maps.counts() {
        Ok(counts) => counts,
        Err(e) => {
            log::warn!("reading the counters for a scrape: {e:#}");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the counters: {e:#}\n"),
            );
        }
    };
    let unsent = scrape.maps.events_suppressed().unwrap_or_else(|e| {
        log::warn!("reading the drop event budget for a scrape: {e:#}");
        0
    });
    let body = {
        let state = scrape.state.read().unwrap_or_else(|e| e.into_inner());
        let mut stats = scrape
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        stats.drop_events_unsent = unsent;
        metrics::render_as(format, &counts, &state, &stats)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(format.content_type()),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
