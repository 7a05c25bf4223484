//! Everything that can go wrong talking to Looker, phrased for the finance admin who reads it.
//!
//! Messages never carry the client secret or an access token; transport errors carry the URL
//! path only (no query string, no host credentials).

/// A failed Looker call. `Display` is the operator-facing message.
#[derive(Debug, thiserror::Error)]
pub enum LookerError {
    /// The connector's own Looker settings are unusable (URL, empty credentials, bad query).
    #[error("Looker configuration: {0}")]
    Config(String),

    /// Looker refused the credentials or the token (login rejected, or 401/403 persists).
    #[error("Looker authentication failed: {0}")]
    Auth(String),

    /// A Look, model or explore that does not exist or that the API user cannot see.
    #[error("{0}")]
    NotFound(String),

    /// Looker rejected the request as invalid (HTTP 422 ValidationError, or 400).
    #[error("Looker rejected the query: {0}")]
    Invalid(String),

    /// The query ran but the database reported an error (Looker answers 200 with `looker_error`).
    #[error("Looker ran the query but it failed: {0}")]
    QueryFailed(String),

    /// Still throttled (429) after every retry the policy allows.
    #[error("Looker is throttling requests (HTTP 429 on {path}) and kept doing so after {attempts} attempts; nothing was posted, try the run again later")]
    Throttled { path: String, attempts: u32 },

    /// The result may be incomplete, so it is refused as a whole.
    #[error("Looker extract refused, nothing was posted: {detail}. Narrow the Look/query filters (e.g. a shorter date range) or raise max_rows; results beyond Looker's 5,000-row cap need the asynchronous query path (extract_path = async)")]
    Truncated {
        /// The configured `max_rows`.
        max_rows: usize,
        /// The `limit` we asked Looker for (`max_rows + 1`).
        requested_limit: usize,
        /// Rows Looker actually returned.
        received: usize,
        /// Why the result is considered incomplete.
        detail: String,
    },

    /// An asynchronous query task did not finish (and its results were not read) before the
    /// deadline. The task was cancelled when it had been started (`detail` says how that went).
    #[error("Looker extract not finished within {waited_secs} s (the run's time budget), nothing was posted: {detail}. Narrow the Look/query filters, raise max_wait, or run it again when Looker is less busy")]
    DeadlineExceeded {
        waited_secs: u64,
        /// The query task, if one had been started.
        task_id: Option<String>,
        detail: String,
    },

    /// A wait (a `Retry-After`, a backoff, the client-side rate limit) would have run past the
    /// run's deadline, so the request was not (re)sent.
    #[error("out of time for Looker ({what}): {detail}; nothing was posted, run it again (or replay) when there is time")]
    OutOfTime { what: String, detail: String },

    /// An asynchronous query task ended without a usable result (`error`, `failure`,
    /// `expired`, `killed`, or its results are gone).
    #[error(
        "Looker query task {task_id} ended with status `{status}`, nothing was posted: {detail}"
    )]
    TaskEnded {
        task_id: String,
        status: String,
        detail: String,
    },

    /// The request never got an HTTP answer (DNS, TLS, connect, timeout, broken body).
    #[error("could not reach Looker ({path}): {message}")]
    Http { path: String, message: String },

    /// Any other non-success HTTP status. `message` names the path and Looker's own message.
    #[error("Looker answered HTTP {status}: {message}")]
    Status { status: u16, message: String },

    /// Looker answered 2xx but the body is not what the API documents.
    #[error("could not read Looker's answer ({what}): {message}")]
    Parse { what: String, message: String },
}

impl LookerError {
    /// A transport failure on `path` (`"GET /api/4.0/looks/42"`), with the cause chain
    /// (reqwest's own message alone is just "error sending request") and without the URL.
    pub(crate) fn transport(path: &str, e: reqwest::Error) -> Self {
        let timed_out = e.is_timeout();
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        if timed_out {
            message.push_str(" (timed out; the query may be slow, raise the Looker timeout)");
        }
        LookerError::Http {
            path: path.to_string(),
            message,
        }
    }

    /// Whether trying the same run again later could succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            LookerError::Throttled { .. }
            | LookerError::Http { .. }
            | LookerError::DeadlineExceeded { .. }
            | LookerError::OutOfTime { .. } => true,
            LookerError::TaskEnded { status, .. } => status == "expired",
            LookerError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}
