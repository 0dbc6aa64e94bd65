//! The dashboard at `/`: one page, a script and a style sheet, embedded in the binary so
//! there is nothing to build or deploy beside it. The page calls the same `/v1/*` endpoints
//! as any client, with the API key the user enters.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// Only the page's own files run, and the key it holds is sent to this origin alone.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Assets change with the binary; revalidating costs little and never shows stale code.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
}

/// The dashboard page.
#[utoipa::path(get, path = "/", tag = "dashboard", security(()),
    responses((status = 200, description = "The page", content_type = "text/html")))]
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/assets/dashboard.js", tag = "dashboard", security(()),
    responses((status = 200, description = "The script", content_type = "text/javascript")))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's style sheet.
#[utoipa::path(get, path = "/assets/dashboard.css", tag = "dashboard", security(()),
    responses((status = 200, description = "The style sheet", content_type = "text/css")))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}
