//! `percore cert`: a test CA and a server certificate it signs, as PEM files, for
//! `percore serve --tls-cert/--tls-key` and `percore load --tls-ca` (benchmarks, tests, a
//! browser that is told to trust the CA). Keys are ECDSA P-256 (what browsers accept and the
//! cheapest to sign with). Not for production: get a certificate from a real CA there.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of `percore cert`.
#[derive(clap::Args, Debug)]
pub struct CertArgs {
    /// Directory for ca.pem, cert.pem and key.pem (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// A name the certificate is valid for: a DNS name or an IP address (repeatable; default
    /// localhost and 127.0.0.1).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
}

/// The PEM texts `percore cert` writes.
pub struct Pems {
    /// The CA certificate (give it to clients).
    pub ca: String,
    /// The server certificate.
    pub cert: String,
    /// The server's private key (PKCS#8).
    pub key: String,
}

/// A CA and a server certificate for `names`, valid `days` days from now.
pub fn make(names: &[String], days: u32) -> Result<Pems, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let err = |e: rcgen::Error| e.to_string();
    let now = time_now();
    let until = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "percore test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now.into();
    ca.not_after = until.into();
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    for n in names {
        p.subject_alt_names
            .push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.clone()
                        .try_into()
                        .map_err(|e| format!("--name {n}: {e}"))?,
                ),
            });
    }
    let cn = names.first().cloned().unwrap_or_default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = now.into();
    p.not_after = until.into();
    let cert = p.signed_by(&key, &issuer).map_err(err)?;
    Ok(Pems {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn time_now() -> std::time::SystemTime {
    // A minute back: a client whose clock is a little behind still accepts the certificate.
    std::time::SystemTime::now() - std::time::Duration::from_secs(60)
}

/// Write the three files into `dir` (the key readable by its owner only).
pub fn write(dir: &Path, pems: &Pems) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text, private) in [
        ("ca.pem", &pems.ca, false),
        ("cert.pem", &pems.cert, false),
        ("key.pem", &pems.key, true),
    ] {
        let path = dir.join(name);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// `percore cert`: exit status 0, or 1 with a message.
pub fn main(args: CertArgs) -> i32 {
    let names = if args.names.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        args.names
    };
    if args.days == 0 {
        eprintln!("percore cert: --days must be at least 1");
        return 1;
    }
    match make(&names, args.days).and_then(|p| write(&args.out, &p)) {
        Ok(()) => {
            let d = args.out.display();
            println!(
                "wrote {d}/ca.pem, {d}/cert.pem, {d}/key.pem ({})",
                names.join(", ")
            );
            println!("  percore serve --tls-cert {d}/cert.pem --tls-key {d}/key.pem");
            println!(
                "  percore load --url wss://{}:9001/ --tls-ca {d}/ca.pem",
                names[0]
            );
            0
        }
        Err(e) => {
            eprintln!("percore cert: {e}");
            1
        }
    }
}
