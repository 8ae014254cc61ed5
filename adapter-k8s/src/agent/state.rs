//! The persisted election state `{term, voted_for}`: one small JSON file, replaced atomically
//! (write a temporary file, fsync it, rename it over the old one, fsync the directory), so a crash
//! leaves either the old state or the new one, never a torn one.

use base_core::quasar::PersistedState;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "quasar-state.json";
const STATE_TMP: &str = "quasar-state.json.tmp";
/// A state file larger than this is not ours.
const STATE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {file}: {problem}")]
    Corrupt { file: PathBuf, problem: String },
}

#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Creates the directory if needed.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The stored state, or the initial one if there is none. A file that cannot be read as our
    /// state is an error: starting from scratch could vote twice in a term.
    pub fn load(&self) -> Result<PersistedState, StateError> {
        let file = self.dir.join(STATE_FILE);
        let io = |source| StateError::Io {
            dir: self.dir.clone(),
            source,
        };
        match std::fs::metadata(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PersistedState::default());
            }
            Err(e) => return Err(io(e)),
            Ok(meta) if meta.len() > STATE_BYTES_MAX => {
                return Err(StateError::Corrupt {
                    file,
                    problem: format!("{} bytes is too large", meta.len()),
                });
            }
            Ok(_) => {}
        }
        let bytes = std::fs::read(&file).map_err(io)?;
        serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            file,
            problem: e.to_string(),
        })
    }

    /// Durably replaces the stored state. Returns only once it is on disk.
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            dir: self.dir.clone(),
            source,
        };
        let tmp = self.dir.join(STATE_TMP);
        let bytes = serde_json::to_vec(state).map_err(|e| StateError::Corrupt {
            file: tmp.clone(),
            problem: e.to_string(),
        })?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, self.dir.join(STATE_FILE)).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base_core::{NodeId, Term};

    #[test]
    fn save_then_load() {
        let dir = std::env::temp_dir().join(format!("quasar-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), PersistedState::default());
        let s = PersistedState {
            term: Term(7),
            voted_for: Some(NodeId::from("b")),
            membership: Some(base_core::quasar::Membership::bootstrap([
                NodeId::from("a"),
                NodeId::from("b"),
            ])),
        };
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        std::fs::write(dir.join(STATE_FILE), b"{garbage").unwrap();
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
