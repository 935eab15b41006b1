//! The `kiln` command line.
fn main() -> anyhow::Result<()> {
    Ok(())
}
