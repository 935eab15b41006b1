//! Reading a plugin before running it: its manifest, what its component
//! imports and exports, and the verdict on whether it may load.
//!
//! The verdict is the load-time half of every capability: the plugin's
//! component may import only functions whose capability its manifest asks
//! for, and the manifest may ask only for what its role grants. The run-time
//! half is the check at the top of each import function.
use std::collections::HashMap;

use kiln_plugin_build::{MANIFEST_SECTION, Manifest, manifest::ManifestError};
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::capability::{Capability, CapabilitySet};
use super::wit;

/// Largest component accepted, in bytes. Compiling is the one thing a
/// plugin makes the host do before any limit applies.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// One imported interface of a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportInfo {
    /// Full import name, e.g. `kiln:role/forge@0.1.0`.
    pub name: String,
    /// The functions the component imports from it.
    pub functions: Vec<String>,
}

/// What a plugin is, as read from its component.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The embedded manifest.
    pub manifest: Manifest,
    /// Imported interfaces.
    pub imports: Vec<ImportInfo>,
    /// Exported names.
    pub exports: Vec<String>,
    /// Size of the component in bytes.
    pub size: usize,
}

/// Why a plugin was refused at load time.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Larger than [`MAX_COMPONENT_BYTES`].
    #[error("component is {size} bytes, the limit is {MAX_COMPONENT_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not a valid component (or a core module, not a component).
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// No `kiln:manifest` custom section.
    #[error(
        "component has no `{MANIFEST_SECTION}` section: build it with `kiln plugin build` so its kiln-plugin.toml is embedded"
    )]
    NoManifest,
    /// The manifest did not parse.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest names a WIT version this host does not support.
    #[error("plugin {plugin} targets kiln:role@{wit}, this host supports {supported}")]
    UnsupportedWit {
        /// Plugin name.
        plugin: String,
        /// The version asked for.
        wit: String,
        /// Versions supported.
        supported: String,
    },
    /// An import of another version of the contract than the manifest declares.
    #[error(
        "plugin {plugin} declares wit = \"{declared}\" in kiln-plugin.toml but imports `{import}`: \
         a plugin is built against one version of the contract (with the SDK: the `wit-{found_feature}` \
         feature gives {found}; declare wit = \"{found}\", or build against {declared})"
    )]
    VersionMismatch {
        /// Plugin name.
        plugin: String,
        /// The import of the other version.
        import: String,
        /// The version the manifest declares.
        declared: String,
        /// The version the import belongs to.
        found: String,
        /// `found` as an SDK feature suffix (`0-2-0`).
        found_feature: String,
    },
    /// An import outside the `kiln:role` package (e.g. WASI).
    #[error(
        "plugin {plugin} imports `{import}`, which is not part of kiln:role@{wit}: plugins must be pure components (no WASI, no other interfaces)"
    )]
    ForeignImport {
        /// Plugin name.
        plugin: String,
        /// The import.
        import: String,
        /// The manifest's WIT version.
        wit: String,
    },
    /// An import function Kiln does not know.
    #[error(
        "plugin {plugin} imports `{import}#{function}`, which is not a function of kiln:role@{wit}"
    )]
    UnknownFunction {
        /// Plugin name.
        plugin: String,
        /// The interface.
        import: String,
        /// The function.
        function: String,
        /// The manifest's WIT version.
        wit: String,
    },
    /// The component imports a function whose capability the manifest does not declare.
    #[error(
        "plugin {plugin} imports `{import}#{function}`, which needs capability {capability}, but its manifest does not declare it"
    )]
    UndeclaredImport {
        /// Plugin name.
        plugin: String,
        /// The interface.
        import: String,
        /// The function.
        function: String,
        /// The capability it needs.
        capability: Capability,
    },
    /// The manifest names a capability Kiln does not know.
    #[error("plugin {plugin}: {source}")]
    UnknownCapability {
        /// Plugin name.
        plugin: String,
        /// The parse error.
        source: super::capability::UnknownCapability,
    },
    /// The manifest's role is not a built-in role and not configured.
    #[error(
        "plugin {plugin} plays role `{role}`, which is neither built in nor configured in kiln.toml"
    )]
    UnknownRole {
        /// Plugin name.
        plugin: String,
        /// The role.
        role: String,
    },
    /// The manifest asks for a capability its role does not grant.
    #[error("plugin {plugin} asks for capability {capability}, which role {role} does not grant")]
    NotGranted {
        /// Plugin name.
        plugin: String,
        /// The role.
        role: String,
        /// The capability.
        capability: Capability,
    },
    /// No `run` export of the right type.
    #[error("plugin {plugin} does not export `run` from the kiln:role@{wit} world: {reason}")]
    BadExport {
        /// Plugin name.
        plugin: String,
        /// The manifest's WIT version.
        wit: String,
        /// What wasmtime reported.
        reason: String,
    },
}

