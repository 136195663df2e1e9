//! `heimdall serve`: loads the configuration, fills in the embedded defaults, and runs the
//! target until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;

use heimdall_control_plane::{AdminToken, AdminTokens, ControlPlane, ControlPlaneSettings};
use heimdall_proxy::identity::dev::{DEV_AUDIENCE, DEV_ISSUER};
use heimdall_proxy::{
    BundleSource, DevSigner, IdentitySettings, KeySource, LatestBundle, Notifications,
    ProxySettings, ProxySources,
};

use crate::cli::{ServeArgs, Target, TokenArgs};
use crate::config::{self, RawAdminToken, ServeConfig};

/// The file in the data folder that keeps the generated admin token's hash.
const ADMIN_TOKEN_HASH_FILE: &str = "admin-token.sha256";
/// Where the control plane publishes the latest bundle in its storage.
const LATEST_BUNDLE_KEY: &str = heimdall_control_plane::bundle::LATEST_KEY;
/// The actor name of the generated admin token.
const GENERATED_TOKEN_NAME: &str = "admin";

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let environment: BTreeMap<String, String> = std::env::vars().collect();
    let config = config::load(args.config.as_deref(), &environment)?;
    crate::telemetry::init(config.log_level, config.json_logs);
    tracing::info!(target_name = ?args.target, config = ?args.config, "starting heimdall");
    if args.dev && args.target != Target::All {
        bail!("--dev needs --target=all");
    }
    let shutdown = shutdown_on_signal()?;
    match args.target {
        Target::ControlPlane => {
            let settings = control_plane_settings(&config)?;
            heimdall_control_plane::run(settings, shutdown).await?;
        }
        Target::Proxy => {
            let sources = remote_sources(&config)?;
            let settings = proxy_settings(&config, None)?;
            heimdall_proxy::run(settings, sources, shutdown).await?;
        }
        Target::All => run_all(&config, args.dev, shutdown).await?,
    }
    Ok(())
}

/// Runs the control plane and the proxy in one process: bundles and notifications go through
/// memory, not HTTP and NATS.
async fn run_all(
    config: &ServeConfig,
    dev: bool,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let control_plane = ControlPlane::start(control_plane_settings(config)?).await?;
    let bundles = control_plane.bundles();
    let notifications = Notifications::InProcess(bundles.notifications());
    let latest: LatestBundle = Arc::new(move || bundles.latest());
    let sources = ProxySources {
        bundles: BundleSource::InProcess(latest),
        notifications,
    };
    let dev_signer = if dev {
        create_data_dir(&config.data_dir)?;
        let signer = DevSigner::load_or_create(&config.data_dir)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "Development identity provider on: mint a token with\n  heimdall token --user alice \
             --group developers"
        )?;
        stdout.flush()?;
        Some(signer)
    } else {
        None
    };
    let settings = proxy_settings(config, dev_signer.as_ref())?;
    let (control_plane_result, proxy_result) = tokio::join!(
        control_plane.serve(shutdown.clone()),
        heimdall_proxy::run(settings, sources, shutdown)
    );
    control_plane_result?;
    proxy_result?;
    Ok(())
}

/// Where a separate proxy reads bundles and hears about changes.
fn remote_sources(config: &ServeConfig) -> anyhow::Result<ProxySources> {
    let proxy = &config.proxy;
    let bundles = match &proxy.bundle_url {
        Some(url) => BundleSource::http(
            url,
            proxy.bundle_token.clone(),
            proxy.bundle_insecure_skip_verify,
        )?,
        None => BundleSource::Store {
            store: config.bundle_storage.open()?,
            path: object_store::path::Path::from(LATEST_BUNDLE_KEY),
        },
    };
    let notifications = match &config.nats_url {
        Some(url) => Notifications::Nats {
            url: url.clone(),
            subject_prefix: config.nats_subject_prefix.clone(),
        },
        None => {
            tracing::warn!(
                interval_seconds = proxy.reconcile_interval.as_secs(),
                "no nats.url: policy changes reach this proxy on the reconcile timer only"
            );
            Notifications::None
        }
    };
    Ok(ProxySources {
        bundles,
        notifications,
    })
}

