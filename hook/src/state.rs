//! The OCI state runc writes on a hook's stdin, and what the hook derives
//! from it.

use crate::request::{NetRequest, NetResult, RESULT_FILE};
use crate::HookError;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The OCI runtime state (runtime-spec `state`).
#[derive(Clone, Debug, Deserialize)]
pub struct OciState {
    /// Container id.
    pub id: String,
    /// `creating`, `created`, `running`, `stopped`.
    #[serde(default)]
    pub status: String,
    /// Container init pid (absent or 0 once stopped).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Bundle dir.
    pub bundle: PathBuf,
    /// `config.json` annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

impl OciState {
    /// Parses the state and checks the id (it names files).
    pub fn parse(data: &[u8]) -> Result<Self, HookError> {
        let s: OciState = serde_json::from_slice(data)
            .map_err(|e| HookError::Request(format!("OCI state on stdin: {e}")))?;
        if s.id.is_empty()
            || s.id.len() > 255
            || s.id.starts_with('.')
            || !s
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(HookError::Request(format!("bad container id {:?}", s.id)));
        }
        Ok(s)
    }

    /// The network request: from the state's annotations, else from the
    /// bundle's `config.json` (a runtime that does not pass annotations).
    pub fn request(&self) -> Result<Option<NetRequest>, HookError> {
        if let Some(r) = NetRequest::from_annotations(&self.annotations)? {
            return Ok(Some(r));
        }
        let path = self.bundle.join("config.json");
        let Ok(data) = std::fs::read(&path) else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            annotations: HashMap<String, String>,
        }
        let c: Config = serde_json::from_slice(&data)
            .map_err(|e| HookError::Request(format!("{}: {e}", path.display())))?;
        NetRequest::from_annotations(&c.annotations)
    }

    /// The live init pid, if any.
    pub fn live_pid(&self) -> Option<u32> {
        self.pid
            .filter(|p| *p > 0 && Path::new(&format!("/proc/{p}")).exists())
    }

    /// Where the result goes.
    pub fn result_path(&self, req: &NetRequest) -> PathBuf {
        req.result_path
            .clone()
            .unwrap_or_else(|| self.bundle.join(RESULT_FILE))
    }
}

impl NetResult {
    /// Reads a result file (`<bundle>/cntnr-net.json`); `Ok(None)` if absent.
    pub fn read(path: &Path) -> Result<Option<Self>, HookError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| HookError::Request(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HookError::io("reading network result", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_parses_and_ids_are_checked() {
        let s = OciState::parse(br#"{"ociVersion":"1.0.2","id":"shop-web-1","status":"creating","pid":42,"bundle":"/b","annotations":{"a":"b"}}"#).unwrap();
        assert_eq!(s.pid, Some(42));
        assert_eq!(
            s.result_path(&NetRequest::new(vec![])),
            PathBuf::from("/b/cntnr-net.json")
        );
        let s = OciState::parse(br#"{"id":"x","bundle":"/b"}"#).unwrap();
        assert_eq!(s.live_pid(), None);
        for bad in [
            r#"{"id":"../x","bundle":"/b"}"#,
            r#"{"id":"","bundle":"/b"}"#,
            r#"{"bundle":"/b"}"#,
        ] {
            assert!(OciState::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