/// Find the component-level `kiln:manifest` custom section.
pub fn read_manifest(bytes: &[u8]) -> Result<Manifest, LoadError> {
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| LoadError::Invalid(e.to_string()))?;
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::CustomSection(c) if depth == 0 && c.name() == MANIFEST_SECTION => {
                let text = std::str::from_utf8(c.data())
                    .map_err(|_| ManifestError::Toml("manifest section is not UTF-8".into()))?;
                return Ok(Manifest::parse(text)?);
            }
            _ => {}
        }
    }
    Err(LoadError::NoManifest)
}

/// Compile `bytes` and describe the plugin, without judging it.
pub fn inspect(engine: &Engine, bytes: &[u8]) -> Result<(PluginInfo, Component), LoadError> {
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(LoadError::TooLarge { size: bytes.len() });
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadError::Invalid(
            "this is a core module, not a component (componentize it with `kiln plugin build`)"
                .into(),
        ));
    }
    let manifest = read_manifest(bytes)?;
    let component =
        Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
    let ty = component.component_type();
    let mut imports = Vec::new();
    for (name, item) in ty.imports(engine) {
        let functions = match &item.ty {
            ComponentItem::ComponentInstance(inst) => inst
                .exports(engine)
                .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                .map(|(n, _)| n.to_string())
                .collect(),
            _ => Vec::new(),
        };
        imports.push(ImportInfo {
            name: name.to_string(),
            functions,
        });
    }
    let exports = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    Ok((
        PluginInfo {
            manifest,
            imports,
            exports,
            size: bytes.len(),
        },
        component,
    ))
}

/// Judge a plugin: returns the capabilities it will run with (what its
/// manifest asks for, all of which its role grants), or why it is refused.
pub fn verdict(
    info: &PluginInfo,
    role_grants: &HashMap<String, CapabilitySet>,
) -> Result<CapabilitySet, LoadError> {
    let m = &info.manifest;
    let plugin = m.name.clone();
    if !wit::SUPPORTED_VERSIONS.contains(&m.wit.as_str()) {
        return Err(LoadError::UnsupportedWit {
            plugin,
            wit: m.wit.clone(),
            supported: wit::SUPPORTED_VERSIONS.join(", "),
        });
    }
    let asked =
        CapabilitySet::parse(&m.capabilities).map_err(|source| LoadError::UnknownCapability {
            plugin: plugin.clone(),
            source,
        })?;
    let prefix = format!("{}/", wit::PACKAGE);
    let suffix = format!("@{}", m.wit);
    for import in &info.imports {
        if let Some((_, found)) = import
            .name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('@'))
            && found != m.wit
        {
            return Err(LoadError::VersionMismatch {
                plugin,
                import: import.name.clone(),
                declared: m.wit.clone(),
                found: found.to_string(),
                found_feature: found.replace('.', "-"),
            });
        }
        let interface = import
            .name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .ok_or_else(|| LoadError::ForeignImport {
                plugin: plugin.clone(),
                import: import.name.clone(),
                wit: m.wit.clone(),
            })?;
        for function in &import.functions {
            match Capability::for_import(&m.wit, interface, function) {
                Err(_) => {
                    return Err(LoadError::UnknownFunction {
                        plugin,
                        import: import.name.clone(),
                        function: function.clone(),
                        wit: m.wit.clone(),
                    });
                }
                Ok(Some(cap)) if !asked.contains(cap) => {
                    return Err(LoadError::UndeclaredImport {
                        plugin,
                        import: import.name.clone(),
                        function: function.clone(),
                        capability: cap,
                    });
                }
                Ok(_) => {}
            }
        }
    }
    let grants = role_grants
        .get(&m.role)
        .ok_or_else(|| LoadError::UnknownRole {
            plugin: plugin.clone(),
            role: m.role.clone(),
        })?;
    if let Some(cap) = asked.iter().find(|c| !grants.contains(*c)) {
        return Err(LoadError::NotGranted {
            plugin,
            role: m.role.clone(),
            capability: cap,
        });
    }
    Ok(asked)
}
