//! Import from an OCI image layout directory (image-spec image-layout.md):
//! `oci:PATH[:TAG]`, the tag matched against `org.opencontainers.image.ref.name`.

use super::model::{is_index, select_platform, Descriptor, Index, Manifest};
use super::{ioe, ImageError, ImageRecord, ImageStore, Result};
use crate::digest::Digest;
use std::fs;
use std::path::{Path, PathBuf};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Splits `oci:PATH[:TAG]`. A trailing `:x` is a tag unless it contains `/`,
/// or unless `PATH:x` itself is an existing directory.
pub(super) fn parse_oci_ref(s: &str) -> Result<(PathBuf, Option<String>)> {
    let rest = s
        .strip_prefix("oci:")
        .ok_or_else(|| ImageError::BadReference {
            reference: s.to_string(),
            reason: "expected oci:PATH[:TAG]".into(),
        })?;
    if rest.is_empty() {
        return Err(ImageError::BadReference {
            reference: s.to_string(),
            reason: "empty path".into(),
        });
    }
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !t.is_empty() && !Path::new(rest).is_dir() => {
            (p, Some(t.to_string()))
        }
        _ => (rest, None),
    };
    let path = std::path::absolute(path).map_err(|e| ImageError::BadReference {
        reference: s.to_string(),
        reason: e.to_string(),
    })?;
    Ok((path, tag))
}

pub(super) fn canonical(path: &Path, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("oci:{}:{t}", path.display()),
        None => format!("oci:{}", path.display()),
    }
}

fn layout_blob(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(d.hex())
}

fn read_verified(dir: &Path, d: &Digest) -> Result<Vec<u8>> {
    let p = layout_blob(dir, d);
    let data = fs::read(&p).map_err(ioe("reading OCI layout blob", &p))?;
    let actual = Digest::of(&data);
    if actual != *d {
        return Err(ImageError::Corrupt {
            expected: d.clone(),
            actual,
        });
    }
    Ok(data)
}

impl ImageStore {
    /// Imports `oci:PATH[:TAG]` into the store, copying and verifying every blob.
    /// Without a tag the layout must hold exactly one manifest. Idempotent.
    pub fn import(&self, reference: &str) -> Result<ImageRecord> {
        let (dir, tag) = parse_oci_ref(reference)?;
        let key = canonical(&dir, tag.as_deref());
        let index_path = dir.join("index.json");
        let data = fs::read(&index_path).map_err(ioe("reading OCI layout index", &index_path))?;
        let index: Index = serde_json::from_slice(&data).map_err(|source| ImageError::Json {
            what: index_path.display().to_string(),
            source,
        })?;
        let desc: &Descriptor = match &tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t.as_str()))
                .ok_or_else(|| ImageError::NotFound(key.clone()))?,
            None if index.manifests.len() == 1 => &index.manifests[0],
            None => {
                return Err(ImageError::BadReference {
                    reference: reference.to_string(),
                    reason: format!(
                        "{} images in the layout; name one with :TAG",
                        index.manifests.len()
                    ),
                })
            }
        };
        let _store = self.store_lock(false)?;
        let mut d: Digest = desc.digest.parse()?;
        let mut bytes = read_verified(&dir, &d)?;
        let mut from_index = None;
        if is_index(&bytes) {
            self.put_blob(&d, &bytes)?;
            let nested: Index =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                    what: format!("index of {key}"),
                    source,
                })?;
            let chosen = select_platform(&nested).ok_or_else(|| ImageError::NoPlatform {
                reference: key.clone(),
                arch: super::model::host_arch(),
            })?;
            from_index = Some(d);
            d = chosen.digest.parse()?;
            bytes = read_verified(&dir, &d)?;
        }
        self.put_blob(&d, &bytes)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                what: format!("manifest of {key}"),
                source,
            })?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let bd: Digest = blob.digest.parse()?;
            let _l = self.blob_lock(&bd)?;
            if self.has_valid_blob(&bd)? {
                continue;
            }
            let tmp = self.tmp_path("import");
            let src = layout_blob(&dir, &bd);
            fs::copy(&src, &tmp).map_err(ioe("copying OCI layout blob", &src))?;
            self.commit_blob_file(&bd, &tmp)?;
        }
        let rec = self.record_from(key, from_index, d)?;
        self.save_record(&rec)?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_references_split_path_and_tag() {
        let (p, t) = parse_oci_ref("oci:/tmp/x:v1").unwrap();
        assert_eq!(
            (p.as_path(), t.as_deref()),
            (Path::new("/tmp/x"), Some("v1"))
        );
        let (p, t) = parse_oci_ref("oci:/tmp/x").unwrap();
        assert_eq!((p.as_path(), t), (Path::new("/tmp/x"), None));
        assert!(parse_oci_ref("oci:").is_err());
    }
}
