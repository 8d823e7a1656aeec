//! Where the topology finds zmesh's binaries: one directory (target/release or target/debug).

use std::path::{Path, PathBuf};

use super::Error;

/// The binaries the mesh needs, and the package that builds each.
const PACKAGES: [(&str, &str); 5] = [
    ("zmesh-node", "zmesh-node"),
    ("zmesh-control", "zmesh-control"),
    ("zmesh-agent", "zmesh-agent"),
    ("zmesh-cni", "zmesh-agent"),
    ("zmeshctl", "zmesh-ctl"),
];

/// A directory holding `zmesh-node`, `zmesh-control`, `zmesh-agent`, `zmesh-cni` and
/// `zmeshctl`.
#[derive(Debug, Clone)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: impl Into<PathBuf>) -> Bins {
        Bins { dir: dir.into() }
    }

    /// The directory of the running executable; for a test or bench executable in
    /// `target/<profile>/deps`, its parent `target/<profile>`.
    pub fn discover() -> Result<Bins, Error> {
        let exe = std::env::current_exe().map_err(|source| Error::Io {
            what: "current executable".into(),
            source,
        })?;
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Ok(Bins { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `name`: a zmesh binary from this directory, or any other program as is
    /// (looked up in PATH when started).
    pub fn resolve(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        if !name.contains('/') && p.exists() {
            return p;
        }
        PathBuf::from(name)
    }

    /// The path of a zmesh binary, or an error naming the cargo command that builds it.
    pub fn get(&self, name: &str) -> Result<PathBuf, Error> {
        let p = self.dir.join(name);
        if p.exists() {
            return Ok(p);
        }
        Err(Error::MissingBinary {
            binary: name.into(),
            dir: self.dir.clone(),
            build: self.build_command(),
        })
    }

    /// Checks every binary the mesh needs is there.
    pub fn check_mesh(&self) -> Result<(), Error> {
        for (b, _) in PACKAGES {
            self.get(b)?;
        }
        Ok(())
    }

    /// The cargo command that builds every binary the topology runs, for this profile.
    pub fn build_command(&self) -> String {
        let release = self.dir.file_name().is_some_and(|n| n == "release");
        let mut pkgs: Vec<&str> = PACKAGES.iter().map(|(_, p)| *p).collect();
        pkgs.dedup();
        let flags: Vec<String> = pkgs.iter().map(|p| format!("-p {p}")).collect();
        format!(
            "cargo build{} {}",
            if release { " --release" } else { "" },
            flags.join(" ")
        )
    }
}
