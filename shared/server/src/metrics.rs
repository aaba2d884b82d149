//! Prometheus metrics, served as OpenMetrics text on the operations port, and the tower layer
//! that counts and times every gRPC call.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCallLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethodLabels {
    pub method: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// The metrics every Pirus process exports. A service registers its own with
/// [`MetricsBuilder::register`] before the registry is frozen behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub grpc_calls: Family<GrpcCallLabels, Counter>,
    pub grpc_call_seconds: HistogramFamily<GrpcMethodLabels>,
    pub db_up: Gauge,
    pub ready: Gauge,
}

#[derive(Debug)]
pub struct MetricsBuilder {
    metrics: Metrics,
}

impl MetricsBuilder {
    /// `service` becomes the `service` label of `pirus_build_info`.
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::with_prefix("pirus");
        let grpc_calls = Family::<GrpcCallLabels, Counter>::default();
        let grpc_call_seconds: HistogramFamily<GrpcMethodLabels> =
            Family::new_with_constructor(latency_histogram);
        let db_up = Gauge::default();
        let ready = Gauge::default();
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("service".to_owned(), service.to_owned()),
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ])
            .set(1);
        registry.register("build_info", "Build of this process", build_info);
        registry.register(
            "grpc_calls",
            "gRPC calls answered, by method and status code",
            grpc_calls.clone(),
        );
        registry.register(
            "grpc_call_seconds",
            "Time from a gRPC request to its response headers, by method",
            grpc_call_seconds.clone(),
        );
        registry.register(
            "db_up",
            "1 while the database answers and the schema is migrated",
            db_up.clone(),
        );
        registry.register(
            "ready",
            "1 while the process is ready to serve",
            ready.clone(),
        );
        Self {
            metrics: Metrics {
                registry,
                grpc_calls,
                grpc_call_seconds,
                db_up,
                ready,
            },
        }
    }

    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) -> &mut Self {
        self.metrics.registry.register(name, help, metric);
        self
    }

    pub fn build(self) -> Arc<Metrics> {
        Arc::new(self.metrics)
    }
}

impl Metrics {
    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Counts and times every gRPC call (`pirus_grpc_calls_total`, `pirus_grpc_call_seconds`).
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: std::sync::Arc::clone(&self.metrics),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let metrics = std::sync::Arc::clone(&self.metrics);
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // Errors travel in the headers of a trailers-only response; a response that
            // starts streaming reports its status in trailers, counted here as OK.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .map(|v| format!("{:?}", tonic::Code::from_bytes(v.as_bytes())))
                    .unwrap_or_else(|| "Ok".to_owned()),
                Err(_) => "Internal".to_owned(),
            };
            metrics
                .grpc_call_seconds
                .get_or_create(&GrpcMethodLabels {
                    method: method.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .grpc_calls
                .get_or_create(&GrpcCallLabels { method, code })
                .inc();
            result
        })
    }
}

/// Keeps label cardinality bounded: a client can send any path.
fn method_label(path: &str) -> String {
    let known = ["/pirus.", "/grpc.health.", "/grpc.reflection."];
    if known.iter().any(|p| path.starts_with(p)) && path.len() < 128 {
        path.to_owned()
    } else {
        "other".to_owned()
    }
}
