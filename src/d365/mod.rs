//! D365 F&O OData + Entra ID client (adapter). Owned by the D365 work stream.
