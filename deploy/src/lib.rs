//! What users deploy StreamLens with lives beside this crate: `docker-compose.yml` at the
//! workspace root and the Grafana provisioning under `deploy/grafana/`. This crate's tests read
//! those files as Compose and Grafana would and hold them to the code and the schema; the
//! helpers here find the files and the code.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file under the workspace root, as text.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `.rs` file under each crate's `src/`, in one string.
pub fn workspace_sources() -> String {
    let entries = |dir: &Path| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
    let crates = entries(&root()).map(|p| p.join("src"));
    let mut dirs: Vec<PathBuf> = crates.filter(|p| p.is_dir()).collect();
    let mut out = String::new();
    while let Some(dir) = dirs.pop() {
        for path in entries(&dir) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out += &std::fs::read_to_string(&path).unwrap();
            }
        }
    }
    out
}
