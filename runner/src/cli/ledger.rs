//! `kiln runs verify|export|pubkey`: the ledger of the local store
//! (`<data dir>/kiln.db`) and its host key, or an exported transcript
//! checked offline with nothing but a public key.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use kiln::ledger::transcript::FORMAT;
use kiln::ledger::{HostKey, PublicKey, Transcript};
use kiln::store::RunId;

use super::local_forge::LocalArgs;

/// Ledger commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute a run's hash chain and check its signature; names the
    /// first event that does not match (exit 0: intact, 1: tampered).
    Verify {
        /// The run (r12 or 12) in the local store.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        run: Option<String>,
        /// Check an exported transcript instead (needs --pubkey).
        #[arg(long, requires = "pubkey")]
        file: Option<PathBuf>,
        /// The key to check the signature with (`kiln runs pubkey` prints
        /// it); default for a run in the store: this data directory's key.
        #[arg(long)]
        pubkey: Option<String>,
    },
    /// Write a run's transcript with its hash chain and signature (JSON) for an auditor.
    Export {
        /// The run (r12 or 12).
        run: String,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print the host's public key, which verifies what this host signed.
    Pubkey,
}

fn key(local: &LocalArgs) -> anyhow::Result<HostKey> {
    let dir = local.data_dir()?;
    Ok(HostKey::load_or_create(&dir)?)
}

async fn transcript(local: &LocalArgs, run: &str) -> anyhow::Result<Transcript> {
    let id: RunId = run.parse()?;
    let store = super::token::open_store(local).await?;
    Ok(store.transcript(id).await?)
}

/// Runs a ledger command.
pub async fn run(cmd: LedgerCommand, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    match cmd {
        LedgerCommand::Pubkey => {
            println!("{}", key(local)?.public());
            Ok(ExitCode::SUCCESS)
        }
        LedgerCommand::Export { run, output } => {
            let t = transcript(local, &run).await?;
            let mut json = serde_json::to_string_pretty(&t)?;
            json.push('\n');
            match output {
                Some(path) => std::fs::write(&path, json)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout().lock().write_all(json.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCommand::Verify { run, file, pubkey } => {
            let given = pubkey
                .as_deref()
                .map(str::parse::<PublicKey>)
                .transpose()
                .map_err(anyhow::Error::msg)
                .context("--pubkey")?;
            let (t, key) = match (run, file) {
                (_, Some(path)) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let t: Transcript = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a Kiln transcript", path.display()))?;
                    if t.format != FORMAT {
                        bail!(
                            "{} is a {:?} transcript; this kiln reads {FORMAT:?}",
                            path.display(),
                            t.format
                        );
                    }
                    let Some(key) = given else {
                        bail!("--file needs --pubkey: the key that signed it")
                    };
                    (t, key)
                }
                (Some(run), None) => {
                    let key = match given {
                        Some(k) => k,
                        None => key(local)?.public(),
                    };
                    (transcript(local, &run).await?, key)
                }
                (None, None) => bail!("name a run, or an exported transcript with --file"),
            };
            let v = t.verify(&key);
            println!(
                "r{} ({}#{} {}): {v}",
                t.run.id, t.run.repo, t.run.number, t.run.role
            );
            Ok(if v.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
