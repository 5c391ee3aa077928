//! The dashboard's web pages: HTML rendered on the head (maud), no script, refreshed by the
//! browser every few seconds. Cluster overview with the autoscaler's view, jobs with their
//! output, actors, tasks, and each node's log files (read from its raylet).
//!
//! A browser cannot send the bearer header, so pages also accept the token as a cookie:
//! opening any page with `?token=<token>` sets it (HttpOnly, SameSite=Strict) and
//! redirects to the page without it. The cookie is honoured for GET requests only, so
//! nothing that changes state (stopping, deleting, submitting) can be triggered by another
//! site through it.

mod cluster;
mod jobs;
mod logs;
mod objects;
mod tasks;

use axum::Router;
use axum::extract::{Query, Request};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};

use crate::server::AppState;

/// The cookie that carries the cluster token for the pages.
pub(crate) const TOKEN_COOKIE: &str = "miniray_token";
/// How often a page reloads itself.
const REFRESH_SECONDS: u32 = 5;

/// The pages' routes (under the same token check as the API).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(cluster::overview))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{id}", get(jobs::detail))
        .route("/actors", get(objects::actors))
        .route("/tasks", get(tasks::summary))
        .route("/logs", get(logs::nodes))
        .route("/nodes/{node_id}/logs", get(logs::files))
        .route("/nodes/{node_id}/logs/{name}", get(logs::file))
}

/// The token a GET request carries in the pages' cookie, if any.
pub(crate) fn cookie_token(request: &Request) -> Option<&str> {
    if request.method() != http::Method::GET {
        return None;
    }
    request
        .headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == TOKEN_COOKIE).then_some(value)
        })
}

#[derive(serde::Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// `?token=` on a page: the token as a cookie, and the page again without it. `None` when
/// the request has no such parameter.
pub(crate) fn login(request: &Request, expected: &str) -> Option<Response> {
    let Query(q) = Query::<TokenQuery>::try_from_uri(request.uri()).ok()?;
    let token = q.token?;
    if !miniray_common::auth::token_matches(expected.as_bytes(), token.as_bytes()) {
        return Some(login_page("That token is not this cluster's."));
    }
    let path = request.uri().path().to_string();
    let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut response = Redirect::to(&path).into_response();
    if let Ok(value) = http::HeaderValue::from_str(&cookie) {
        response
            .headers_mut()
            .insert(http::header::SET_COOKIE, value);
    }
    Some(response)
}

/// Whether a path is one of the pages (HTML), not the API.
pub(crate) fn is_page(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/metrics")
}

/// The 401 page: a form that sends the token.
pub(crate) fn login_page(why: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html {
            head { title { "miniray" } style { (STYLE) } }
            body {
                header { span.brand { "miniray" } }
                main {
                    h1 { "Sign in" }
                    p { (why) }
                    p { "Give the cluster token (" code { "MINIRAY_TOKEN" } ", printed by "
                        code { "miniray start --head" } ")." }
                    form method="get" {
                        input type="password" name="token" placeholder="cluster token" autofocus;
                        " "
                        button type="submit" { "Open" }
                    }
                }
            }
        }
    };
    (http::StatusCode::UNAUTHORIZED, Html(body.into_string())).into_response()
}

/// A whole page: navigation, the title, the content; reloads itself.
pub(crate) fn page(title: &str, current: &str, content: Markup) -> Response {
    let nav = [
        ("/", "Cluster"),
        ("/jobs", "Jobs"),
        ("/actors", "Actors"),
        ("/tasks", "Tasks"),
        ("/logs", "Logs"),
    ];
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                title { (title) " · miniray" }
                style { (STYLE) }
            }
            body {
                header {
                    span.brand { "miniray" }
                    nav {
                        @for (href, name) in nav {
                            a href=(href) class=[(href == current).then_some("current")] { (name) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
                footer { "Refreshes every " (REFRESH_SECONDS) " s · " (time(miniray_common::time::now_ms())) }
            }
        }
    };
    Html(body.into_string()).into_response()
}

/// An error in a page's frame (the GCS or a raylet did not answer).
pub(crate) fn error_page(title: &str, current: &str, error: impl std::fmt::Display) -> Response {
    let mut response = page(title, current, html! { p.error { (error.to_string()) } });
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// `bytes` for people: `1.5 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Unix milliseconds as `2026-12-02 04:05:06 UTC`.
pub(crate) fn time(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 as a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The first 12 hex characters of an id: enough to tell ids apart on a page.
pub(crate) fn short(id: &[u8]) -> String {
    let mut s = hex::encode(id);
    s.truncate(12);
    s
}

/// A bar showing `used` of `total`.
pub(crate) fn meter(used: f64, total: f64) -> Markup {
    let pct = if total > 0.0 {
        (used / total * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    html! { span.meter { span.fill style=(format!("width:{pct:.0}%")) {} } }
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6rem 1.5rem;display:flex;gap:2rem;align-items:center}
.brand{font-weight:700;letter-spacing:.03em}
nav a{color:#c9d1e0;text-decoration:none;margin-right:1.2rem}
nav a.current{color:#fff;border-bottom:2px solid #5aa0ff}
main{padding:1rem 1.5rem}
h1{font-size:1.4rem;margin:.4rem 0 1rem}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;background:#fff;width:100%;font-size:.9rem}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}
code,pre{font-family:ui-monospace,monospace;font-size:.85rem}
pre{background:#fff;border:1px solid #e3e6eb;padding:.8rem;overflow:auto;max-height:70vh}
.meter{display:inline-block;width:6rem;height:.55rem;background:#e3e6eb;border-radius:.3rem;margin-left:.4rem;vertical-align:middle}
.fill{display:block;height:100%;background:#5aa0ff;border-radius:.3rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:.4rem;padding:.6rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.3rem}
.state{font-weight:600}
.ALIVE,.RUNNING,.SUCCEEDED,.FINISHED,.running{color:#1a7f37}
.DEAD,.FAILED,.STOPPED{color:#c62828}
.PENDING,.PENDING_CREATION,.RESTARTING,.DRAINING,.requested,.allocated{color:#b26a00}
.error{color:#c62828}
.muted{color:#6b7385}
footer{padding:1rem 1.5rem;color:#6b7385;font-size:.8rem}
form input{padding:.4rem;width:22rem}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_as_people_write_them() {
        assert_eq!(time(0), "—");
        assert_eq!(time(1_796_185_743_572), "2026-12-02 04:29:03 UTC");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(20 << 20), "20.0 MiB");
    }

    #[test]
    fn the_cookie_is_read_on_gets_only() {
        let get = Request::builder()
            .uri("/")
            .header("cookie", "a=b; miniray_token=t0k")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(cookie_token(&get), Some("t0k"));
        let post = Request::builder()
            .method("POST")
            .uri("/api/jobs/x/stop")
            .header("cookie", "miniray_token=t0k")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(cookie_token(&post), None);
    }
}
