//! Suppression management over HTTP: list (paged, filtered by tenant and reason), add one address,
//! remove one address. A tenant token sees and changes its own tenant's list only.
//!
//! The list is the engine's (`Engine::suppressions`, `suppress`, `unsuppress`): a change is on disk
//! (per `[suppression] sync`) and in force for submissions when the answer is sent.

use super::{Api, Caller, error, json};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use vmta::bounce::{Reason, Suppression};
use vmta::engine::SuppressionError;

/// The most entries one page holds.
pub const MAX_PAGE: usize = 1000;

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The tenant a request acts for: a tenant token's own (naming another is refused), or what an
/// admin names (`None`: every tenant, where that means something).
fn tenant_for(
    caller: &Caller,
    named: Option<&str>,
) -> Result<Option<String>, Response<Full<Bytes>>> {
    match (&caller.tenant, named) {
        (None, n) => Ok(n.map(str::to_string)),
        (Some(own), None) => Ok(Some(own.clone())),
        (Some(own), Some(n)) if own == n => Ok(Some(own.clone())),
        (Some(own), Some(n)) => Err(error(
            StatusCode::FORBIDDEN,
            Some("tenant"),
            &format!("this token acts for tenant `{own}` only, not `{n}`"),
        )),
    }
}

fn suppression_error(e: SuppressionError) -> Response<Full<Bytes>> {
    match e {
        SuppressionError::Disabled => error(
            StatusCode::CONFLICT,
            None,
            "the suppression list is disabled ([suppression] enabled = false)",
        ),
        SuppressionError::Invalid(why) => error(StatusCode::BAD_REQUEST, Some("address"), &why),
        SuppressionError::Io(why) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, None, &why);
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, 30u64.into());
            r
        }
    }
}

/// A reason in the classifier's words, or the answer refusing it.
fn reason(r: &str) -> Result<Reason, Response<Full<Bytes>>> {
    Reason::parse(r).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            Some("reason"),
            &format!("unknown reason `{r}`"),
        )
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /api/v1/suppressions?tenant=&reason=&offset=&limit=`.
pub fn list_suppressions(
    api: &Api,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let q = query(req);
    let tenant = match tenant_for(caller, param(&q, "tenant")) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let reason = match param(&q, "reason").map(reason).transpose() {
        Ok(r) => r,
        Err(r) => return r,
    };
    let number = |name: &str, default: usize| -> Result<usize, Response<Full<Bytes>>> {
        match param(&q, name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    Some(name),
                    "not a non-negative integer",
                )
            }),
        }
    };
    let (offset, limit) = match (number("offset", 0), number("limit", 100)) {
        (Ok(o), Ok(l)) => (o, l),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if limit == 0 || limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            Some("limit"),
            &format!("must be 1 to {MAX_PAGE}"),
        );
    }
    let all = match api.engine.suppressions(tenant.as_deref()) {
        Ok(a) => a,
        Err(e) => return suppression_error(e),
    };
    let now = now();
    let matching: Vec<&Suppression> = all
        .iter()
        .filter(|s| reason.is_none_or(|r| s.reason == r))
        .collect();
    let page: Vec<serde_json::Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|s| s.to_json(now))
        .collect();
    let next = (offset + page.len() < matching.len()).then_some(offset + page.len());
    json(
        StatusCode::OK,
        &serde_json::json!({
            "total": matching.len(),
            "offset": offset,
            "next_offset": next,
            "suppressions": page,
        }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddJson {
    #[serde(default)]
    tenant: Option<String>,
    address: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expires: Option<u64>,
}

/// `POST /api/v1/suppressions` with `{"address", "tenant"?, "stream"?, "reason"?, "expires"?}`.
pub fn add_suppression(api: &Api, caller: &Caller, body: &[u8]) -> Response<Full<Bytes>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let add: AddJson = match serde_path_to_error::deserialize(&mut de) {
        Ok(a) => a,
        Err(e) => {
            let path = e.path().to_string();
            return error(
                StatusCode::BAD_REQUEST,
                (path != ".").then_some(path.as_str()),
                &e.into_inner().to_string(),
            );
        }
    };
    let tenant = match tenant_for(caller, add.tenant.as_deref()) {
        Ok(t) => t.unwrap_or_else(|| api.config.tenant.clone()),
        Err(r) => return r,
    };
    let reason = match add.reason.as_deref().map(reason).transpose() {
        Ok(r) => r.unwrap_or(Reason::Suppressed),
        Err(r) => return r,
    };
    match api.engine.suppress(
        &tenant,
        &add.address,
        add.stream.as_deref(),
        reason,
        add.expires,
    ) {
        Ok(s) => json(StatusCode::CREATED, &s.to_json(now())),
        Err(e) => suppression_error(e),
    }
}

/// `DELETE /api/v1/suppressions?tenant=&address=&stream=`.
pub fn remove_suppression(
    api: &Api,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let q = query(req);
    let tenant = match tenant_for(caller, param(&q, "tenant")) {
        Ok(t) => t.unwrap_or_else(|| api.config.tenant.clone()),
        Err(r) => return r,
    };
    let Some(address) = param(&q, "address") else {
        return error(
            StatusCode::BAD_REQUEST,
            Some("address"),
            "the address to remove is missing",
        );
    };
    match api.engine.unsuppress(&tenant, address, param(&q, "stream")) {
        Ok(true) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            Some("address"),
            &format!("`{address}` is not suppressed for tenant `{tenant}`"),
        ),
        Err(e) => suppression_error(e),
    }
}
