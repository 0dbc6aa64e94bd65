//! What every StreamLens HTTP surface shares: counting and timing each request, bounding it
//! by a timeout with a JSON answer, and serving Prometheus metrics.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use metrics_core::error::ErrorBody;

/// The header that carries a request's id: taken from the client when it sends one, made up
/// otherwise, answered back, logged, and carried on to the Kafka records it produced.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Wraps every request of `router` with its id (the client's `x-request-id`, or a new UUID),
/// a tracing span that carries it, and the id in the answer.
pub fn with_request_ids<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
) -> axum::Router<S> {
    use tower_http::request_id::{
        MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
    };
    let header = header::HeaderName::from_static(REQUEST_ID_HEADER);
    router.layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(header.clone(), MakeRequestUuid))
            .layer(
                tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }),
            )
            .layer(PropagateRequestIdLayer::new(header))
            // A handler that panics answers a JSON 500, and the panic is logged, instead of
            // the connection closing without a word.
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                |_: Box<dyn std::any::Any + Send>| {
                    tracing::error!("a request handler panicked");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Json(ErrorBody::new(
                            "internal",
                            "the service failed on this request; it is logged",
                        )),
                    )
                        .into_response()
                },
            )),
    )
}

/// The port a service's listener is bound to (0 when the socket cannot say).
pub fn port(listener: &tokio::net::TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets
/// the requests in flight finish. `name` is the service, for the log.
pub async fn serve(
    name: &str,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "{name} listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")
}

/// The labels of a request's metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    /// The route the request matched (`/v1/metrics`, never a path with its values), or
    /// `unmatched`.
    pub route: String,
    pub status: u16,
}

/// A method's name as a label: the standard ones by name, any other as `other`, so a client
/// inventing methods cannot add label values without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Requests answered and their durations, by method, route and status.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Family<HttpLabels, Histogram>,
}

impl HttpMetrics {
    /// Registers `http_requests` and `http_request_duration_seconds`, the durations in
    /// histograms made by `histogram`.
    pub fn register(registry: &mut Registry, histogram: fn() -> Histogram) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            metrics.duration.clone(),
        );
        metrics
    }
}

/// The state [`measure_and_bound`] needs.
#[derive(Debug, Clone)]
pub struct Guard {
    pub metrics: HttpMetrics,
    pub timeout: Duration,
}

/// Counts and times every request, and answers a JSON 408 when one takes longer than the
/// timeout (a slow client or a stuck dependency).
pub async fn measure_and_bound(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = match tokio::time::timeout(guard.timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            Json(ErrorBody::new(
                "request_timeout",
                "the request took longer than the server's request timeout",
            )),
        )
            .into_response(),
    };
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    guard.metrics.requests.get_or_create(&labels).inc();
    guard
        .metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A registry in the text format Prometheus scrapes, as an HTTP answer.
pub fn openmetrics(registry: &Registry) -> Response {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    fn app(registry: &mut Registry) -> Router {
        let guard = Guard {
            metrics: HttpMetrics::register(registry, || Histogram::new([0.1])),
            timeout: Duration::from_millis(50),
        };
        Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                guard,
                measure_and_bound,
            ))
    }

    async fn get_status(app: &Router, path: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_a_json_500_with_the_request_id() {
        let app = with_request_ids(Router::new().route(
            "/boom",
            get(|| async {
                let bytes = "\u{80}".as_bytes();
                // Slicing inside a character: the kind of bug that panics.
                String::from_utf8_lossy(&bytes[..1]).into_owned()
                    + std::str::from_utf8(&bytes[..1]).expect("a whole character")
            }),
        ));
        let response = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(REQUEST_ID_HEADER));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"], "internal");
    }

    #[tokio::test]
    async fn a_request_past_the_timeout_is_a_json_408_and_every_request_is_counted() {
        let mut registry = Registry::default();
        let app = app(&mut registry);
        assert_eq!(get_status(&app, "/fast").await.0, StatusCode::OK);
        let invented = Request::builder()
            .method("PURGE")
            .uri("/nowhere")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(invented).await.unwrap();
        let (status, body) = get_status(&app, "/slow").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(body.contains(r#""error":"request_timeout""#), "{body}");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/fast",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/slow",status="408"} 1"#),
            "{text}"
        );
        // A method nobody registered and a path no route matches add no label values of
        // their own.
        assert!(
            text.contains(
                r#"http_requests_total{method="other",route="unmatched",status="404"} 1"#
            ),
            "{text}"
        );
    }
}
