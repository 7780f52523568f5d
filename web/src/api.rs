//! Request and response bodies and headers of the v1 API.

use serde::Serialize;

/// Header carrying a token naming a write's position or a read's state.
pub const TOKEN_HEADER: &str = "meridian-token";

/// Body of every successful write.
#[derive(Serialize, Debug)]
pub struct WriteResponse {
    /// The document id.
    pub id: String,
    /// Opaque token naming the write's position.
    pub token: String,
    /// The change's HLC timestamp (RFC 3339 with `_<logical counter>`).
    pub hlc: String,
}

/// Body of `GET /v1/docs`.
#[derive(Serialize, Debug)]
pub struct ListResponse {
    /// Ids in order.
    pub ids: Vec<String>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Default and largest page sizes for listing.
pub const LIST_LIMIT_DEFAULT: usize = 100;
/// Largest page size accepted.
pub const LIST_LIMIT_MAX: usize = 1000;
