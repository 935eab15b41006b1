//! Serde adapters for types owned elsewhere that have no serde of their own
//! in both directions ([`Role`], [`Trust`]), written as their policy names.

use crate::config::Role;
use crate::policy::Trust;

/// [`Role`] as its `kiln.toml` name (`implementation`).
pub mod role {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the role's name.
    pub fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(role.as_str())
    }

    /// Reads a role's name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let name = String::deserialize(d)?;
        parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown role {name:?}")))
    }

    /// The role named `name` (built in, or a custom role's name).
    pub fn parse(name: &str) -> Option<Role> {
        name.parse().ok()
    }
}

/// [`Trust`] as its policy name (`trusted`, `untrusted`).
pub mod trust {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the trust's name.
    pub fn serialize<S: Serializer>(trust: &Trust, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(trust.as_str())
    }

    /// Reads a trust name; anything but `trusted` is untrusted (fail closed).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Trust, D::Error> {
        let name = String::deserialize(d)?;
        Ok(if name == Trust::Trusted.as_str() {
            Trust::Trusted
        } else {
            Trust::Untrusted
        })
    }
}
