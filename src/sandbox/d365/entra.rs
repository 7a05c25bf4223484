//! Simulated Microsoft Entra ID v2 token endpoint (client credentials only), with the AADSTS
//! error bodies real clients have to classify.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};

use super::{IssuedToken, SimRequest, SimResponse, State};

fn aad_error(status: StatusCode, error: &str, code: u64, description: &str) -> SimResponse {
    let body = serde_json::json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 00000000-0000-0000-0000-000000000000\r\nTimestamp: 2026-01-01 00:00:00Z"
        ),
        "error_codes": [code],
        "timestamp": "2026-01-01 00:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000000",
        "correlation_id": "00000000-0000-0000-0000-000000000000",
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    SimResponse::json(status, body.to_string())
}

/// The form body with `client_secret` replaced, for the request log.
pub(super) fn redact_form(body: &str) -> String {
    url::form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| {
            if k == "client_secret" {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub(super) fn handle(st: &mut State, req: &SimRequest) -> SimResponse {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let [tenant, "oauth2", "v2.0", "token"] = segs.as_slice() else {
        return SimResponse::json(StatusCode::NOT_FOUND, "{}".into());
    };
    if req.method != Method::POST {
        return aad_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests.",
        );
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());

    if !tenant.eq_ignore_ascii_case(&st.seed.tenant) {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    if get("grant_type") != Some("client_credentials") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let client_id = get("client_id").unwrap_or("");
    let Some(app) = st.seed.apps.iter().find(|a| a.client_id == client_id) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
        );
    };
    if get("client_secret") != Some(app.secret.as_str()) {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
        );
    }
    let scope = get("scope").unwrap_or("");
    let Some(resource) = scope.strip_suffix("/.default") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            &format!("The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."),
        );
    };
    // Entra resolves the resource loosely (case, trailing slash); F&O later checks `aud` strictly.
    if !resource
        .trim_end_matches('/')
        .eq_ignore_ascii_case(&st.env_url)
    {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!("The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
        );
    }
    let token = format!("sim.{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let lifetime = st.token_lifetime;
    st.tokens.insert(
        token.clone(),
        IssuedToken {
            client_id: client_id.to_string(),
            audience: resource.to_string(),
            expires_at: Instant::now() + Duration::from_secs(lifetime),
        },
    );
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    SimResponse::json(StatusCode::OK, body.to_string())
}
