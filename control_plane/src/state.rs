//! Names the user gives to things: the default tenant and branches (a branch
//! name maps to a tenant's timeline). Kept in `<repo>/branches.toml`,
//! rewritten atomically on every change.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use utils::id::{TenantId, TimelineId};

const STATE_FILE: &str = "branches.toml";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Branch {
    pub name: String,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub ancestor: Option<String>,
    /// LSN on the ancestor where the branch starts (`X/Y`).
    pub ancestor_lsn: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub default_tenant: Option<TenantId>,
    #[serde(default)]
    pub branches: Vec<Branch>,
    /// The last generation handed out per tenant (tenants never attached
    /// again are at 1, the generation they were created with).
    #[serde(default)]
    pub generations: std::collections::BTreeMap<TenantId, u32>,
}

impl State {
    pub fn load(repo: &Path) -> anyhow::Result<State> {
        let path = repo.join(STATE_FILE);
        if !path.exists() {
            return Ok(State::default());
        }
        let text = std::fs::read_to_string(&path)?;
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    pub fn save(&self, repo: &Path) -> anyhow::Result<()> {
        let tmp = repo.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, toml::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, repo.join(STATE_FILE))?;
        Ok(())
    }

    /// Every tenant with a branch.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut out: Vec<TenantId> = self.branches.iter().map(|b| b.tenant_id).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Hand out the next generation of `tenant` (save the state before
    /// using it: a number is never handed out twice).
    pub fn next_generation(&mut self, tenant: TenantId) -> u32 {
        let g = self.generations.entry(tenant).or_insert(1);
        *g += 1;
        *g
    }

    pub fn tenant(&self, given: Option<TenantId>) -> anyhow::Result<TenantId> {
        given.or(self.default_tenant).context("no tenant given and no default tenant; run `strata tenant create --set-default`")
    }

    pub fn branch(&self, tenant: TenantId, name: &str) -> anyhow::Result<&Branch> {
        match self.branches.iter().find(|b| b.tenant_id == tenant && b.name == name) {
            Some(b) => Ok(b),
            None => bail!("unknown branch {name:?} of tenant {tenant}; see `strata timeline list`"),
        }
    }
}
