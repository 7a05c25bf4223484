//! The `Store` port and its embedded SQLite implementation. Owned by the store work stream.
