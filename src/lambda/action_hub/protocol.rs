//! The Looker Action API on the wire: what Looker sends to a custom Action Hub and the shapes
//! it reads back. Pure data, no I/O.
//!
//! Sources: Looker's own hub, `looker-open-source/actions` (`docs/action_api.md`,
//! `src/hub/action.ts`, `action_form.ts`, `action_response.ts`), and the Looker API 4.0
//! `Integration` schema. Facts those sources leave open (how Looker treats a non-2xx status with
//! a valid body, whether it ever retries an execute) are not relied on: business failures are
//! answered 200 with `success: false`, and every execute is idempotent anyway.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

/// The one action this hub offers (its `name`; Looker's integration id is `<hub_id>::<name>`).
pub const ACTION_NAME: &str = "d365_journal";
/// Its label in Looker's Send and Schedule menus.
pub const ACTION_LABEL: &str = "Post to Dynamics 365 journal";
/// The hub's list endpoint (the URL an admin enters under Admin > Actions > Add Action Hub).
pub const LIST_PATH: &str = "/actions";
/// The form endpoint.
pub const FORM_PATH: &str = "/actions/d365_journal/form";
/// The execute endpoint.
pub const EXECUTE_PATH: &str = "/actions/d365_journal/execute";

/// The action param that carries who sent a post, bound to a Looker user attribute.
pub const SENDER_PARAM: &str = "sender";

/// Form field names (the keys of `form_params`, and of `validation_errors`).
pub mod field {
    pub const INSTANCE: &str = "instance";
    pub const PERIOD: &str = "period";
    pub const DRY_RUN: &str = "dry_run";
    pub const NOTE: &str = "note";
}

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    List,
    Form,
    Execute,
}

impl Route {
    /// The route of `method path`, when it is one of the hub's. Looker POSTs every call; the list
    /// also answers GET (handy with curl, and nothing is secret in it beyond the token check).
    pub fn of(method: &str, path: &str) -> Option<Route> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let post = method.eq_ignore_ascii_case("POST");
        match path {
            LIST_PATH if post || method.eq_ignore_ascii_case("GET") => Some(Route::List),
            FORM_PATH if post => Some(Route::Form),
            EXECUTE_PATH if post => Some(Route::Execute),
            _ => None,
        }
    }

    /// Whether `path` is under the hub's prefix (so a wrong method is the hub's 404, not the
    /// webhook's).
    pub fn is_hub_path(path: &str) -> bool {
        path == LIST_PATH || path.starts_with("/actions/")
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Route::List => "list",
            Route::Form => "form",
            Route::Execute => "execute",
        }
    }
}

/// The token of `Authorization: Token token="…"` (Looker's hub header; `token` or `Token`).
/// Anything else (a missing header, another scheme, a missing closing quote) is None.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let rest = h
        .strip_prefix("Token ")
        .or_else(|| h.strip_prefix("token "))?
        .trim_start();
    let quoted = rest.strip_prefix("token=\"")?.strip_suffix('"')?;
    (!quoted.is_empty() && !quoted.contains('"')).then_some(quoted)
}

/// The list endpoint's answer: the hub and its one action. `base` is the hub's absolute
/// origin (`https://<function url host>`); `sender_attribute` the Looker user attribute the
/// `sender` param is bound to by default.
pub fn list_response(base: &str, sender_attribute: &str) -> Value {
    let base = base.trim_end_matches('/');
    json!({
        "label": "ml-connector",
        "integrations": [{
            "name": ACTION_NAME,
            "label": ACTION_LABEL,
            "description": "Validates the rows and posts them as one balanced general journal in Dynamics 365 Finance & Operations (idempotent; dry run available)",
            "url": format!("{base}{EXECUTE_PATH}"),
            "form_url": format!("{base}{FORM_PATH}"),
            "supported_action_types": ["query"],
            "supported_formats": ["json_detail", "csv"],
            "supported_formattings": ["unformatted"],
            "supported_visualization_formattings": ["noapply"],
            // Set explicitly: the docs and the API schema disagree on the default.
            "supported_download_settings": ["push"],
            "uses_oauth": false,
            "required_fields": [],
            "params": [{
                "name": SENDER_PARAM,
                "label": "Sender",
                "description": "Bind to a user attribute (e.g. email): recorded in the audit trail of every post, and checked against an instance's allowed senders",
                "required": false,
                "sensitive": false,
                "user_attribute_name": sender_attribute,
            }],
        }],
    })
}

/// One option of the form's instance select: the instance and the period a post today
/// would cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOption {
    pub instance: String,
    pub period_today: String,
}

/// The form endpoint's answer.
pub fn form_response(options: &[InstanceOption]) -> Value {
    let mut instance = json!({
        "name": field::INSTANCE,
        "label": "Connector instance",
        "description": "The instance config whose mapping turns these rows into a journal",
        "type": "select",
        "required": true,
        "options": options.iter().map(|o| json!({"name": o.instance, "label": o.instance})).collect::<Vec<_>>(),
    });
    let mut period = json!({
        "name": field::PERIOD,
        "label": "Period",
        "description": "Leave empty for the period derived from today by the instance's period kind (week 2026-W47, month 2026-11 or day 2026-11-22)",
        "type": "string",
        "required": false,
    });
    if let [only] = options {
        instance["default"] = json!(only.instance);
        period["default"] = json!(only.period_today);
    }
    json!({"fields": [
        instance,
        period,
        {
            "name": field::DRY_RUN,
            "label": "Dry run (validate and preview only)",
            "description": "Yes: the journal is validated and previewed, nothing is written. No: it is posted",
            "type": "select",
            "required": true,
            "default": "yes",
            "options": [{"name": "yes", "label": "Yes"}, {"name": "no", "label": "No"}],
        },
        {
            "name": field::NOTE,
            "label": "Note",
            "description": "Kept in the audit trail with the post",
            "type": "textarea",
            "required": false,
        },
    ]})
}

