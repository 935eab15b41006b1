//! `kiln plugin ...`: start a plugin crate, build it, check a component,
//! run it once against a throwaway repository, list the built-in plugins.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use kiln::config::{CustomRoleConfig, KilnConfig, Role};
use kiln::plugin::{Capability, CapabilitySet, PluginHost, PluginLimits, builtin};

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin crate: Cargo.toml (depending on this Kiln's SDK),
    /// kiln-plugin.toml, a working minimal role in src/lib.rs, SKILL.md, and
    /// a test running it against a scripted model. Refuses to overwrite.
    New {
        /// The plugin's name, `[a-z0-9-]`.
        name: String,
        /// The role it plays (default: the plugin's name).
        #[arg(long)]
        role: Option<String>,
        /// Where to write the crate (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The kiln:role contract version to build against.
        #[arg(long, default_value = kiln::plugin::wit::latest::VERSION)]
        wit: String,
    },
    /// Print a plugin's world, imports, manifest and whether this host would
    /// load it. Exits 1 if the plugin would be refused.
    Check {
        /// The component (`.wasm`) to check.
        file: PathBuf,
        /// Print the report as JSON (for CI pipelines).
        #[arg(long)]
        json: bool,
        /// The config whose [[roles]] grant custom roles (default: ./kiln.toml if it exists).
        #[arg(long, short = 'c', env = "KILN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Build a plugin crate (a crate with a kiln-plugin.toml) into a
    /// component, then check it.
    Build {
        /// The plugin crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component (default: <dir>/target/kiln/<name>.wasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The config whose [[roles]] grant custom roles (default: ./kiln.toml if it exists).
        #[arg(long, short = 'c', env = "KILN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a plugin once, as a run of its role, against a throwaway
    /// repository on a throwaway local forge, in a real sandbox, with a
    /// scripted model; print its events and the effects it proposed.
    Test {
        /// The plugin crate's directory (built first) or a component (`.wasm`).
        plugin: PathBuf,
        /// The model script to replay (see runner/demo/*.json for the format).
        #[arg(long)]
        script: PathBuf,
        /// The issue to run on: first line the title, the rest the body
        /// (default: a small bug report).
        #[arg(long)]
        issue_file: Option<PathBuf>,
    },
    /// List the role plugins built into this binary.
    List,
}

/// Run a plugin command.
pub async fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::New {
            name,
            role,
            dir,
            wit,
        } => new_crate(&name, role.as_deref(), dir, &wit),
        PluginCommand::Check { file, json, config } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let config = super::run::load_config(config.as_deref())?;
            check(&file, &bytes, &config, None, json)
        }
        PluginCommand::Build {
            dir,
            output,
            config,
        } => {
            let path = build(&dir, output)?;
            let bytes = std::fs::read(&path)?;
            let config = super::run::load_config(config.as_deref())?;
            let skill = dir.join("SKILL.md").canonicalize().ok();
            check(&path, &bytes, &config, skill.as_deref(), false)
        }
        PluginCommand::Test {
            plugin,
            script,
            issue_file,
        } => test(&plugin, &script, issue_file.as_deref()).await,
        PluginCommand::List => {
            if builtin::ROLE_PLUGINS.is_empty() {
                println!("no role plugins are built into this binary");
            }
            for (name, bytes) in builtin::ROLE_PLUGINS {
                println!("{name} ({} bytes)", bytes.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Build the plugin crate in `dir`; returns the component's path.
fn build(dir: &Path, output: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no such directory {}", dir.display()))?;
    let krate = kiln_plugin_build::load_crate(&dir)?;
    let target = dir.join("target").join("kiln");
    let out_dir = target.join("out");
    eprintln!(
        "building {} (kiln:role@{}) for {} ...",
        krate.package,
        krate.manifest.wit,
        kiln_plugin_build::WASM_TARGET
    );
    let built = kiln_plugin_build::Builder::new(&dir, &target)
        .build(std::slice::from_ref(&krate), &out_dir)?;
    let mut path = built[0].path.clone();
    if let Some(output) = output {
        std::fs::copy(&path, &output)
            .with_context(|| format!("cannot write {}", output.display()))?;
        path = output;
    }
    println!("built {}", path.display());
    Ok(path)
}

/// The Kiln checkout this binary was built from, if it is still there: a
/// new plugin depends on its SDK by path.
fn kiln_checkout() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().ok()?;
    root.join("plugins/sdk/Cargo.toml")
        .is_file()
        .then_some(root)
}

/// `kiln plugin new`.
fn new_crate(
    name: &str,
    role: Option<&str>,
    dir: Option<PathBuf>,
    wit: &str,
) -> anyhow::Result<ExitCode> {
    if !kiln::config::is_role_name(name) {
        bail!("plugin name {name:?} must be 1-64 of [a-z0-9-]");
    }
    let role = role.unwrap_or(name);
    if !kiln::config::is_role_name(role) {
        bail!("role {role:?} must be 1-64 of [a-z0-9-]");
    }
    if !kiln::plugin::wit::SUPPORTED_VERSIONS.contains(&wit) {
        bail!(
            "--wit {wit}: this Kiln supports kiln:role {}",
            kiln::plugin::wit::SUPPORTED_VERSIONS.join(", ")
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty: kiln plugin new never overwrites; pick another --dir",
            dir.display()
        );
    }
    let feature = format!("wit-{}", wit.replace('.', "-"));
    let features = if wit == kiln::plugin::wit::latest::VERSION {
        String::new()
    } else {
        format!(", default-features = false, features = [\"{feature}\"]")
    };
    let sdk = match kiln_checkout() {
        Some(root) => format!(
            "kiln-plugin-sdk = {{ path = {:?}{features} }}",
            root.join("plugins/sdk").display().to_string()
        ),
        None => format!(
            "# The Kiln checkout this kiln was built from is gone: point this at\n\
             # plugins/sdk of a Kiln checkout.\n\
             kiln-plugin-sdk = {{ version = {:?}{features} }}",
            env!("CARGO_PKG_VERSION")
        ),
    };
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{role}}", role)
            .replace("{{package}}", &format!("kiln-plugin-{name}"))
            .replace("{{wit}}", wit)
            .replace("{{sdk}}", &sdk)
    };
    let files: [(&str, &str); 7] = [
        (
            "Cargo.toml",
            include_str!("plugin_template/Cargo.toml.tmpl"),
        ),
        (
            "kiln-plugin.toml",
            include_str!("plugin_template/kiln-plugin.toml.tmpl"),
        ),
        ("src/lib.rs", include_str!("plugin_template/lib.rs.tmpl")),
        ("SKILL.md", include_str!("plugin_template/SKILL.md.tmpl")),
        (
            "tests/issue.md",
            include_str!("plugin_template/issue.md.tmpl"),
        ),
        (
            "tests/script.json",
            include_str!("plugin_template/script.json.tmpl"),
        ),
        (
            "tests/plugin.rs",
            include_str!("plugin_template/test.rs.tmpl"),
        ),
    ];
    for (path, template) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, fill(template))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created plugin {name} (role {role}, kiln:role@{wit}) in {}\n\n\
         next:\n  kiln plugin build {d}\n  kiln plugin test {d} --script {d}/tests/script.json --issue-file {d}/tests/issue.md",
        dir.display(),
        d = dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The `[[roles]]` entry that would run this plugin, for people to paste.
fn roles_snippet(
    file: &Path,
    bytes: &[u8],
    role: &str,
    caps: &[String],
    skill: Option<&Path>,
) -> String {
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    let mut out = format!(
        "[[roles]]\nname = {role:?}\nplugin = {:?}\nsha256 = \"{sha}\"\ncapabilities = [{}]\n",
        file.display().to_string(),
        caps.iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(skill) = skill {
        out.push_str(&format!("skill = {:?}\n", skill.display().to_string()));
    }
    out
}

/// A host that grants the configured custom roles.
fn host_for(config: &KilnConfig) -> anyhow::Result<PluginHost> {
    let mut host = PluginHost::new(PluginLimits::default())?;
    for r in &config.roles {
        host.grant_role(&r.name, CapabilitySet::parse(&r.capabilities)?);
    }
    Ok(host)
}

/// `kiln plugin check` (and the check after `build`): the report, as text
/// or JSON; exit 1 if this host would refuse the plugin.
fn check(
    file: &Path,
    bytes: &[u8],
    config: &KilnConfig,
    skill: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use kiln::plugin::LoadError;
    let label = file.display().to_string();
    let host = host_for(config)?;
    let (info, verdict) = match host.check(bytes) {
        Ok(v) => v,
        Err(e) => {
            if json {
                let report =
                    serde_json::json!({"file": label, "ok": false, "error": e.to_string()});
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{label}\nverdict: REFUSED: {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let m = &info.manifest;
    // A custom role this config does not grant yet: judge the plugin as if
    // its role granted what it asks, and say how to grant it.
    let unconfigured = matches!(verdict, Err(LoadError::UnknownRole { .. }));
    let verdict = if unconfigured {
        let mut host = host_for(config)?;
        host.grant_role(&m.role, CapabilitySet::parse(&m.capabilities)?);
        host.check(bytes)?.1
    } else {
        verdict
    };
    let imports: Vec<serde_json::Value> = info
        .imports
        .iter()
        .map(|import| {
            let interface = import
                .name
                .split('/')
                .nth(1)
                .and_then(|s| s.split('@').next())
                .unwrap_or("");
            let functions: Vec<serde_json::Value> = import
                .functions
                .iter()
                .map(|f| {
                    let need = Capability::for_import(&m.wit, interface, f);
                    serde_json::json!({
                        "name": f,
                        "in_contract": need.is_ok(),
                        "capability": need.ok().flatten().map(|c| c.as_str()),
                        "declared": need.ok().flatten().is_none_or(|c| m.capabilities.iter().any(|d| d == c.as_str())),
                    })
                })
                .collect();
            serde_json::json!({"name": import.name, "functions": functions})
        })
        .collect();
    let snippet = unconfigured.then(|| roles_snippet(file, bytes, &m.role, &m.capabilities, skill));
    if json {
        let report = serde_json::json!({
            "file": label,
            "ok": verdict.is_ok(),
            "plugin": {
                "name": m.name,
                "version": m.version,
                "role": m.role,
                "wit": m.wit,
                "description": m.description,
                "capabilities": m.capabilities,
            },
            "size": info.size,
            "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)),
            "exports": info.exports,
            "imports": imports,
            "granted": verdict.as_ref().ok().map(|caps| caps.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
            "error": verdict.as_ref().err().map(|e| e.to_string()),
            "role_configured": !unconfigured,
            "roles_snippet": snippet,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(if verdict.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    println!("{label}");
    println!(
        "plugin:       {} {} ({})",
        m.name,
        m.version,
        if m.description.is_empty() {
            "no description"
        } else {
            &m.description
        }
    );
    println!("role:         {}", m.role);
    println!("world:        kiln:role/role@{}", m.wit);
    println!("size:         {} bytes", info.size);
    println!("exports:      {}", info.exports.join(", "));
    println!(
        "capabilities: {}",
        if m.capabilities.is_empty() {
            "(none)".to_string()
        } else {
            m.capabilities.join(", ")
        }
    );
    println!("imports:");
    for import in &imports {
        println!("  {}", import["name"].as_str().unwrap_or_default());
        for f in import["functions"].as_array().into_iter().flatten() {
            let need = match (
                f["in_contract"].as_bool(),
                f["capability"].as_str(),
                f["declared"].as_bool(),
            ) {
                (Some(false), _, _) => "not part of the contract".to_string(),
                (_, Some(cap), Some(true)) => format!("needs {cap} (declared)"),
                (_, Some(cap), _) => format!("needs {cap} (NOT DECLARED)"),
                _ => "no capability needed".to_string(),
            };
            println!("    {:<24} {need}", f["name"].as_str().unwrap_or_default());
        }
    }
    match verdict {
        Ok(caps) => {
            let caps: Vec<_> = caps.iter().map(|c| c.as_str()).collect();
            println!(
                "verdict:      OK: loads with {}",
                if caps.is_empty() {
                    "no capabilities".to_string()
                } else {
                    caps.join(", ")
                }
            );
            if let Some(snippet) = snippet {
                println!(
                    "\nrole `{}` is not configured here: to run this plugin, add to kiln.toml\n\n{snippet}",
                    m.role
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("verdict:      REFUSED: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `kiln plugin test`.
async fn test(plugin: &Path, script: &Path, issue_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    use kiln::forge::local::LocalForge;
    use kiln::forge::{Forge, NewIssue, RepoRef};
    let started = std::time::Instant::now();
    let path = if plugin.is_dir() {
        build(plugin, None)?
    } else {
        plugin.to_path_buf()
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest = kiln::plugin::inspect::read_manifest(&bytes)
        .with_context(|| format!("{} is not a Kiln plugin", path.display()))?;
    let (title, body) = match issue_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let (title, body) = text.split_once('\n').unwrap_or((&text, ""));
            (title.trim().to_string(), body.trim().to_string())
        }
        None => (
            "The export button does nothing".to_string(),
            "Clicking Export does nothing; no error is shown.".to_string(),
        ),
    };
    let scratch = tempfile::tempdir()?;
    let data_dir = scratch.path().join("data");
    let root = data_dir.join("forge");
    let src = scratch.path().join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(
        src.join("README.md"),
        "# plugin-test\n\nA throwaway repository for `kiln plugin test`.\n",
    )?;
    let user = super::local_forge::local_user();
    let repo = RepoRef::parse("local/plugin-test")?;
    let forge = LocalForge::create(&root, repo, &user, Some(&src)).await?;
    let number = forge
        .create_issue(NewIssue {
            title,
            body,
            labels: Vec::new(),
        })
        .await?;
    let mut config = KilnConfig::default();
    let role: Role = manifest.role.parse().map_err(anyhow::Error::msg)?;
    if !role.is_builtin() {
        // The plugin's own role, granted exactly what its manifest asks:
        // the test shows what the plugin does, the grant is the operator's.
        let copy = scratch.path().join("plugin.wasm");
        std::fs::write(&copy, &bytes)?;
        let skill = plugin
            .is_dir()
            .then(|| plugin.join("SKILL.md"))
            .filter(|p| p.is_file());
        config.roles.push(CustomRoleConfig {
            name: manifest.role.clone(),
            plugin: copy,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            capabilities: manifest.capabilities.clone(),
            skill: skill.map(|p| p.canonicalize()).transpose()?,
            budget: None,
        });
        println!(
            "granting role {} what its manifest asks: {}",
            manifest.role,
            manifest.capabilities.join(", ")
        );
    }
    let model: Arc<dyn kiln::model::ModelProvider> =
        Arc::new(kiln::model::ScriptedProvider::load(script)?);
    let mut services = super::run::services(config, &data_dir, model).await?;
    if role.is_builtin() {
        let loaded = services
            .host
            .load(&bytes)
            .with_context(|| format!("loading {}", path.display()))?;
        services.plugins.insert(role, loaded);
    }
    println!(
        "running plugin {} {} (kiln:role@{}) as role {role} on {}#{number}",
        manifest.name,
        manifest.version,
        manifest.wit,
        forge.repo()
    );
    let forge: Arc<dyn Forge> = Arc::new(forge);
    let summary = super::run::run_one(
        &services,
        forge,
        role,
        number,
        kiln::worker::RunTrigger::Manual,
        &data_dir,
    )
    .await?;
    println!("\neffects proposed:");
    let effects = summary
        .report
        .as_ref()
        .map(|r| r.effects.as_slice())
        .unwrap_or_default();
    if effects.is_empty() {
        println!("  (none)");
    }
    for e in effects {
        println!("  {}", describe_effect(e));
    }
    // How the run ended is its `finished` event, printed above.
    println!("\ntook {:.1} s", started.elapsed().as_secs_f64());
    Ok(match summary.state {
        kiln::worker::RunEnd::Succeeded | kiln::worker::RunEnd::AwaitingApproval => {
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(1),
    })
}

/// One line for an effect: its id, what it is, and what became of it.
fn describe_effect(e: &kiln::forge::EffectRecord) -> String {
    use kiln::forge::{EffectState, Proposal};
    let what = match &e.proposal {
        Proposal::Comment { number, body } => {
            format!("forge.comment on #{number}: {}", first_line(body))
        }
        Proposal::Labels {
            number,
            add,
            remove,
        } => format!(
            "forge.set-labels on #{number}: {}",
            kiln::forge::describe_labels(add, remove)
        ),
        Proposal::PullRequest { title, .. } => format!("forge.propose-pull-request: {title}"),
        Proposal::PullRequestUpdate {
            number,
            commit_message,
            ..
        } => format!(
            "forge.update-pull-request #{number}: {}",
            first_line(commit_message)
        ),
        Proposal::Review {
            number, summary, ..
        } => format!("forge.review on #{number}: {}", first_line(summary)),
        Proposal::Reply {
            number,
            comment_id,
            body,
        } => format!(
            "forge.reply on #{number} to comment {comment_id}: {}",
            first_line(body)
        ),
        Proposal::Status {
            number,
            context,
            state,
            ..
        } => format!("forge.status {context} = {state} on #{number}"),
        Proposal::Report { number, body, .. } => {
            format!("forge.report on #{number}: {}", first_line(body))
        }
    };
    let state = match &e.state {
        EffectState::Recorded => "recorded".to_string(),
        EffectState::Applied { url } => match url {
            Some(u) => format!("applied ({u})"),
            None => "applied".to_string(),
        },
        EffectState::Held { reason, .. } => format!("held for approval: {reason}"),
    };
    format!("{} {what} — {state}", e.effect_id)
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(100).collect::<String>())
    } else {
        line.to_string()
    }
}
