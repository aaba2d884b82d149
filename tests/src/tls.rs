//! Certificates for transport-security tests, made by the deployment's own script
//! (`deploy/tls.sh`): a CA of the test and certificates it signs, each good for `localhost` and
//! `127.0.0.1`, for serving and as a client certificate.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA and the certificates it issued, in a folder removed with it.
#[derive(Debug)]
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// A fresh CA, and one certificate for each name.
    pub fn make(names: &[&str]) -> Result<Self> {
        let dir = crate::tempdir()?;
        tls_script(&["ca", dir.to_str().unwrap_or_default()])?;
        let certs = Self { dir };
        for name in names {
            certs.issue(name)?;
        }
        Ok(certs)
    }

    pub fn issue(&self, name: &str) -> Result<()> {
        let dir = self.dir.to_str().unwrap_or_default();
        tls_script(&["issue", dir, name, "localhost", "127.0.0.1"])
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// `--tls-cert` and `--tls-key` of the certificate `name`.
    pub fn server_args(&self, name: &str) -> Vec<String> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--tls-cert".into(),
            path(self.cert(name)),
            "--tls-key".into(),
            path(self.key(name)),
        ]
    }

    /// A client trusting this CA, presenting the certificate `client` when given.
    pub fn client_config(&self, client: Option<&str>) -> ClientTlsConfig {
        let read = |p: &Path| std::fs::read(p).expect("a certificate file of the test");
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca())));
        match client {
            Some(name) => config.identity(Identity::from_pem(
                read(&self.cert(name)),
                read(&self.key(name)),
            )),
            None => config,
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `deploy/tls.sh` of this repository.
fn tls_script(args: &[&str]) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tls.sh");
    let output = std::process::Command::new(&script).args(args).output()?;
    ensure!(
        output.status.success(),
        "{} {args:?} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
