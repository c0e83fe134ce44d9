//! 128-bit identifiers of tenants and timelines.
//!
//! Owns [`TenantId`] and [`TimelineId`]: opaque 16-byte values whose text form
//! is 32 lowercase hex digits (the form used in paths, URLs, configs and
//! logs). Parsing accepts upper or lower case and nothing else: any other
//! length or character is an [`IdParseError`]. Serde uses the text form.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of bytes in an id.
pub const ID_SIZE_BYTES: usize = 16;

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {text:?}: expected {} hex digits", ID_SIZE_BYTES * 2)]
pub struct IdParseError {
    pub text: String,
}

/// The shared representation behind both id types.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
struct Id([u8; ID_SIZE_BYTES]);

impl Id {
    fn generate() -> Id {
        let mut bytes = [0u8; ID_SIZE_BYTES];
        rand::thread_rng().fill_bytes(&mut bytes);
        Id(bytes)
    }

    fn parse(text: &str) -> Result<Id, IdParseError> {
        let err = || IdParseError { text: text.to_string() };
        let mut bytes = [0u8; ID_SIZE_BYTES];
        if text.len() != ID_SIZE_BYTES * 2 {
            return Err(err());
        }
        hex::decode_to_slice(text, &mut bytes).map_err(|_| err())?;
        Ok(Id(bytes))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ID_SIZE_BYTES * 2];
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        // hex output is ASCII by construction.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(Id);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                $name(Id::generate())
            }

            pub fn from_bytes(bytes: [u8; ID_SIZE_BYTES]) -> Self {
                $name(Id(bytes))
            }

            pub fn as_bytes(&self) -> &[u8; ID_SIZE_BYTES] {
                &(self.0).0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(text: &str) -> Result<Self, IdParseError> {
                Id::parse(text).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Identifies a tenant: one PostgreSQL cluster with all its branches.
    TenantId
);
id_type!(
    /// Identifies a timeline (branch) within a tenant.
    TimelineId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let id = TenantId::generate();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(text.parse::<TenantId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<TenantId>().unwrap(), id);
    }

    #[test]
    fn known_value_prints_as_hex() {
        let mut bytes = [0u8; 16];
        bytes[0] = 0xab;
        bytes[15] = 0x01;
        let id = TimelineId::from_bytes(bytes);
        assert_eq!(id.to_string(), "ab000000000000000000000000000001");
        assert_eq!(format!("{id:?}"), "TimelineId(ab000000000000000000000000000001)");
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(TimelineId::generate(), TimelineId::generate());
    }

    #[test]
    fn bad_text_is_an_error() {
        for bad in ["", "abc", "zz000000000000000000000000000001", "ab0000000000000000000000000000011", "ab00000000000000000000000000000é"] {
            let err = bad.parse::<TenantId>().unwrap_err();
            assert_eq!(err.text, bad);
        }
    }

    #[test]
    fn serde_uses_text_form() {
        let id = TenantId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TenantId>("\"nothex\"").is_err());
    }
}
