//! `meridian tls ...`: makes the federation's certificates as PEM files: the federation CA
//! (`tls ca create`) and one certificate per node (`tls cert create`), with
//! [`meridian_identity`]. Private keys are written with mode 0600, and existing files are
//! only overwritten with `--force`.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use meridian_identity::{
    DEFAULT_CA_COMMON_NAME, DEFAULT_NODE_CERT_DAYS, PemPair, Role, create_ca, create_node_cert,
    validate_label,
};

/// The CA certificate file `tls ca create` writes.
pub const CA_CERT_FILE: &str = "meridian-ca.pem";
/// The CA private key file `tls ca create` writes.
pub const CA_KEY_FILE: &str = "meridian-ca-key.pem";

/// Makes the federation's TLS certificates.
#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Makes the federation CA, which signs every node certificate.
    Ca {
        /// What to do with the CA.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Makes node certificates signed by the federation CA.
    Cert {
        /// What to do with node certificates.
        #[command(subcommand)]
        command: CertCommand,
    },
}

/// `tls ca ...`
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Creates a CA: writes meridian-ca.pem and meridian-ca-key.pem (keep the key secret).
    Create(CaCreateArgs),
}

/// `tls ca create`
#[derive(Args, Debug)]
pub struct CaCreateArgs {
    /// Folder to write meridian-ca.pem and meridian-ca-key.pem into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Common name of the CA certificate.
    #[arg(long, value_name = "CN", default_value = DEFAULT_CA_COMMON_NAME)]
    pub common_name: String,
    /// Overwrite the files if they exist.
    #[arg(long)]
    pub force: bool,
}

/// `tls cert ...`
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Creates a node certificate: writes <dc>-<node>.pem and <dc>-<node>-key.pem.
    Create(CertCreateArgs),
}

/// `tls cert create`
#[derive(Args, Debug)]
pub struct CertCreateArgs {
    /// Datacenter of the node (a lowercase DNS label); the certificate names
    /// <ROLE>.<DC>.meridian.
    #[arg(long, visible_alias = "datacenter", value_name = "DC")]
    pub dc: String,
    /// Name of the node (a lowercase DNS label); the certificate names
    /// <NAME>.<ROLE>.<DC>.meridian.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// What the node may be: `server` (a Raft voter; the default) or `gateway` (a gateway-only
    /// node: it follows federation and opens tunnel streams, and the rpc port refuses it).
    #[arg(long, value_name = "ROLE", default_value = "server")]
    pub role: Role,
    /// The CA certificate (PEM).
    #[arg(long, value_name = "FILE", default_value = CA_CERT_FILE)]
    pub ca: PathBuf,
    /// The CA private key (PEM).
    #[arg(long, value_name = "FILE", default_value = CA_KEY_FILE)]
    pub ca_key: PathBuf,
    /// Folder to write the certificate and key into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// An extra subject alternative name: an IP address or a DNS name outside .meridian
    /// (repeatable).
    #[arg(long = "san", value_name = "X")]
    pub sans: Vec<String>,
    /// How long the certificate is valid, in days.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_NODE_CERT_DAYS)]
    pub days: u32,
    /// Overwrite the files if they exist.
    #[arg(long)]
    pub force: bool,
}

/// Runs a `tls` command and prints the paths it wrote.
pub fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Ca {
            command: CaCommand::Create(args),
        } => ca_create(&args),
        TlsCommand::Cert {
            command: CertCommand::Create(args),
        } => cert_create(&args),
    }
}

fn ca_create(args: &CaCreateArgs) -> anyhow::Result<()> {
    let cert_path = args.dir.join(CA_CERT_FILE);
    let key_path = args.dir.join(CA_KEY_FILE);
    ensure_writable(&args.dir, &[&cert_path, &key_path], args.force)?;
    let ca = create_ca(&args.common_name).context("cannot create the CA")?;
    write_pair(&ca, &cert_path, &key_path, args.force)?;
    println!("CA certificate: {}", cert_path.display());
    println!(
        "CA private key: {} (keep it secret: it can sign certificates for any node)",
        key_path.display()
    );
    Ok(())
}

fn cert_create(args: &CertCreateArgs) -> anyhow::Result<()> {
    // The names become file names: check them before building paths from them.
    validate_label("datacenter name", &args.dc)?;
    validate_label("node name", &args.node)?;
    let base = format!("{}-{}", args.dc, args.node);
    let cert_path = args.dir.join(format!("{base}.pem"));
    let key_path = args.dir.join(format!("{base}-key.pem"));
    ensure_writable(&args.dir, &[&cert_path, &key_path], args.force)?;

    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))
    };
    let ca = PemPair {
        cert_pem: read(&args.ca, "CA certificate")?,
        key_pem: read(&args.ca_key, "CA key")?,
    };
    let pair = create_node_cert(&ca, &args.dc, &args.node, args.role, &args.sans, args.days).with_context(
        || {
            format!(
                "cannot create the certificate of node {} of datacenter {} with the CA in {} and {}",
                args.node,
                args.dc,
                args.ca.display(),
                args.ca_key.display()
            )
        },
    )?;
    write_pair(&pair, &cert_path, &key_path, args.force)?;
    println!("Certificate: {}", cert_path.display());
    println!("Private key: {}", key_path.display());
    Ok(())
}

/// Creates `dir` if needed and, without `force`, fails if any of `paths` exists, before anything
/// is written.
fn ensure_writable(dir: &Path, paths: &[&Path], force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    if !force {
        for path in paths {
            if path.symlink_metadata().is_ok() {
                bail!(
                    "{} already exists; pass --force to overwrite it",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Writes the key (mode 0600) and then the certificate.
fn write_pair(
    pair: &PemPair,
    cert_path: &Path,
    key_path: &Path,
    force: bool,
) -> anyhow::Result<()> {
    write_file(key_path, &pair.key_pem, true, force)?;
    write_file(cert_path, &pair.cert_pem, false, force)
}

fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        if force {
            format!("cannot write {}", path.display())
        } else {
            format!(
                "cannot create {} (pass --force to overwrite an existing file)",
                path.display()
            )
        }
    })?;
    // An existing file overwritten with --force keeps its mode unless it is set here.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
