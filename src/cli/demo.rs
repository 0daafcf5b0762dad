//! `pgtunnel demo`: the whole flow on a throwaway cluster.

use clap::Args;

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo: not built yet")
}
