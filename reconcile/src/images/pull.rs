//! Pull from an OCI/Docker registry with oci-client (rustls).
//!
//! `busybox` means `docker.io/library/busybox:latest` (oci-client's reference
//! parser applies docker's normalization). The tag is resolved to a manifest
//! digest by fetching the manifest and hashing the bytes ourselves; an index
//! yields the linux/`<host arch>` manifest. Only registries listed in
//! [`StoreOptions::insecure_registries`](super::StoreOptions) are reached over
//! plain HTTP.

use super::model::{
    is_index, select_platform, Index, Manifest, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX,
    OCI_MANIFEST,
};
use super::{auth, ImageError, ImageRecord, ImageStore, Result};
use crate::digest::{Digest, Hasher};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWriteExt;

impl ImageStore {
    fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.opts.insecure_registries.clone()),
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..Default::default()
        })
    }

    /// Brings `reference` into the store: `oci:PATH[:TAG]` is imported from
    /// the layout, anything else pulled from its registry.
    pub async fn fetch(&self, reference: &str) -> Result<ImageRecord> {
        if reference.starts_with("oci:") {
            let store = self.clone();
            let r = reference.to_string();
            return tokio::task::spawn_blocking(move || store.import(&r))
                .await
                .expect("import task");
        }
        self.pull(reference).await
    }

    /// Pulls `reference` into the store (blobs already present and valid are
    /// not fetched again) and records it. Safe to run concurrently from several
    /// processes. Retry on [`ImageError::is_retryable`].
    pub async fn pull(&self, reference: &str) -> Result<ImageRecord> {
        let r: Reference =
            reference
                .parse()
                .map_err(|e: oci_client::ParseError| ImageError::BadReference {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                })?;
        let key = r.whole();
        let reg_err = |source| ImageError::Registry {
            reference: key.clone(),
            source: Box::new(source),
        };
        let cfg_path = self
            .opts
            .docker_config
            .clone()
            .or_else(auth::default_config_path);
        let creds = auth::lookup(cfg_path.as_deref(), r.registry());
        let client = self.client();
        let store = self.clone();
        let _shared = tokio::task::spawn_blocking(move || store.store_lock(false))
            .await
            .expect("lock task")?;

        let accepted = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        let (bytes, _) = client
            .pull_manifest_raw(&r, &creds, &accepted)
            .await
            .map_err(reg_err)?;
        let mut digest = Digest::of(&bytes);
        if let Some(want) = r.digest() {
            let want: Digest = want.parse()?;
            if want != digest {
                return Err(ImageError::Corrupt {
                    expected: want,
                    actual: digest,
                });
            }
        }
        self.put_blob(&digest, &bytes)?;
        let mut from_index = None;
        let mut manifest_bytes = bytes.to_vec();
        if is_index(&bytes) {
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                    what: format!("index of {key}"),
                    source,
                })?;
            let chosen = select_platform(&index).ok_or_else(|| ImageError::NoPlatform {
                reference: key.clone(),
                arch: super::model::host_arch(),
            })?;
            let want: Digest = chosen.digest.parse()?;
            let by_digest = Reference::with_digest(
                r.registry().to_string(),
                r.repository().to_string(),
                want.to_string(),
            );
            let (mb, _) = client
                .pull_manifest_raw(&by_digest, &creds, &[OCI_MANIFEST, DOCKER_MANIFEST])
                .await
                .map_err(reg_err)?;
            let actual = Digest::of(&mb);
            if actual != want {
                return Err(ImageError::Corrupt {
                    expected: want,
                    actual,
                });
            }
            self.put_blob(&want, &mb)?;
            from_index = Some(digest);
            digest = want;
            manifest_bytes = mb.to_vec();
        }
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| ImageError::Json {
                what: format!("manifest of {key}"),
                source,
            })?;
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.fetch_blob(&client, &r, &creds, desc.digest.parse()?)
                .await?;
        }
        let rec = self.record_from(key, from_index, digest)?;
        self.save_record(&rec)?;
        Ok(rec)
    }

    async fn fetch_blob(
        &self,
        client: &Client,
        r: &Reference,
        creds: &RegistryAuth,
        d: Digest,
    ) -> Result<()> {
        let store = self.clone();
        let d2 = d.clone();
        // The per-blob flock makes a concurrent pull of the same blob wait, then find it.
        let lock = tokio::task::spawn_blocking(move || -> Result<Option<super::FileLock>> {
            let l = store.blob_lock(&d2)?;
            Ok(if store.has_valid_blob(&d2)? {
                None
            } else {
                Some(l)
            })
        })
        .await
        .expect("lock task")?;
        let Some(_lock) = lock else { return Ok(()) };
        client
            .store_auth_if_needed(r.resolve_registry(), creds)
            .await;
        let tmp = self.tmp_path("pull");
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(super::ioe("creating download", &tmp))?;
        let mut hashing = HashWriter {
            inner: &mut file,
            hasher: Hasher::default(),
        };
        let res = client
            .pull_blob(r, d.to_string().as_str(), &mut hashing)
            .await;
        let actual = std::mem::take(&mut hashing.hasher).finish();
        file.flush()
            .await
            .map_err(super::ioe("writing download", &tmp))?;
        drop(file);
        if let Err(source) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::Registry {
                reference: r.whole(),
                source: Box::new(source),
            });
        }
        if actual != d {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::Corrupt {
                expected: d,
                actual,
            });
        }
        self.commit_blob_file(&d, &tmp)
    }
}

/// Hashes what is written through it.
struct HashWriter<'a> {
    inner: &'a mut tokio::fs::File,
    hasher: Hasher,
}

impl tokio::io::AsyncWrite for HashWriter<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.hasher.update(&buf[..*n]);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
