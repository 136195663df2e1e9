//! Heimdall's proxy: identity, tenant resolution, decisions, PromQL enforcement, upstream dispatch
//! and merge. The request path lands with the proxy issues; this crate holds its place in the
//! workspace so that the dependency direction (the proxy never depends on the control plane) is
//! fixed from the start.
