//! Errors of the D365 adapter, worded for the person who has to fix them, and the parser of
//! F&O's OData error bodies.
//!
//! No variant ever carries an access token or the client secret.

use serde::Deserialize;

/// Why Microsoft Entra ID refused to issue a token (classified on AADSTS codes, not HTTP status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Microsoft Entra ID rejected the client secret of app {client_id} (AADSTS7000215). Use the secret VALUE (shown once when the secret was created), not its Secret ID.")]
    InvalidSecret { client_id: String },
    #[error("the client secret of app {client_id} has expired (AADSTS7000222). Create a new client secret in the app registration (Certificates & secrets) and update the connector's configuration.")]
    ExpiredSecret { client_id: String },
    #[error("app with client id {client_id} was not found in tenant {tenant} (AADSTS700016). Check the client id (Application ID) and that the app is registered in / consented to this tenant.")]
    AppNotFound { client_id: String, tenant: String },
    #[error("tenant '{tenant}' was not found or is the wrong tenant (AADSTS{code}). Use the Directory (tenant) ID of the Microsoft Entra tenant that hosts the D365 environment.")]
    WrongTenant { tenant: String, code: u64 },
    #[error("Microsoft Entra ID refused the token scope '{scope}' (AADSTS{code}). The scope must be the D365 environment URL + /.default (e.g. https://contoso.operations.dynamics.com/.default): the exact environment URL, lower case, no trailing slash.")]
    WrongScope { scope: String, code: u64 },
    #[error(
        "Microsoft Entra ID refused the token request ({error}, AADSTS{codes:?}): {description}"
    )]
    Other {
        error: String,
        codes: Vec<u64>,
        description: String,
    },
    #[error("could not reach Microsoft Entra ID at {authority}: {detail}")]
    Unreachable { authority: String, detail: String },
    /// The token endpoint answered with a redirect. It is not followed: the request carries the
    /// client secret, which must only ever reach the configured authority.
    #[error("the Microsoft Entra authority {authority} answered HTTP {status}, a redirect to `{location}`; redirects are not followed because the token request carries the client secret. Set the authority (d365.authority, default https://login.microsoftonline.com) to the token service itself.")]
    Redirected {
        authority: String,
        status: u16,
        /// Where it pointed, userinfo, query and fragment removed.
        location: String,
    },
    #[error("unexpected answer from Microsoft Entra ID (HTTP {status}): {detail}")]
    Unexpected { status: u16, detail: String },
}