/// Builds the proxy's settings; with a development signer, its key set replaces the JWKS.
fn proxy_settings(
    config: &ServeConfig,
    dev_signer: Option<&DevSigner>,
) -> anyhow::Result<ProxySettings> {
    let jwt = &config.proxy.jwt;
    let (keys, issuers, audiences, algorithms) = match (dev_signer, &jwt.jwks_url) {
        (Some(signer), _) => (
            KeySource::Static(signer.jwks().clone()),
            vec![DEV_ISSUER.to_owned()],
            vec![DEV_AUDIENCE.to_owned()],
            vec![jsonwebtoken::Algorithm::EdDSA],
        ),
        (None, Some(url)) => (
            KeySource::Url {
                url: url.clone(),
                insecure_skip_verify: jwt.insecure_skip_verify,
            },
            jwt.issuers.clone(),
            jwt.audiences.clone(),
            jwt.algorithms.clone(),
        ),
        (None, None) if only_hmac(&jwt.algorithms) => (
            KeySource::Static(jsonwebtoken::jwk::JwkSet { keys: Vec::new() }),
            jwt.issuers.clone(),
            jwt.audiences.clone(),
            jwt.algorithms.clone(),
        ),
        (None, None) => {
            bail!("config key jwt.jwks_url: required to verify tokens (or run --target=all --dev)")
        }
    };
    let identity = IdentitySettings {
        keys,
        issuers,
        audiences,
        algorithms,
        hmac_secret: jwt.hmac_secret.clone(),
        leeway: jwt.leeway,
        user_claim: jwt.user_claim.clone(),
        groups_claim: jwt.groups_claim.clone(),
        refresh_interval: jwt.refresh_interval,
        min_refresh_interval: jwt.min_refresh_interval,
        token_cache_size: jwt.token_cache_size,
        accept_basic_auth: jwt.accept_basic_auth,
    };
    let proxy = &config.proxy;
    Ok(ProxySettings {
        listen_addr: config.proxy_addr,
        metrics_addr: config.proxy_metrics_addr,
        identity,
        upstream: proxy.upstream.clone(),
        max_tenants: proxy.max_tenants,
        auto_resolve_tenants: proxy.auto_resolve_tenants,
        partial_tenants: proxy.partial_tenants,
        decision_cache_size: proxy.decision_cache_size,
        max_body_bytes: proxy.max_body_bytes,
        reconcile_interval: proxy.reconcile_interval,
        remote_opa: proxy.remote_opa.clone(),
        serve_jwks: dev_signer.is_some(),
    })
}

/// Returns whether every accepted algorithm uses the shared secret, so that no JWKS is needed.
fn only_hmac(algorithms: &[jsonwebtoken::Algorithm]) -> bool {
    algorithms
        .iter()
        .all(|algorithm| algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac)
}

/// `heimdall token`: mints a token with the development key of `serve --target=all --dev`.
pub fn mint_dev_token(args: &TokenArgs) -> anyhow::Result<()> {
    let environment: BTreeMap<String, String> = std::env::vars().collect();
    let config = config::load(args.config.as_deref(), &environment)?;
    let ttl = parse_ttl(&args.ttl)?;
    let signer = DevSigner::load(&config.data_dir).with_context(|| {
        format!(
            "no development key in {}: start `heimdall serve --target=all --dev` first",
            config.data_dir.display()
        )
    })?;
    let token = signer.mint(&args.user, &args.groups, ttl)?;
    println!("{token}");
    Ok(())
}

/// Parses `90`, `90s`, `15m`, `1h` or `7d`.
fn parse_ttl(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    let (number, unit) = match raw.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((index, _)) => raw.split_at(index),
        None => (raw, "s"),
    };
    let number: u64 = number
        .parse()
        .with_context(|| format!("--ttl {raw:?}: expected a number with s, m, h or d"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => bail!("--ttl {raw:?}: the unit must be s, m, h or d"),
    };
    if seconds == 0 {
        bail!("--ttl must be positive");
    }
    Ok(Duration::from_secs(seconds))
}

fn control_plane_settings(config: &ServeConfig) -> anyhow::Result<ControlPlaneSettings> {
    let database_url = match &config.database_url {
        Some(url) => url.clone(),
        None => {
            create_data_dir(&config.data_dir)?;
            config::sqlite_url(&config.data_dir.join("heimdall.db"))
        }
    };
    let tokens = admin_tokens(config)?;
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
    Ok(settings)
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
