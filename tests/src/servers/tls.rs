//! Test certificates for servers started with TLS, made with rcgen at start
//! and written into the server's temporary directory (no network, no
//! openssl CLI).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The PEM files of one TLS server of the harness, in `<dir>/tls/`:
///
/// | file | what |
/// |---|---|
/// | `ca.pem` | the CA that signed the server and client certificates |
/// | `server.pem`, `server-key.pem` | the server's certificate (SANs `127.0.0.1` and `localhost`) and key |
/// | `client.pem`, `client-key.pem` | a client certificate (CN `cntnr-e2e-client`) and key, for mutual TLS |
/// | `untrusted-ca.pem` | another CA, which signed nothing the server trusts or presents: a wrong `--ca` |
///
/// The files go away with the server's directory.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// Generates a fresh CA, server and client certificate and an unrelated
    /// CA into `<server_dir>/tls/`.
    ///
    /// # Panics
    /// When a key or certificate cannot be made or written.
    pub(crate) fn generate(server_dir: &Path) -> TlsFiles {
        let dir = server_dir.join("tls");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let files = TlsFiles { dir };

        let (ca_pem, ca) = new_ca("cntnr-e2e CA");
        files.write("ca.pem", &ca_pem);
        let (server_pem, server_key) = leaf(
            &ca,
            "cntnr-e2e-server",
            &["127.0.0.1", "localhost"],
            // etcd also uses its server certificate as a client of itself.
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        files.write("server.pem", &server_pem);
        files.write("server-key.pem", &server_key);
        let (client_pem, client_key) = leaf(
            &ca,
            "cntnr-e2e-client",
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        files.write("client.pem", &client_pem);
        files.write("client-key.pem", &client_key);
        let (untrusted_pem, _) = new_ca("cntnr-e2e untrusted CA");
        files.write("untrusted-ca.pem", &untrusted_pem);
        files
    }

    fn write(&self, name: &str, pem: &str) {
        let path = self.dir.join(name);
        fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The CA certificate that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's certificate (SANs `127.0.0.1`, `localhost`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// A client certificate signed by [`TlsFiles::ca`].
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    /// A CA certificate unrelated to this server: trusting only it must make
    /// a client refuse the server.
    pub fn untrusted_ca(&self) -> PathBuf {
        self.dir.join("untrusted-ca.pem")
    }
}

/// A self-signed CA: its PEM certificate and an issuer to sign with.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generating a CA key");
    let cert = params.self_signed(&key).expect("self-signing the CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate signed by `ca`: its PEM and its key's PEM.
fn leaf(
    ca: &Issuer<'static, KeyPair>,
    name: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).expect("certificate params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate().expect("generating a key");
    let cert = params.signed_by(&key, ca).expect("signing a certificate");
    (cert.pem(), key.serialize_pem())
}
