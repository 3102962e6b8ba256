//! The background export of finished spans: a bounded queue the request path only ever
//! `try_send`s into, and one tokio task that batches what it holds and POSTs it to the
//! collector as OTLP/HTTP protobuf. A slow or unreachable collector fills the queue; further
//! spans are dropped and counted, and no request ever waits for it.
//!
//! Why not the SDK's `BatchSpanProcessor`: it runs on a thread of its own and blocks it on each
//! export, and its drop count is private (logged at shutdown only). This is the same bounded
//! queue and batching on the runtime we already have, with the drops in `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Request, Response};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanExporter as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{SampleRatio, TraceSettings};
use crate::metrics::TraceMetrics;

/// Spans in one export (the OpenTelemetry SDK's default batch size).
const MAX_BATCH: usize = 512;
/// How long the exporter waits after a span for others to join its batch: under light load
/// one export a second at most, and a span reaches the collector within about a second.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The largest collector answer read (it is a small protobuf status).
const MAX_ANSWER: usize = 64 * 1024;

/// The running trace export of a gateway (tracing on).
pub struct Traces {
    queue: mpsc::Sender<SpanData>,
    sample: SampleRatio,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    metrics: TraceMetrics,
    /// The first full queue is logged; after that only the counter moves.
    warned_full: AtomicBool,
    /// Tells the export task to send what is queued and stop.
    stop: CancellationToken,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    export_timeout: Duration,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// Builds the exporter and starts its task. Must be called inside a tokio runtime.
    pub fn start(settings: &TraceSettings, metrics: TraceMetrics) -> Result<Traces, String> {
        let exporter = exporter(settings)?;
        let (queue, pending) = mpsc::channel(settings.max_queue);
        let stop = CancellationToken::new();
        let worker = Worker {
            pending,
            exporter,
            metrics: metrics.clone(),
            endpoint: settings.endpoint.clone(),
            timeout: settings.export_timeout,
            failing: false,
        };
        let task = tokio::spawn(worker.run(stop.clone()));
        Ok(Traces {
            queue,
            sample: settings.sample,
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("authgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            metrics,
            warned_full: AtomicBool::new(false),
            stop,
            task: std::sync::Mutex::new(Some(task)),
            export_timeout: settings.export_timeout,
        })
    }

    /// A random trace id (never all zero, which W3C forbids).
    pub fn new_trace_id(&self) -> [u8; 16] {
        loop {
            let id = self.ids.new_trace_id();
            if id != TraceId::INVALID {
                return id.to_bytes();
            }
        }
    }

    /// A random span id (never all zero).
    pub fn new_span_id(&self) -> [u8; 8] {
        loop {
            let id = self.ids.new_span_id();
            if id != SpanId::INVALID {
                return id.to_bytes();
            }
        }
    }

    /// Whether a trace started here is recorded (`sample_ratio`).
    pub fn keeps(&self, trace_id: &[u8; 16]) -> bool {
        self.sample.keeps(trace_id)
    }

    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }

    /// Queues a finished span; never waits. A full queue drops it.
    pub fn submit(&self, span: SpanData) {
        if self.queue.try_send(span).is_ok() {
            return;
        }
        self.metrics.dropped_queue_full.inc();
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the trace export queue is full (the collector is slow or unreachable): spans are dropped and counted in authgate_trace_spans_dropped_total; requests are not affected. Logged once."
            );
        }
    }

    /// Sends what is queued and stops the export task, within the export timeout.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task
            && tokio::time::timeout(self.export_timeout, task)
                .await
                .is_err()
        {
            tracing::warn!("the last trace export did not finish in time; its spans are lost");
        }
    }
}

/// The OTLP/HTTP protobuf exporter, sending through our HTTP client.
fn exporter(settings: &TraceSettings) -> Result<SpanExporter, String> {
    let client = reqwest::Client::builder()
        .timeout(settings.export_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let headers = settings
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let mut exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(Collector(client))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.export_timeout)
        .with_headers(headers)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}

/// The export task's state.
struct Worker {
    pending: mpsc::Receiver<SpanData>,
    exporter: SpanExporter,
    metrics: TraceMetrics,
    endpoint: String,
    timeout: Duration,
    /// The last export failed (logged once until one succeeds again).
    failing: bool,
}

impl Worker {
    async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                got = self.pending.recv_many(&mut batch, MAX_BATCH) => if got == 0 { break },
                () = stop.cancelled() => break,
            }
            self.fill(&mut batch, &stop).await;
            self.export(&mut batch).await;
        }
        // Stopping: what is queued goes out in the last exports.
        self.pending.close();
        while self.pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.export(&mut batch).await;
        }
    }

    /// Lets more spans join the batch for up to [`BATCH_DELAY`].
    async fn fill(&mut self, batch: &mut Vec<SpanData>, stop: &CancellationToken) {
        let deadline = Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                got = tokio::time::timeout_at(deadline, self.pending.recv_many(batch, room)) => {
                    if !matches!(got, Ok(n) if n > 0) {
                        return;
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
        let count = spans.len() as u64;
        // The exporter bounds its own attempts and retries by the timeout; this is the backstop.
        let outcome = tokio::time::timeout(self.timeout, self.exporter.export(spans)).await;
        let error = match outcome {
            Ok(Ok(())) => {
                self.metrics.exported.inc_by(count);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(endpoint = %self.endpoint, "trace export works again");
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        self.metrics.export_failures.inc();
        self.metrics.dropped_export_failed.inc_by(count);
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(endpoint = %self.endpoint, %error, "trace export failed: its spans are dropped (authgate_trace_spans_dropped_total); requests are not affected. Logged again only after an export succeeds");
        }
    }
}

/// Sends the exporter's requests with our reqwest (rustls on aws-lc), so the OTLP crates bring
/// no HTTP client or TLS stack of their own.
#[derive(Debug)]
struct Collector(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let mut resp = self.0.execute(request).await.map_err(|e| e.without_url())?;
        let mut answer = Response::builder().status(resp.status());
        // The exporter's back-off honours the collector's Retry-After.
        if let Some(wait) = resp.headers().get(RETRY_AFTER) {
            answer = answer.header(RETRY_AFTER, wait);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.without_url())? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err("the collector's answer is larger than 64 KiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(answer.body(Bytes::from(body))?)
    }
}
