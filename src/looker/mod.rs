//! Looker API 4.0 client (adapter). Owned by the Looker work stream.
