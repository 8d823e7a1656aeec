//! The netns topology of `zmesh-ctl` as a [`Cluster`] (placeholder until it is merged).

use std::path::Path;

use crate::method::cli::{Settings, SystemKind};
use crate::method::cluster::Cluster;

pub fn check_binaries(_s: &Settings) -> anyhow::Result<()> {
    Ok(())
}

pub fn up(_s: &Settings, _sys: SystemKind, _logs: &Path) -> anyhow::Result<Box<dyn Cluster>> {
    anyhow::bail!("the netns topology is not available in this build")
}