/// Errors of the D365 F&O client.
#[derive(Debug, thiserror::Error)]
pub enum D365Error {
    /// Invalid connector configuration (URLs, ids).
    #[error("D365 configuration error: {0}")]
    Config(String),
    /// Invalid argument from the caller; nothing was sent.
    #[error("invalid request to D365: {0}")]
    InvalidInput(String),
    #[error("could not get a Microsoft Entra ID token for D365: {0}")]
    Auth(#[from] AuthError),
    /// A freshly issued token was still refused with 401: a set-up problem inside F&O.
    #[error("D365 refused the connector's token (HTTP 401) even after a fresh token was obtained. In D365 go to System administration > Setup > Microsoft Entra applications, register the app's client id {client_id} and map it to a user with the needed roles. Also check that the environment URL is exactly the environment's URL (lower case, no trailing slash).")]
    NotAuthorized { client_id: String },
    /// F&O answered with a business or request error (400/403/404/409/422…): permanent, nothing
    /// was written by this request.
    #[error("{}", rejected_display(*status, entity, messages))]
    Rejected {
        status: u16,
        entity: String,
        messages: Vec<String>,
    },
    /// Still throttled (429) after all retries; nothing was written by this request.
    #[error("D365 is throttling requests to {entity} (HTTP 429) and retries were exhausted; try again later")]
    Throttled { entity: String },
    /// A read failed with 5xx after retries (transient).
    #[error("D365 is unavailable while reading {entity} (HTTP {status}): {detail}")]
    Unavailable {
        status: u16,
        entity: String,
        detail: String,
    },
    /// The service could not be reached at all (connection refused, DNS, TLS before sending):
    /// nothing was written.
    #[error("could not reach D365 ({entity}): {detail}")]
    Unreachable { entity: String, detail: String },
    /// A write was sent but its outcome is unknown (5xx, timeout, dropped connection, unreadable
    /// success body). It may or may not have been applied: reconcile by reading before retrying.
    #[error("the outcome of the write to D365 {entity} is unknown ({detail}); it may or may not have been saved. Check D365 before trying again — do not resend blindly.")]
    OutcomeUnknown { entity: String, detail: String },
    /// A wait (a `Retry-After`, a backoff, the client-side limits) would have run past the
    /// caller's deadline, so the request was not (re)sent: nothing was written by it.
    #[error("out of time for D365 {entity}: {detail}; nothing more was sent, so the run can be resumed (replay) without risk of a duplicate")]
    OutOfTime { entity: String, detail: String },
    /// F&O answered a read with a redirect. It is not followed: the request carries the access
    /// token, which must only ever reach the configured environment. (A redirected write is
    /// [`D365Error::OutcomeUnknown`], so the caller reconciles first.)
    #[error("D365 answered {entity} with HTTP {status}, a redirect to `{location}`; redirects are not followed because the request carries the access token. Check that the environment URL (d365.environment_url) is the environment's exact URL.")]
    Redirected {
        entity: String,
        status: u16,
        /// Where it pointed, userinfo, query and fragment removed.
        location: String,
    },
    /// F&O's answer did not have the expected shape.
    #[error("unexpected response from D365 {entity}: {detail}")]
    Protocol { entity: String, detail: String },
    /// D365's set-up is incomplete for what the connector needs (no ledger, no active format…).
    #[error("D365 set-up problem: {0}")]
    Setup(String),
}

impl D365Error {
    /// Whether waiting and trying the same thing again may help (and is safe).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            D365Error::Throttled { .. }
                | D365Error::OutOfTime { .. }
                | D365Error::Unavailable { .. }
                | D365Error::Unreachable { .. }
                | D365Error::Auth(AuthError::Unreachable { .. })
        )
    }
}

fn friendly_entity(entity: &str) -> &str {
    match entity {
        "LedgerJournalLines" => "journal line",
        "LedgerJournalHeaders" => "journal",
        "MainAccounts" => "main accounts",
        "FinancialDimensionValues" => "financial dimension values",
        "JournalNames" => "journal names",
        "Ledgers" => "ledgers",
        other => other,
    }
}

fn rejected_display(status: u16, entity: &str, messages: &[String]) -> String {
    // Lead with what a finance user can act on; F&O's technical follow-ups go last.
    let (business, technical): (Vec<&String>, Vec<&String>) =
        messages.iter().partition(|m| !is_technical(m));
    let mut out = format!(
        "D365 refused the {} (HTTP {status})",
        friendly_entity(entity)
    );
    let mut first = true;
    for m in business.iter().chain(technical.iter()) {
        out.push_str(if first { ": " } else { " | " });
        out.push_str(m);
        first = false;
    }
    out
}

fn is_technical(m: &str) -> bool {
    m.starts_with("validateField failed") || m.starts_with("Write failed for table row")
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    innererror: Option<InnerError>,
}

#[derive(Deserialize)]
struct InnerError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// Turns an F&O error body into human messages.
///
/// F&O's outer `message` is nearly always "An error has occurred.", so the Infolog inside
/// `innererror.message` is split on `;` and stripped of `Warning:`/`Error:`/`Info:` prefixes.
/// Bodies that are not JSON (a gateway's HTML 502) become one short message.
pub fn parse_error_body(status: u16, body: &str) -> Vec<String> {
    let body = body.trim();
    if body.is_empty() {
        return vec![format!("HTTP {status} with an empty body")];
    }
    let env: ErrorEnvelope = match serde_json::from_str(body) {
        Ok(e) => e,
        Err(_) => return vec![non_json_summary(status, body)],
    };
    let e = env.error;
    let inner_msg = e
        .innererror
        .as_ref()
        .and_then(|i| i.message.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty());
    let mut out = Vec::new();
    if let Some(inner) = inner_msg {
        match inner.find("Infolog:") {
            Some(pos) => {
                for part in inner[pos + "Infolog:".len()..].split(';') {
                    let m = strip_level(part.trim());
                    if !m.is_empty() {
                        out.push(m.to_string());
                    }
                }
                let head = inner[..pos].trim();
                if out.is_empty() && !head.is_empty() {
                    out.push(head.to_string());
                }
            }
            None => out.push(inner.to_string()),
        }
    }
    if out.is_empty() {
        let outer = e.message.as_deref().map(str::trim).unwrap_or("");
        if !outer.is_empty() {
            out.push(outer.to_string());
        }
    }
    if out.is_empty() {
        let kind = e.innererror.and_then(|i| i.kind).unwrap_or_default();
        let code = e.code.unwrap_or_default();
        out.push(format!(
            "HTTP {status} without a message (code '{code}', type '{kind}')"
        ));
    }
    out
}

