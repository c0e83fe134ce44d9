//! `strata timeline delete NAME`: remove a branch everywhere — its timeline
//! and layer files on the pageserver, its WAL and control file on every
//! safekeeper, its stopped endpoints, and its name in `branches.toml`.
//!
//! Invariants: everything that could refuse is checked before anything is
//! removed — the branch exists, has no child branches (their reads go
//! through it), has no running endpoint, and every safekeeper answers. Then
//! the pageserver's copy goes first (it refuses, too, while the timeline
//! has branches), then the safekeepers', then the endpoints and the name.
//! A timeline a component no longer has (404) counts as removed there, so a
//! delete interrupted part-way can be run again.

use anyhow::{bail, Context};
use serde_json::json;
use utils::id::{TenantId, TimelineId};

use crate::api::Api;
use crate::cluster::Cluster;
use crate::endpoint::Endpoint;
use crate::state::State;

/// What a delete removed.
#[derive(Debug)]
pub struct Deleted {
    pub timeline_id: TimelineId,
    /// Stopped endpoints that were on the branch.
    pub endpoints: Vec<String>,
}

/// Whether an API error is a 404 (the component does not have it).
fn is_not_found(e: &anyhow::Error) -> bool {
    e.to_string().contains(": 404 Not Found")
}

impl Cluster {
    /// `strata timeline delete NAME`.
    pub async fn timeline_delete(&self, t: TenantId, name: &str) -> anyhow::Result<Deleted> {
        let api = Api::default();
        let mut state = State::load(&self.repo)?;
        let branch = state.branch(t, name)?.clone();
        let children: Vec<&str> = state
            .branches
            .iter()
            .filter(|b| b.tenant_id == t && b.ancestor.as_deref() == Some(name))
            .map(|b| b.name.as_str())
            .collect();
        if !children.is_empty() {
            bail!("branch {name:?} has child branches ({}); delete those first", children.join(", "));
        }
        let endpoints: Vec<Endpoint> =
            Endpoint::list(&self.repo)?.into_iter().filter(|e| e.timeline_id == branch.timeline_id).collect();
        if let Some(ep) = endpoints.iter().find(|e| e.running_pid().is_some()) {
            bail!("branch {name:?} has a running endpoint {:?}; stop it first with `strata endpoint stop {}`", ep.name, ep.name);
        }
        let tl_path = format!("/v1/tenant/{t}/timeline/{}", branch.timeline_id);
        for sk in &self.conf.safekeepers {
            let url = format!("{}{tl_path}", sk.at.http(sk.http_port));
            if let Err(e) = api.get(&url).await {
                if !is_not_found(&e) {
                    bail!("safekeeper {} does not answer ({e:#}); nothing deleted", sk.id);
                }
            }
        }

        let ps_url = format!("{}{tl_path}", self.pageserver_http());
        if let Err(e) = api.send(reqwest::Method::DELETE, &ps_url, &json!({})).await {
            if !is_not_found(&e) {
                return Err(e.context(format!("delete branch {name:?} on the pageserver")));
            }
        }
        for sk in &self.conf.safekeepers {
            let url = format!("{}{tl_path}", sk.at.http(sk.http_port));
            if let Err(e) = api.send(reqwest::Method::DELETE, &url, &json!({})).await {
                if !is_not_found(&e) {
                    return Err(e.context(format!("delete branch {name:?} on safekeeper {} (the pageserver's copy is gone; run the delete again)", sk.id)));
                }
            }
        }
        let mut removed = Vec::new();
        for ep in endpoints {
            for dir in [ep.runtime_dir(), Endpoint::dir(&self.repo, &ep.name)] {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).with_context(|| format!("remove endpoint directory {}", dir.display()))?;
                }
            }
            removed.push(ep.name);
        }
        state.branches.retain(|b| !(b.tenant_id == t && b.name == name));
        state.save(&self.repo)?;
        Ok(Deleted { timeline_id: branch.timeline_id, endpoints: removed })
    }
}
