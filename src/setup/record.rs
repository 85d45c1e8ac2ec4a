//! `installed.json` in a setup folder: what `vlguard-ort setup` put there, so a rerun
//! knows, without asking the index, that a package is installed and complete.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SetupError;

pub const RECORD_FILE: &str = "installed.json";

/// Every package installed in one folder, by package name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Installed {
    pub packages: BTreeMap<String, Package>,
}

/// One installed wheel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub version: String,
    pub wheel: String,
    pub sha256: String,
    /// The files taken from it, relative to the folder.
    pub files: Vec<String>,
}

impl Installed {
    /// The record in `dir`; none (or an unreadable one, said on stderr) is an empty record,
    /// so the packages are installed again.
    pub fn load(dir: &Path) -> Installed {
        let path = dir.join(RECORD_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return Installed::default();
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            eprintln!(
                "setup: ignoring unreadable {} ({e}); installing again",
                path.display()
            );
            Installed::default()
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), SetupError> {
        let path = dir.join(RECORD_FILE);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        crate::util::write_atomic(&path, text.as_bytes())
            .map_err(|source| SetupError::Io { path, source })
    }

    /// `package`'s record when its version is one `matches` accepts and every file it
    /// lists is still in `dir`.
    pub fn complete(
        &self,
        dir: &Path,
        package: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Option<&Package> {
        self.packages.get(package).filter(|p| {
            matches(&p.version)
                && !p.files.is_empty()
                && p.files.iter().all(|f| dir.join(f).is_file())
        })
    }
}
