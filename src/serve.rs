//! `heimdall serve`: loads the configuration, fills in the embedded defaults, and runs the
//! target until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use tokio::sync::watch;

use heimdall_control_plane::{AdminToken, AdminTokens, ControlPlaneSettings};

use crate::cli::{ServeArgs, Target};
use crate::config::{self, RawAdminToken, ServeConfig};

/// The file in the data folder that keeps the generated admin token's hash.
const ADMIN_TOKEN_HASH_FILE: &str = "admin-token.sha256";
/// The actor name of the generated admin token.
const GENERATED_TOKEN_NAME: &str = "admin";

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let environment: BTreeMap<String, String> = std::env::vars().collect();
    let config = config::load(args.config.as_deref(), &environment)?;
    crate::telemetry::init(config.log_level, config.json_logs);
    tracing::info!(target_name = ?args.target, config = ?args.config, "starting heimdall");
    match args.target {
        Target::ControlPlane => run_control_plane(config).await,
    }
}

async fn run_control_plane(config: ServeConfig) -> anyhow::Result<()> {
    let database_url = match &config.database_url {
        Some(url) => url.clone(),
        None => {
            create_data_dir(&config.data_dir)?;
            config::sqlite_url(&config.data_dir.join("heimdall.db"))
        }
    };
    let tokens = admin_tokens(&config)?;
    let bundle_tokens = configured_tokens(&config.bundle_tokens)?;
    let settings = ControlPlaneSettings {
        database_url,
        max_connections: config.max_connections,
        admin_addr: config.admin_addr,
        http_addr: config.http_addr,
        tokens,
        bundle_tokens,
        bundle_storage: config.bundle_storage.clone(),
        nats_url: config.nats_url.clone(),
        nats_subject_prefix: config.nats_subject_prefix.clone(),
    };
    let shutdown = shutdown_on_signal()?;
    heimdall_control_plane::run(settings, shutdown).await?;
    Ok(())
}

/// Returns the configured admin tokens; with none, the generated one, made at first start.
fn admin_tokens(config: &ServeConfig) -> anyhow::Result<AdminTokens> {
    if !config.admin_tokens.is_empty() {
        return configured_tokens(&config.admin_tokens);
    }
    create_data_dir(&config.data_dir)?;
    let hash_path = config.data_dir.join(ADMIN_TOKEN_HASH_FILE);
    let hash = match fs::read_to_string(&hash_path) {
        Ok(hash) => hash,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = heimdall_control_plane::generate_token()?;
            let hash = heimdall_control_plane::hash_token(&token);
            write_private(&hash_path, &hash)?;
            // Shown once, on the terminal rather than in the logs: only its hash is kept.
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "Generated an admin token; it is shown only this once:"
            )?;
            writeln!(stdout, "  export HEIMDALL_TOKEN={token}")?;
            stdout.flush()?;
            tracing::info!(path = %hash_path.display(), "generated admin token");
            hash
        }
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", hash_path.display()));
        }
    };
    let token = AdminToken::from_hex(GENERATED_TOKEN_NAME, &hash)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", hash_path.display()))?;
    Ok(AdminTokens::new(vec![token]))
}

/// Turns configured token hashes (validated at load) into the set the servers check.
fn configured_tokens(tokens: &[RawAdminToken]) -> anyhow::Result<AdminTokens> {
    let tokens = tokens
        .iter()
        .map(|token| AdminToken::from_hex(&token.name, &token.sha256))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    Ok(AdminTokens::new(tokens))
}

fn create_data_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating data_dir {}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Returns a receiver that turns true on SIGINT or SIGTERM.
fn shutdown_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (sender, receiver) = watch::channel(false);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = sender.send(true);
    });
    Ok(receiver)
}
