//! `cntnr image pull|import|ls|rm`: the local node's image store under
//! `<state-dir>/images` (the one the agent runs containers from). Needs no
//! cluster store.

use anyhow::{Context as _, Result};
use clap::Subcommand;
use cntnr_reconcile::images::{ImageRecord, ImageStore, StoreOptions};
use serde_json::json;

use crate::table::Table;

/// `cntnr image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry (or import an `oci:PATH[:TAG]`).
    Pull {
        /// `name[:tag|@digest]` (docker.io and `library/` by default).
        reference: String,
        /// A registry (`host[:port]`) reached over plain HTTP; repeatable.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure: Vec<String>,
    },
    /// Import an image from an OCI image layout directory.
    Import {
        /// `oci:PATH[:TAG]` or `PATH[:TAG]`.
        layout: String,
    },
    /// List stored images.
    Ls,
    /// Remove an image reference. Its blobs and unpacked layers stay (a
    /// running container may still use them).
    Rm {
        /// The reference as `image ls` shows it, or as given to pull.
        reference: String,
    },
}

fn record_json(r: &ImageRecord) -> serde_json::Value {
    json!({
        "reference": r.reference,
        "manifest": r.manifest.to_string(),
        "id": r.config.to_string(),
        "layers": r.layers.len(),
        "size": r.layers.iter().map(|l| l.size).sum::<u64>(),
    })
}

fn print_record(json_out: bool, r: &ImageRecord) {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&record_json(r)).unwrap_or_default()
        );
    } else {
        println!("{} {}", r.reference, r.manifest);
    }
}

/// An `oci:` reference with an absolute path (relative paths resolve
/// against the current directory, as a shell user expects).
fn oci_reference(layout: &str) -> Result<String> {
    let rest = layout.strip_prefix("oci:").unwrap_or(layout);
    if rest.is_empty() {
        anyhow::bail!("{layout:?}: needs the path of an OCI image layout");
    }
    if rest.starts_with('/') {
        return Ok(format!("oci:{rest}"));
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    Ok(format!("oci:{}/{rest}", cwd.display()))
}

/// Runs `image …` on the store at `<state_dir>/images`.
pub fn run(state_dir: &std::path::Path, json_out: bool, cmd: &ImageCommand) -> Result<()> {
    let open = |insecure: &[String]| {
        ImageStore::open(
            state_dir,
            StoreOptions {
                insecure_registries: insecure.to_vec(),
                docker_config: None,
            },
        )
        .with_context(|| format!("opening the image store under {}", state_dir.display()))
    };
    match cmd {
        ImageCommand::Pull {
            reference,
            insecure,
        } => {
            let store = open(insecure)?;
            let reference = if reference.starts_with("oci:") {
                oci_reference(reference)?
            } else {
                reference.clone()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let rec = rt.block_on(store.fetch(&reference))?;
            print_record(json_out, &rec);
        }
        ImageCommand::Import { layout } => {
            let store = open(&[])?;
            let rec = store.import(&oci_reference(layout)?)?;
            print_record(json_out, &rec);
        }
        ImageCommand::Ls => {
            let store = open(&[])?;
            let mut list = store.list()?;
            list.sort_by(|a, b| a.reference.cmp(&b.reference));
            if json_out {
                let v: Vec<_> = list.iter().map(record_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            let mut t = Table::new(&["REFERENCE", "ID", "LAYERS", "SIZE"]);
            for r in &list {
                let id = r.config.to_string();
                let short = id.strip_prefix("sha256:").unwrap_or(&id);
                t.row(vec![
                    r.reference.clone(),
                    short.chars().take(12).collect(),
                    r.layers.len().to_string(),
                    human_size(r.layers.iter().map(|l| l.size).sum()),
                ]);
            }
            print!("{}", t.render());
        }
        ImageCommand::Rm { reference } => {
            let store = open(&[])?;
            let reference = if reference.starts_with("oci:") {
                oci_reference(reference)?
            } else {
                reference.clone()
            };
            if !store.remove(&reference)? {
                anyhow::bail!("image {reference} is not in the store");
            }
            if json_out {
                println!("{}", json!({ "removed": reference }));
            } else {
                println!("removed {reference}");
            }
        }
    }
    Ok(())
}

/// `1.2 MB`-style sizes.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_layout_paths() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(oci_reference("oci:/x/y:latest").unwrap(), "oci:/x/y:latest");
        assert_eq!(oci_reference("/x/y").unwrap(), "oci:/x/y");
        assert!(oci_reference("rel:tag").unwrap().ends_with("/rel:tag"));
        assert!(oci_reference("oci:").is_err());
    }
}
