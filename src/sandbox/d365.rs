//! D365 F&O OData + Entra token endpoint simulator. Owned by the D365 work stream.
