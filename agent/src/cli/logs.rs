//! `cntnr logs PROJECT SERVICE [--replica N] [-f]`: a container's output on
//! this node, from the log file its shim writes
//! (`<state-dir>/logs/<id>.log`, rotated once to `.log.1`). `-f` keeps
//! printing what is appended, across rotations, until interrupted.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use cntnr_model::{ContainerId, ServiceName};

/// Arguments of `cntnr logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The project.
    pub project: String,
    /// The service.
    pub service: String,
    /// The replica (from 1).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub replica: u32,
    /// Keep printing new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// The log file of a container.
pub fn log_path(state_dir: &Path, id: &ContainerId) -> PathBuf {
    state_dir.join("logs").join(format!("{id}.log"))
}

/// Runs `logs`.
pub fn run(state_dir: &Path, args: &LogsArgs) -> Result<()> {
    let project = super::project_name(&args.project)?;
    let service = ServiceName::new(args.service.as_str()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.replica == 0 {
        anyhow::bail!("--replica: replicas count from 1");
    }
    let id = ContainerId::new(&project, &service, args.replica);
    let path = log_path(state_dir, &id);
    let rotated = path.with_extension("log.1");
    if !path.exists() && !rotated.exists() {
        anyhow::bail!(
            "no logs for {id} on this node (looked for {})",
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    if let Ok(data) = std::fs::read(&rotated) {
        out.write_all(&data)?;
    }
    let mut offset = copy_from(&path, 0, &mut out)?;
    out.flush()?;
    if !args.follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Rotated (or truncated): the rest of the old file is in .log.1.
            if let Ok(mut f) = std::fs::File::open(&rotated) {
                if f.seek(SeekFrom::Start(offset)).is_ok() {
                    let mut rest = Vec::new();
                    let _ = f.read_to_end(&mut rest);
                    out.write_all(&rest)?;
                }
            }
            offset = 0;
        }
        offset = copy_from(&path, offset, &mut out)?;
        out.flush()?;
    }
}

/// Copies `path` from `offset` to `out`; returns the new offset.
fn copy_from(path: &Path, offset: u64, out: &mut impl Write) -> Result<u64> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    f.seek(SeekFrom::Start(offset))?;
    let n = std::io::copy(&mut f, out)?;
    Ok(offset + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "one\n").unwrap();
        let mut out = Vec::new();
        let off = copy_from(&p, 0, &mut out).unwrap();
        std::fs::write(&p, "one\ntwo\n").unwrap();
        let off2 = copy_from(&p, off, &mut out).unwrap();
        assert_eq!(out, b"one\ntwo\n");
        assert_eq!(off2, 8);
        assert_eq!(copy_from(&dir.path().join("none"), 3, &mut out).unwrap(), 3);
    }
}
