//! The agent's read-only status page, its JSON API and the restore-test reports it links
//! to, over HTTP. What they show is gathered and rendered by `pgvault_core::status`; this
//! module only routes requests and checks access (`pgvault_core::status::access`).
//!
//! - `/` and `/policies/NAME`: the HTML page for every policy, or one;
//! - `/api/v1/status` and `/api/v1/policies/NAME`: the same data as JSON (docs/API.md);
//! - `/reports/NAME/ID.html|json|md`: a stored report, served from the repository.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pgvault_core::policy::Policy;
use pgvault_core::runner::SharedStatus;
use pgvault_core::status::{self, access::Access, PolicyOverview, StatusReport};

/// The policies the agent runs, with their live status, and who may read them.
#[derive(Clone)]
pub struct Pages {
    /// Each policy and its status.
    pub policies: Arc<Vec<(Policy, SharedStatus)>>,
    /// The access rule.
    pub access: Arc<Access>,
}

/// The page's routes, behind the access check.
pub fn routes(pages: Pages) -> Router {
    let access = pages.access.clone();
    Router::new()
        .route("/", get(index))
        .route("/policies/{name}", get(one_policy))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/policies/{name}", get(api_policy))
        .route("/reports/{name}/{file}", get(report))
        .with_state(pages)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let access = access.clone();
            async move {
                let given = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                if access.allows(given) {
                    next.run(request).await
                } else {
                    let mut refused =
                        (StatusCode::UNAUTHORIZED, "credentials required\n").into_response();
                    refused.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(access.challenge()),
                    );
                    refused
                }
            }
        }))
}

async fn gather(pages: &Pages, only: Option<&str>) -> Option<StatusReport> {
    let now = chrono::Utc::now();
    let mut overviews: Vec<PolicyOverview> = Vec::new();
    for (policy, shared) in pages.policies.iter() {
        if only.is_some_and(|name| name != policy.name) {
            continue;
        }
        let live = shared.lock().map(|s| s.clone()).unwrap_or_default();
        overviews.push(status::overview(policy, &live, now).await);
    }
    if only.is_some() && overviews.is_empty() {
        return None;
    }
    Some(StatusReport::new(overviews, now))
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the status: {e}\n"),
        )
            .into_response(),
    }
}

fn no_policy(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no policy named {} runs in this agent\n",
            pgvault_core::error::safe_echo(name)
        ),
    )
        .into_response()
}

async fn index(State(pages): State<Pages>) -> Response {
    match gather(&pages, None).await {
        Some(report) => html(status::render::page(&report, false)),
        None => no_policy(""),
    }
}

async fn one_policy(State(pages): State<Pages>, Path(name): Path<String>) -> Response {
    match gather(&pages, Some(&name)).await {
        Some(report) => html(status::render::page(&report, true)),
        None => no_policy(&name),
    }
}

async fn api_status(State(pages): State<Pages>) -> Response {
    match gather(&pages, None).await {
        Some(report) => json(&report),
        None => no_policy(""),
    }
}

async fn api_policy(State(pages): State<Pages>, Path(name): Path<String>) -> Response {
    match gather(&pages, Some(&name))
        .await
        .and_then(|r| r.policies.into_iter().next())
    {
        Some(overview) => json(&overview),
        None => no_policy(&name),
    }
}

async fn report(
    State(pages): State<Pages>,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    let Some((policy, _)) = pages.policies.iter().find(|(p, _)| p.name == name) else {
        return no_policy(&name);
    };
    let Some((id, format)) = file.rsplit_once('.') else {
        return (StatusCode::NOT_FOUND, "no such report\n").into_response();
    };
    let content_type = match format {
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "md" => "text/markdown; charset=utf-8",
        _ => return (StatusCode::NOT_FOUND, "no such report format\n").into_response(),
    };
    // Report ids are the repository's own (no slashes, no dots); anything else is no
    // report of ours.
    let plausible = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        return (StatusCode::NOT_FOUND, "no such report\n").into_response();
    }
    let repo = match pgvault_core::repository::Repository::open(policy).await {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cannot open the repository: {}\n",
                    status::shown(&e.to_string(), None)
                ),
            )
                .into_response()
        }
    };
    let key = pgvault_core::drill::store::report_key(&repo, id, format);
    match repo.storage().get(&key).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Err(pgvault_core::error::Error::ObjectNotFound { .. }) => {
            (StatusCode::NOT_FOUND, "no such report\n").into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "cannot read the report: {}\n",
                status::shown(&e.to_string(), None)
            ),
        )
            .into_response(),
    }
}
