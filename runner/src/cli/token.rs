//! `kiln token create|list|revoke`: API tokens, managed directly in the
//! local store file (`<data dir>/kiln.db`). Working on the file, not over
//! the API, is what lets an admin on the machine make the first token; over
//! the network the same is `POST/GET/DELETE /tokens` with an admin token.
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use kiln::store::{RunStore, TokenScope};

use super::local_forge::LocalArgs;

/// API token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (shown this once; only its hash is kept).
    Create {
        /// A name for people (shown as who approved, steered, cancelled).
        name: String,
        /// viewer (read), operator (also steer, approve, deny, cancel), admin (also tokens).
        #[arg(long, default_value = "viewer")]
        scope: String,
    },
    /// List tokens (never their values).
    List,
    /// Revoke a token by id; it stops working at once.
    Revoke {
        /// The token's id (from `kiln token list`).
        id: u64,
    },
}

/// The store the runner on this data directory uses: `[store]` of the
/// config (`KILN_CONFIG`, else `./kiln.toml`), else the SQLite file.
pub async fn open_store(local: &LocalArgs) -> anyhow::Result<Arc<dyn RunStore>> {
    let dir = local.data_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = std::env::var_os("KILN_CONFIG").map(std::path::PathBuf::from);
    let config = super::run::load_config(config_path.as_deref())?;
    kiln::store::open(&config, &dir, "kiln-cli")
        .await
        .with_context(|| format!("cannot open the store of {}", dir.display()))
}

/// Runs a token command.
pub async fn run(cmd: TokenCommand, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(local).await?;
    match cmd {
        TokenCommand::Create { name, scope } => {
            let scope: TokenScope = scope.parse()?;
            kiln::api::tokens::valid_name(&name).map_err(anyhow::Error::msg)?;
            let created = store.create_token(&name, scope).await?;
            eprintln!(
                "token {} ({}, id {}): shown this once, keep it safe",
                created.token.name,
                created.token.scope.as_str(),
                created.token.id
            );
            println!("{}", created.plaintext);
        }
        TokenCommand::List => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:<5} {:<9} {:<8} NAME", "ID", "SCOPE", "STATE")?;
            for t in store.list_tokens().await? {
                let state = if t.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "live"
                };
                writeln!(
                    out,
                    "{:<5} {:<9} {:<8} {}",
                    t.id,
                    t.scope.as_str(),
                    state,
                    t.name
                )?;
            }
        }
        TokenCommand::Revoke { id } => {
            let t = store.revoke_token(id).await?;
            eprintln!("revoked token {} ({})", t.id, t.name);
        }
    }
    store.flush().await?;
    Ok(ExitCode::SUCCESS)
}
