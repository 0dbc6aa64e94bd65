//! What every StreamLens HTTP surface shares: counting and timing each request, bounding it
//! by a timeout with a JSON answer, and serving Prometheus metrics.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Instrument as _;

use metrics_core::error::ErrorBody;

/// The header that carries a request's id: taken from the client when it sends one, made up
/// otherwise, answered back, logged, and carried on to the Kafka records it produced.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The port a service's listener is bound to (0 when the socket cannot say).
pub fn port(listener: &tokio::net::TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

/// Serves `service` (a router, or a router wrapped by [`Edge`]) on `listener` until
/// `shutdown` resolves, then stops accepting and lets the requests in flight finish. `name`
/// is the service, for the log.
pub async fn serve<S>(
    name: &str,
    listener: tokio::net::TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let address = listener.local_addr()?;
    tracing::info!(%address, "{name} listening");
    axum::serve(listener, axum::ServiceExt::into_make_service(service))
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")
}

/// The labels of a request's metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    /// The route the request matched (`/v1/metrics`, never a path with its values), or
    /// `unmatched`; shared, since it is one of a few.
    pub route: Arc<String>,
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

/// What every request of a StreamLens HTTP service passes through, outside its router: its
/// id (the client's `x-request-id`, or a new UUID) in the request, the answer and a tracing
/// span; a JSON 408 when it takes longer than the timeout (a slow client or a stuck
/// dependency); a JSON 500, logged, when its handler panics, instead of a connection closed
/// without a word; and its count and duration by method, route and status.
///
/// One layer around the whole router rather than a stack of them on every route: a layer
/// on an axum `Router` wraps each route again, so each costs the request a service clone, a
/// boxed future and a boxed body. Outside the router the matched route is not known yet, so
/// [`Edge`] matches the path itself against the service's route patterns, with the same
/// matcher (`matchit`) and the same patterns the router uses.
#[derive(Debug, Clone)]
pub struct Edge {
    metrics: HttpMetrics,
    timeout: Duration,
    routes: Arc<matchit::Router<Arc<String>>>,
    unmatched: Arc<String>,
}

impl Edge {
    /// `routes` are the router's path patterns (`/v1/alerts/rules/{id}`); a request whose
    /// path matches none is counted under `unmatched`.
    pub fn new<'a>(
        metrics: HttpMetrics,
        timeout: Duration,
        routes: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut table = matchit::Router::new();
        for route in routes {
            // A pattern the matcher refuses or already holds was refused by the router too.
            let _ = table.insert(route, Arc::new(route.to_owned()));
        }
        Self {
            metrics,
            timeout,
            routes: Arc::new(table),
            unmatched: Arc::new("unmatched".to_owned()),
        }
    }

    fn route(&self, path: &str) -> Arc<String> {
        self.routes
            .at(path)
            .map_or_else(|_| Arc::clone(&self.unmatched), |m| Arc::clone(m.value))
    }
}

impl<S> tower::Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            edge: Arc::new(self.clone()),
            inner,
        }
    }
}

/// A service wrapped by [`Edge`].
#[derive(Debug, Clone)]
pub struct EdgeService<S> {
    /// Shared: each request takes one reference, not one per metric family and table.
    edge: Arc<Edge>,
    inner: S,
}

impl<S> tower::Service<Request> for EdgeService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let id = match req.headers().get(REQUEST_ID_HEADER) {
            Some(id) => id.clone(),
            None => {
                let mut text = uuid::Uuid::encode_buffer();
                let made = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
                let id = HeaderValue::from_str(made).expect("a UUID is a header value");
                req.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
                id
            }
        };
        let method = method_label(req.method());
        let route = self.edge.route(req.uri().path());
        let span = tracing::info_span!(
            "http",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = %String::from_utf8_lossy(id.as_bytes()),
        );
        // The service that was made ready answers this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let edge = Arc::clone(&self.edge);
        let answer = async move {
            let handled = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
                Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            match handled {
                Ok(Ok(response)) => response,
                Err(_) => {
                    tracing::error!("a request handler panicked");
                    refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the service failed on this request; it is logged",
                    )
                }
            }
        };
        Box::pin(
            async move {
                let mut response = match tokio::time::timeout(edge.timeout, answer).await {
                    Ok(response) => response,
                    Err(_) => refusal(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request took longer than the server's request timeout",
                    ),
                };
                let elapsed = started.elapsed();
                let status = response.status();
                if status.is_server_error() {
                    tracing::error!(
                        status = status.as_u16(),
                        latency_ms = elapsed.as_millis(),
                        "request failed"
                    );
                } else {
                    tracing::debug!(
                        status = status.as_u16(),
                        latency_ms = elapsed.as_millis(),
                        "request answered"
                    );
                }
                let labels = HttpLabels {
                    method,
                    route,
                    status: status.as_u16(),
                };
                edge.metrics.requests.get_or_create(&labels).inc();
                edge.metrics
                    .duration
                    .get_or_create(&labels)
                    .observe(elapsed.as_secs_f64());
                response.headers_mut().insert(REQUEST_ID_HEADER, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

fn refusal(status: StatusCode, error: &'static str, message: &'static str) -> Response {
    (status, Json(ErrorBody::new(error, message))).into_response()
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
    use tower::{Layer as _, ServiceExt};

    use super::*;

    fn app(registry: &mut Registry) -> EdgeService<Router> {
        let metrics = HttpMetrics::register(registry, || Histogram::new([0.1]));
        let router = Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/items/{id}", get(|| async { "item" }))
            .route(
                "/boom",
                get(|| async {
                    let bytes = "\u{80}".as_bytes();
                    // Slicing inside a character: the kind of bug that panics.
                    String::from_utf8_lossy(&bytes[..1]).into_owned()
                        + std::str::from_utf8(&bytes[..1]).expect("a whole character")
                }),
            );
        let routes = ["/fast", "/slow", "/items/{id}", "/boom"];
        Edge::new(metrics, Duration::from_millis(50), routes).layer(router)
    }

    async fn get_status(app: &EdgeService<Router>, path: &str) -> (StatusCode, String) {
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
    async fn a_handler_that_panics_answers_a_json_500_with_the_request_id_and_is_counted() {
        let mut registry = Registry::default();
        let app = app(&mut registry);
        let response = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = response.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"], "internal");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/boom",status="500"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_clients_request_id_reaches_the_handler_and_the_answer() {
        let seen = Router::new().route(
            "/echo",
            get(|headers: axum::http::HeaderMap| async move {
                headers[REQUEST_ID_HEADER].to_str().unwrap().to_owned()
            }),
        );
        let metrics = HttpMetrics::register(&mut Registry::default(), || Histogram::new([0.1]));
        let app = Edge::new(metrics, Duration::from_secs(5), ["/echo"]).layer(seen);
        let request = Request::get("/echo")
            .header(REQUEST_ID_HEADER, "client-42")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "client-42");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"client-42");
        // Without one, the handler and the answer see the same new id.
        let response = app
            .oneshot(Request::get("/echo").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let answered = response.headers()[REQUEST_ID_HEADER].clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&bytes[..], answered.as_bytes());
        assert!(uuid::Uuid::parse_str(answered.to_str().unwrap()).is_ok());
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
        assert_eq!(get_status(&app, "/items/7").await.0, StatusCode::OK);
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
        // A route with a parameter is counted under its pattern, not its path.
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 1"#
            ),
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
