//! Looker API 4.0 client (adapter).
//!
//! Runs saved Looks and inline queries and hands back a complete [`Extract`] or an error —
//! never a partial result: the extract is posted to the general ledger, so a silently capped
//! result would be a wrong journal.
//!
//! - [`settings`]: where Looker is and how hard to try (validated up front).
//! - [`auth`]: API-key login and the cached access token.
//! - [`client`]: the endpoints the connector uses, synchronous runs and asynchronous query
//!   tasks (for results beyond Looker's 5,000-row cap, see [`settings::ExtractPath`]).
//! - [`results`]: exact parsing of `json` / `json_detail` result bodies.
//! - [`delivery`]: what Looker POSTs to a webhook or action (json, json_detail, csv, base64).
//! - [`error`]: operator-facing errors.
//!
//! [`Extract`]: crate::domain::source::Extract

pub(crate) mod auth;
pub(crate) mod client;
pub mod delivery;
pub(crate) mod error;
mod port;
// The rate limiter is shared with the D365 client; `super::rate` keeps working in here.
use crate::rate;
pub(crate) mod results;
pub(crate) mod settings;

pub use auth::LOOKER_APP_ID;
pub use client::{ExploreField, ExploreInfo, LookInfo, LookQuery, LookerClient};
pub use error::LookerError;
pub use results::{parse_json_detail, parse_json_rows, parse_json_rows_streaming};
pub use settings::{
    ExtractPath, LookerSettings, DEFAULT_MAX_REQUESTS_PER_MINUTE, LOOKER_DEFAULT_ROW_CAP,
};
