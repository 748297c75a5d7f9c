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

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ACCEPT, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

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

/// Accepts and answers until an accept fails.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener
            .accept()
            .await
            .context("accepting a metrics connection")?;
        let scrape = scrape.clone();
        tokio::spawn(async move {
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