/// Looker's answer envelope (`{"looker": {success, message, refresh_query,
/// validation_errors}}`), plus what this hub adds for its own clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionAnswer {
    pub success: bool,
    pub message: String,
    /// Form field → what is wrong with it.
    pub validation_errors: BTreeMap<String, String>,
    /// Extra top-level members (`preview`, `run`) next to `looker`.
    pub extra: serde_json::Map<String, Value>,
}

impl ActionAnswer {
    pub fn ok(message: impl Into<String>) -> Self {
        ActionAnswer {
            success: true,
            message: message.into(),
            validation_errors: BTreeMap::new(),
            extra: serde_json::Map::new(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        ActionAnswer {
            success: false,
            ..Self::ok(message)
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut looker = json!({
            "success": self.success,
            "message": self.message,
            "refresh_query": false,
        });
        if !self.validation_errors.is_empty() {
            looker["validation_errors"] = json!(self.validation_errors);
        }
        let mut body = self.extra.clone();
        body.insert("looker".into(), looker);
        Value::Object(body)
    }
}

/// The parts of a form or execute body the hub reads besides the delivery itself: the
/// action params (`data`) and the user's form answers (`form_params`). Every value is a string
/// (Looker sends form values as strings); `null` reads as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionParams {
    pub data: BTreeMap<String, String>,
    pub form: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    form_params: Option<Value>,
}

impl ActionParams {
    /// Reads `data` and `form_params` from a request body (an empty body: none). A body that is
    /// not a JSON object, or a map value that is not a string, is an error naming the field.
    pub fn parse(body: &[u8]) -> Result<ActionParams, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ActionParams::default());
        }
        let env: Envelope = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not a Looker action request: {e}"))?;
        Ok(ActionParams {
            data: string_map(env.data, "data")?,
            form: string_map(env.form_params, "form_params")?,
        })
    }

    /// A form answer, trimmed; empty reads as absent.
    pub fn form(&self, name: &str) -> Option<&str> {
        self.form
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    /// The sender param, trimmed; empty reads as absent.
    pub fn sender(&self) -> Option<&str> {
        self.data
            .get(SENDER_PARAM)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }
}

fn string_map(v: Option<Value>, field: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::Null => {}
                    Value::String(s) => {
                        out.insert(k, s);
                    }
                    // Looker sends strings; a number or bool is read as its text.
                    Value::Number(n) => {
                        out.insert(k, n.to_string());
                    }
                    Value::Bool(b) => {
                        out.insert(k, b.to_string());
                    }
                    _ => return Err(format!("`{field}.{k}`: expected a string")),
                }
            }
        }
        Some(_) => return Err(format!("`{field}`: expected an object of strings")),
    }
    Ok(out)
}

/// `yes`/`no` (also `true`/`false`) of the dry-run select.
pub fn parse_yes_no(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("POST", "/actions"), Some(Route::List));
        assert_eq!(Route::of("GET", "/actions/"), Some(Route::List));
        assert_eq!(Route::of("post", FORM_PATH), Some(Route::Form));
        assert_eq!(Route::of("POST", EXECUTE_PATH), Some(Route::Execute));
        assert_eq!(Route::of("GET", EXECUTE_PATH), None);
        assert_eq!(Route::of("POST", "/actions/other/execute"), None);
        assert!(Route::is_hub_path("/actions/x"));
        assert!(!Route::is_hub_path("/ingest/a/b"));
    }

    #[test]
    fn token_header() {
        assert_eq!(bearer_token(Some(r#"Token token="abc""#)), Some("abc"));
        assert_eq!(bearer_token(Some(r#"token token="a/b=""#)), Some("a/b="));
        assert_eq!(bearer_token(Some(r#"Bearer abc"#)), None);
        assert_eq!(bearer_token(Some(r#"Token token="""#)), None);
        assert_eq!(bearer_token(Some(r#"Token token="abc"#)), None);
        assert_eq!(bearer_token(None), None);
    }

    #[test]
    fn params_and_answers() {
        let p = ActionParams::parse(
            br#"{"data":{"sender":" ana@acme.com ","x":null},"form_params":{"dry_run":"no","period":""}}"#,
        )
        .unwrap();
        assert_eq!(p.sender(), Some("ana@acme.com"));
        assert_eq!(p.form("dry_run"), Some("no"));
        assert_eq!(p.form("period"), None);
        assert!(ActionParams::parse(br#"{"form_params":[1]}"#)
            .unwrap_err()
            .contains("form_params"));
        assert_eq!(ActionParams::parse(b"").unwrap(), ActionParams::default());
        let mut a = ActionAnswer::failed("no");
        a.validation_errors.insert("period".into(), "bad".into());
        let v = a.to_json();
        assert_eq!(v["looker"]["success"], false);
        assert_eq!(v["looker"]["validation_errors"]["period"], "bad");
        assert_eq!(parse_yes_no("Yes"), Some(true));
        assert_eq!(parse_yes_no("maybe"), None);
    }
}
