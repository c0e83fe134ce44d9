//! Who may call a Strata component: Ed25519 key pairs, EdDSA-signed JWTs
//! carrying [`Claims`] (`{scope, tenant_id?, exp?}`), and the check of a
//! token against what an interface allows ([`Access`]).
//!
//! * [`generate_key_pair`] writes `<name>.pem` (PKCS#8 private key, mode
//!   0600) and the public key (SPKI PEM) in a directory of public keys.
//! * [`Signer`] signs claims with one private key; the token's `kid` header
//!   is the key's name, which helps operators but is not trusted.
//! * [`KeySet`] verifies a token against every public key of a directory
//!   (or one file): during a rotation two keys are there and tokens signed
//!   by either are accepted. It notices keys added or removed by itself
//!   (the directory's mtime is looked at, at most once per
//!   [`KeySet::RECHECK_INTERVAL`]), so rotating needs no restart.
//!
//! * [`pg`] carries tokens as the password on PostgreSQL-protocol interfaces.
//!
//! Invariants: a token is accepted only with alg EdDSA, a valid signature
//! of a key in the set and, when it has `exp`, before then; a tenant-scoped
//! token only opens its own tenant, and the errors of [`Access::check`] say
//! nothing about whether another tenant exists. Nothing here panics on
//! input. Everything but [`pg::login`] is synchronous (file reads are small and rare);
//! cancellation does not apply.

mod keys;
pub mod pg;

pub use keys::{generate_key_pair, read_token_file, KeyError, KeySet, Signer};

use serde::{Deserialize, Serialize};
use utils::id::TenantId;

/// What a token allows (Neon's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything, on every component (the control plane).
    Admin,
    /// The pageserver's HTTP API and page service, and reading WAL from
    /// the safekeepers (the pageserver's walreceiver) and the broker.
    #[serde(rename = "pageserverapi")]
    PageServerApi,
    /// The safekeepers' HTTP API and walsender (peer recovery), and the
    /// broker (publish and subscribe).
    #[serde(rename = "safekeeperdata")]
    SafekeeperData,
    /// One tenant's timelines (`tenant_id` names it): page service and the
    /// HTTP routes under `/v1/tenant/<tenant_id>`.
    Tenant,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Admin => "admin",
            Scope::PageServerApi => "pageserverapi",
            Scope::SafekeeperData => "safekeeperdata",
            Scope::Tenant => "tenant",
        })
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown scope {s:?} (admin, pageserverapi, safekeeperdata, tenant)"))
    }
}

/// The payload of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub scope: Scope,
    /// The tenant of a [`Scope::Tenant`] token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// Expiry, seconds since the Unix epoch; none: does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

impl Claims {
    pub fn new(scope: Scope) -> Claims {
        Claims { scope, tenant_id: None, exp: None }
    }

    pub fn tenant(tenant_id: TenantId) -> Claims {
        Claims { scope: Scope::Tenant, tenant_id: Some(tenant_id), exp: None }
    }
}

/// Why a caller is refused. [`AuthError::is_forbidden`] tells 403 (a valid
/// token that does not allow this) from 401 (no valid token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token: this interface needs a JWT (Authorization: Bearer <token>, or the password)")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not match any of the accepted keys")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("a token of scope {scope} does not allow this")]
    WrongScope { scope: Scope },
    #[error("the token is for another tenant")]
    WrongTenant,
}

impl AuthError {
    /// A valid token that does not allow this (HTTP 403); else 401.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::WrongScope { .. } | AuthError::WrongTenant)
    }

    /// The `reason` label of [`REFUSED`].
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::WrongScope { .. } => "wrong_scope",
            AuthError::WrongTenant => "wrong_tenant",
        }
    }

    /// Count this refusal in [`REFUSED`] and log it (at debug: a client
    /// retrying with a bad token must not flood the log).
    pub fn record(&self, interface: &'static str) {
        REFUSED.with_label_values(&[interface, self.reason()]).inc();
        tracing::debug!(interface, reason = self.reason(), "caller refused: {self}");
    }
}

/// `strata_auth_refused_total{interface, reason}`: callers refused, by
/// interface (`http`, `page_service`, `walsender`) and [`AuthError::reason`]
/// (default registry).
pub static REFUSED: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    prometheus::register_int_counter_vec!("strata_auth_refused_total", "Callers refused for their token, by interface and reason", &["interface", "reason"])
        .expect("metric names are unique")
});

/// What one interface (route, protocol entry point) allows: the component
/// scopes listed, [`Scope::Admin`] always, and tenant tokens of `tenant`
/// when it is the tenant addressed (and `Scope::Tenant` is listed).
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub scopes: &'a [Scope],
    pub tenant: Option<TenantId>,
}

impl Access<'_> {
    /// Whether `claims` may use this interface. Compares ids only: call it
    /// before looking anything up, so the answer for another tenant is the
    /// same whether or not that tenant exists.
    pub fn check(&self, claims: &Claims) -> Result<(), AuthError> {
        match claims.scope {
            Scope::Admin => Ok(()),
            Scope::Tenant if self.scopes.contains(&Scope::Tenant) => match (self.tenant, claims.tenant_id) {
                (Some(wanted), Some(have)) if wanted == have => Ok(()),
                (Some(_), _) => Err(AuthError::WrongTenant),
                (None, _) => Err(AuthError::WrongScope { scope: Scope::Tenant }),
            },
            scope if scope != Scope::Tenant && self.scopes.contains(&scope) => Ok(()),
            scope => Err(AuthError::WrongScope { scope }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_SERVICE: &[Scope] = &[Scope::PageServerApi, Scope::Tenant];

    #[test]
    fn access_rules() {
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let on_a = Access { scopes: PAGE_SERVICE, tenant: Some(a) };
        assert_eq!(on_a.check(&Claims::new(Scope::Admin)), Ok(()));
        assert_eq!(on_a.check(&Claims::new(Scope::PageServerApi)), Ok(()));
        assert_eq!(on_a.check(&Claims::tenant(a)), Ok(()));
        assert_eq!(on_a.check(&Claims::tenant(b)), Err(AuthError::WrongTenant));
        assert_eq!(on_a.check(&Claims::new(Scope::Tenant)), Err(AuthError::WrongTenant));
        let sk = on_a.check(&Claims::new(Scope::SafekeeperData)).unwrap_err();
        assert_eq!(sk, AuthError::WrongScope { scope: Scope::SafekeeperData });
        assert!(sk.is_forbidden());
        let no_tenant = Access { scopes: PAGE_SERVICE, tenant: None };
        assert_eq!(no_tenant.check(&Claims::tenant(a)), Err(AuthError::WrongScope { scope: Scope::Tenant }));
        let components_only = Access { scopes: &[Scope::SafekeeperData], tenant: Some(a) };
        assert_eq!(components_only.check(&Claims::tenant(a)), Err(AuthError::WrongScope { scope: Scope::Tenant }));
        assert!(!AuthError::BadSignature.is_forbidden() && !AuthError::Missing.is_forbidden());
    }

    #[test]
    fn scopes_have_neons_names() {
        for (scope, name) in [(Scope::Admin, "admin"), (Scope::PageServerApi, "pageserverapi"), (Scope::SafekeeperData, "safekeeperdata"), (Scope::Tenant, "tenant")] {
            assert_eq!(serde_json::to_value(scope).unwrap(), serde_json::json!(name));
            assert_eq!(scope.to_string(), name);
            assert_eq!(name.parse::<Scope>().unwrap(), scope);
        }
        assert!("root".parse::<Scope>().is_err());
    }
}
