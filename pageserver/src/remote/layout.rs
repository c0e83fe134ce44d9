//! Object keys of a tenant in remote storage:
//!
//! ```text
//! tenants/<tenant>/generation.json                       the generation record
//! tenants/<tenant>/config.json                           the tenant's settings (as the local file)
//! tenants/<tenant>/timelines/<timeline>/<layer file name> a layer (its name
//!                                                         carries the generation
//!                                                         that wrote it)
//! tenants/<tenant>/timelines/<timeline>/index_part.json-g<generation, 8 hex>
//! ```
//!
//! Invariants: a layer object is never overwritten with different content
//! by a later generation, because a generation only writes names that carry
//! its own number; each attachment writes only its own index object, and an
//! attach reads the newest index at or below its generation.
use remote_storage::RemotePath;
use utils::id::{TenantId, TimelineId};

/// Start of every index object's name; the generation follows.
pub const INDEX_PREFIX: &str = "index_part.json-g";
/// Name of a tenant's generation record.
pub const GENERATION_RECORD: &str = "generation.json";
/// Name of a tenant's settings object.
pub const TENANT_CONFIG: &str = "config.json";

fn path(key: String) -> RemotePath {
    // Every key built here is made of hex ids, fixed words and layer file
    // names (hex, '-', '_'), which are valid object keys.
    RemotePath::new(&key).unwrap_or_else(|e| panic!("internal: bad remote key {key}: {e}"))
}

/// `tenants/<tenant>`.
pub fn tenant_prefix(tenant_id: TenantId) -> RemotePath {
    path(format!("tenants/{tenant_id}"))
}

/// `tenants/<tenant>/timelines`.
pub fn timelines_prefix(tenant_id: TenantId) -> RemotePath {
    path(format!("tenants/{tenant_id}/timelines"))
}

/// `tenants/<tenant>/timelines/<timeline>`.
pub fn timeline_prefix(tenant_id: TenantId, timeline_id: TimelineId) -> RemotePath {
    path(format!("tenants/{tenant_id}/timelines/{timeline_id}"))
}

/// The object of layer file `name`.
pub fn layer_path(tenant_id: TenantId, timeline_id: TimelineId, name: &str) -> RemotePath {
    path(format!("tenants/{tenant_id}/timelines/{timeline_id}/{name}"))
}

/// The index object written by `generation`.
pub fn index_path(tenant_id: TenantId, timeline_id: TimelineId, generation: u32) -> RemotePath {
    path(format!("tenants/{tenant_id}/timelines/{timeline_id}/{INDEX_PREFIX}{generation:08x}"))
}

/// `tenants/<tenant>/generation.json`.
pub fn generation_record_path(tenant_id: TenantId) -> RemotePath {
    path(format!("tenants/{tenant_id}/{GENERATION_RECORD}"))
}

/// `tenants/<tenant>/config.json`.
pub fn tenant_config_path(tenant_id: TenantId) -> RemotePath {
    path(format!("tenants/{tenant_id}/{TENANT_CONFIG}"))
}

/// The generation of an index object's name, if it is one.
pub fn parse_index_generation(object_name: &str) -> Option<u32> {
    let hex = object_name.strip_prefix(INDEX_PREFIX)?;
    (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok()).flatten()
}

/// The timeline id of a key under [`timelines_prefix`], if it has one.
pub fn parse_timeline_of(key: &RemotePath) -> Option<TimelineId> {
    let mut parts = key.as_str().split('/');
    let (Some("tenants"), Some(_), Some("timelines"), Some(id)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_round_trip_and_reject_others() {
        let (t, tl) = (TenantId::generate(), TimelineId::generate());
        let p = index_path(t, tl, 0x1a);
        assert_eq!(parse_index_generation(p.object_name()), Some(0x1a));
        assert_eq!(parse_index_generation("index_part.json-g1"), None);
        assert_eq!(parse_index_generation("index_part.json-gzzzzzzzz"), None);
        assert_eq!(parse_index_generation("000000-ffff__1-2-g00000001"), None);
        assert_eq!(parse_timeline_of(&p), Some(tl));
        assert_eq!(parse_timeline_of(&generation_record_path(t)), None);
    }
}
