//! Looker API 4.0 simulator. Owned by the Looker work stream.