fn strip_level(m: &str) -> &str {
    let mut m = m;
    for p in ["Warning:", "Error:", "Info:"] {
        if let Some(rest) = m.strip_prefix(p) {
            m = rest.trim_start();
        }
    }
    m.trim()
}

fn non_json_summary(status: u16, body: &str) -> String {
    let lower = body.to_ascii_lowercase();
    let title = lower.find("<title>").and_then(|s| {
        let start = s + "<title>".len();
        lower[start..]
            .find("</title>")
            .map(|e| body[start..start + e].trim().to_string())
    });
    match title {
        Some(t) if !t.is_empty() => {
            format!("HTTP {status}: the service returned a non-JSON page \"{t}\"")
        }
        _ => {
            let text: String = body.chars().take(200).collect();
            format!("HTTP {status}: the service returned a non-JSON body: {text}")
        }
    }
}

/// A short, single-line description of an error body for logs/`detail` fields.
pub(crate) fn summarize_body(status: u16, body: &str) -> String {
    parse_error_body(status, body).join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infolog_is_split_and_stripped() {
        let body = r#"{"error":{"code":"","message":"An error has occurred.","innererror":{"message":"Write failed for table row of type 'LedgerJournalLineEntity'. Infolog: Warning: The value '999998' in field 'Main account' is not found in the related table 'Main accounts'.; Warning: validateField failed on field 'LedgerJournalLineEntity.AccountDisplayValue'.","type":"Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException","stacktrace":"..."}}}"#;
        let m = parse_error_body(400, body);
        assert_eq!(
            m,
            vec![
                "The value '999998' in field 'Main account' is not found in the related table 'Main accounts'.".to_string(),
                "validateField failed on field 'LedgerJournalLineEntity.AccountDisplayValue'.".to_string(),
            ]
        );
        let e = D365Error::Rejected {
            status: 400,
            entity: "LedgerJournalLines".into(),
            messages: m,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("D365 refused the journal line (HTTP 400): The value '999998'"),
            "{s}"
        );
    }

    #[test]
    fn inner_message_without_infolog_and_outer_fallback() {
        let body = r#"{"error":{"code":"","message":"An error has occurred.","innererror":{"message":"More than one resource was found when selecting for update.","type":"Microsoft.Dynamics.Platform.Integration.Services.OData.ODataArgumentException"}}}"#;
        assert_eq!(
            parse_error_body(400, body),
            vec!["More than one resource was found when selecting for update."]
        );
        let body = r#"{"error":{"code":"NotFound","message":"Resource not found for the segment 'Nope'."}}"#;
        assert_eq!(
            parse_error_body(404, body),
            vec!["Resource not found for the segment 'Nope'."]
        );
        let body = r#"{"error":{"code":"X"}}"#;
        assert!(parse_error_body(500, body)[0].contains("code 'X'"));
    }

    #[test]
    fn non_json_bodies() {
        let html = "<html><head><title>502 - Web server received an invalid response</title></head><body>...</body></html>";
        let m = parse_error_body(502, html);
        assert_eq!(m.len(), 1);
        assert!(
            m[0].contains("502 - Web server received an invalid response"),
            "{m:?}"
        );
        assert!(parse_error_body(503, "  ")[0].contains("empty body"));
        assert!(parse_error_body(500, "boom")[0].contains("boom"));
    }

    #[test]
    fn error_prefix_variants() {
        let body = r#"{"error":{"message":"x","innererror":{"message":"Infolog: Error: Field 'Currency' must be filled in.; Info: something"}}}"#;
        assert_eq!(
            parse_error_body(400, body),
            vec!["Field 'Currency' must be filled in.", "something"]
        );
    }
}
