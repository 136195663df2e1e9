//! Configuration: a YAML file, overridden key by key by `HEIMDALL_*` environment variables, then
//! validated into [`ServeConfig`]. Unknown keys are errors, and every error names its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use heimdall_control_plane::bundle::{BundleStorage, S3Storage};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

pub use proxy::ProxyConfig;
use proxy::{RawFanout, RawJwt, RawMimir, RawOpa, RawProxy};

mod proxy;

/// The prefix of every configuration environment variable.
const ENV_PREFIX: &str = "HEIMDALL_";

/// The configuration file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub database: RawDatabase,
    pub admin: RawAdmin,
    pub bundle: RawBundle,
    pub nats: RawNats,
    /// The upstream the proxy protects (the original Heimdall's key).
    pub mimir: RawMimir,
    /// Limits on the proxy's upstream calls.
    pub fanout: RawFanout,
    /// How the proxy verifies tokens.
    pub jwt: RawJwt,
    /// A remote OPA for the proxy's decisions; by default the embedded engine decides.
    pub opa: RawOpa,
    /// The proxy's bundle source, tenant handling and limits.
    pub proxy: RawProxy,
    /// Folder for the embedded defaults: the SQLite database and the generated admin token hash.
    pub data_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// The proxy's Prometheus API.
    pub main: RawListener,
    /// The proxy's /metrics, /healthz and /readyz.
    pub metrics: RawListener,
    /// The admin gRPC API.
    pub admin: RawListener,
    /// The control plane's HTTP listener: /healthz, /readyz, /metrics (later the bundles).
    pub bundle: RawListener,
    /// trace, debug, info, warn or error.
    pub log_level: String,
    /// text or json.
    pub log_format: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListener {
    /// host:port; `:port` listens on every interface, as in the original Heimdall.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDatabase {
    /// `postgres://…` or `sqlite:…`. Empty with an empty driver: SQLite in `data_dir`.
    pub url: String,
    /// The original Heimdall's form: `postgres` or `sqlite`, with `dsn`.
    pub driver: String,
    /// A PostgreSQL URL, or the path of the SQLite file.
    pub dsn: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Admin tokens by name and SHA-256 (`heimdall admin-token` makes one). Empty: a token is
    /// generated at first start and its hash kept in `data_dir`.
    pub tokens: Vec<RawAdminToken>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBundle {
    /// Local folder that bundles are published to (`bundles/bundle.tar.gz` and
    /// `bundles/revisions/<rev>.tar.gz` below it). Empty: `<data_dir>/bundles`.
    pub dir: String,
    /// `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or `az://container[/prefix]`: publish to
    /// S3 (or an S3-compatible store), Google Cloud Storage or Azure Blob Storage instead of `dir`.
    /// GCS and Azure take their credentials from the `GOOGLE_*` and `AZURE_*` variables.
    pub url: String,
    pub s3: RawS3,
    /// Tokens that may only download bundles, as OPA's `credentials.bearer` sends them. Admin
    /// tokens may download bundles too.
    pub tokens: Vec<RawAdminToken>,
}

/// S3 settings. Empty credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawS3 {
    /// An S3-compatible endpoint such as `http://127.0.0.1:8333`. Empty: AWS.
    pub endpoint: String,
    pub region: String,
    /// Allows a plain-HTTP endpoint.
    pub allow_http: bool,
    pub access_key_id: String,
    /// Prefer `HEIMDALL_BUNDLE_S3_SECRET_ACCESS_KEY` or `AWS_SECRET_ACCESS_KEY` to the file.
    pub secret_access_key: String,
}

/// Never prints the secret key.
impl std::fmt::Debug for RawS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawS3")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNats {
    /// NATS server for change notifications (`nats://host:4222`). Empty: in-process only.
    pub url: String,
    /// Notifications are published on `<subject_prefix>.revisions`.
    pub subject_prefix: String,
}

impl Default for RawNats {
    fn default() -> Self {
        Self {
            url: String::new(),
            subject_prefix: "heimdall".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    pub name: String,
    pub sha256: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            server: RawServer::default(),
            database: RawDatabase::default(),
            admin: RawAdmin::default(),
            bundle: RawBundle::default(),
            nats: RawNats::default(),
            mimir: RawMimir::default(),
            fanout: RawFanout::default(),
            jwt: RawJwt::default(),
            opa: RawOpa::default(),
            proxy: RawProxy::default(),
            data_dir: "heimdall-data".to_owned(),
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            main: RawListener {
                addr: "127.0.0.1:9091".to_owned(),
            },
            metrics: RawListener {
                addr: "127.0.0.1:9094".to_owned(),
            },
            admin: RawListener {
                addr: "127.0.0.1:9093".to_owned(),
            },
            bundle: RawListener {
                addr: "127.0.0.1:9092".to_owned(),
            },
            log_level: "info".to_owned(),
            log_format: "text".to_owned(),
        }
    }
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: String::new(),
            driver: String::new(),
            dsn: String::new(),
            max_connections: 10,
        }
    }
}

/// The validated configuration of `heimdall serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub proxy_addr: SocketAddr,
    pub proxy_metrics_addr: SocketAddr,
    pub proxy: ProxyConfig,
    pub admin_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub log_level: tracing::Level,
    pub json_logs: bool,
    /// None: the embedded SQLite database in `data_dir`.
    pub database_url: Option<String>,
    pub max_connections: u32,
    pub admin_tokens: Vec<RawAdminToken>,
    pub bundle_tokens: Vec<RawAdminToken>,
    pub bundle_storage: BundleStorage,
    pub nats_url: Option<String>,
    pub nats_subject_prefix: String,
    pub data_dir: PathBuf,
}

/// Loads the file (if any), applies the environment, and validates.
pub fn load(
    path: Option<&Path>,
    environment: &BTreeMap<String, String>,
) -> anyhow::Result<ServeConfig> {
    let file = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            serde_yaml::from_str::<Value>(&text)
                .with_context(|| format!("config file {} is not valid YAML", path.display()))?
        }
        None => Value::Mapping(Mapping::new()),
    };
    let merged = apply_environment(file, environment)?;
    let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|error| {
        let key = error.path().to_string();
        anyhow::anyhow!("config key {key}: {}", error.into_inner())
    })?;
    validate(raw)
}

/// Overrides file values with `HEIMDALL_<KEY>` variables, one for every leaf key of the config.
fn apply_environment(
    mut file: Value,
    environment: &BTreeMap<String, String>,
) -> anyhow::Result<Value> {
    let defaults = serde_yaml::to_value(RawConfig::default()).context("serialising defaults")?;
    let mut leaves = Vec::new();
    collect_leaves(&defaults, &mut Vec::new(), &mut leaves);
    for (path, default) in leaves {
        let variable = env_variable(&path);
        let Some(raw) = environment.get(&variable) else {
            continue;
        };
        let value = match default {
            Value::Number(_) => Value::Number(
                raw.trim()
                    .parse::<u64>()
                    .with_context(|| format!("{variable}: {raw:?} is not a whole number"))?
                    .into(),
            ),
            Value::Bool(_) => Value::Bool(
                raw.trim()
                    .parse()
                    .with_context(|| format!("{variable}: expected true or false"))?,
            ),
            Value::Sequence(_) => serde_yaml::from_str(raw)
                .with_context(|| format!("{variable}: expected a YAML list"))?,
            _ => Value::String(raw.clone()),
        };
        set_path(&mut file, &path, value).with_context(|| {
            format!("{variable}: config key {} is not a mapping", path.join("."))
        })?;
    }
    Ok(file)
}

/// Returns the environment variable of a key path: `server.log_level` → `HEIMDALL_SERVER_LOG_LEVEL`.
pub fn env_variable(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("_").to_uppercase())
}

fn collect_leaves(value: &Value, path: &mut Vec<String>, leaves: &mut Vec<(Vec<String>, Value)>) {
    match value {
        Value::Mapping(mapping) => {
            for (key, child) in mapping {
                path.push(key.as_str().unwrap_or_default().to_owned());
                collect_leaves(child, path, leaves);
                path.pop();
            }
        }
        leaf => leaves.push((path.clone(), leaf.clone())),
    }
}

fn set_path(root: &mut Value, path: &[String], value: Value) -> anyhow::Result<()> {
    let mut node = root;
    for key in &path[..path.len() - 1] {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(mapping) = node else {
            bail!("not a mapping");
        };
        node = mapping
            .entry(Value::String(key.clone()))
            .or_insert(Value::Null);
    }
    if node.is_null() {
        *node = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(mapping) = node else {
        bail!("not a mapping");
    };
    mapping.insert(Value::String(path[path.len() - 1].clone()), value);
    Ok(())
}

fn validate(raw: RawConfig) -> anyhow::Result<ServeConfig> {
    let admin_addr = parse_addr("server.admin.addr", &raw.server.admin.addr)?;
    let http_addr = parse_addr("server.bundle.addr", &raw.server.bundle.addr)?;
    let proxy_addr = parse_addr("server.main.addr", &raw.server.main.addr)?;
    let proxy_metrics_addr = parse_addr("server.metrics.addr", &raw.server.metrics.addr)?;
    let listeners = [
        ("server.main.addr", proxy_addr),
        ("server.metrics.addr", proxy_metrics_addr),
        ("server.admin.addr", admin_addr),
        ("server.bundle.addr", http_addr),
    ];
    for (index, (key, addr)) in listeners.iter().enumerate() {
        if let Some((other, _)) = listeners[..index].iter().find(|(_, seen)| seen == addr) {
            bail!("config key {key}: must differ from {other}");
        }
    }
    let proxy = proxy::validate(&raw.fanout, &raw.mimir, &raw.jwt, &raw.opa, &raw.proxy)?;
    let log_level = match raw.server.log_level.as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        other => {
            bail!("config key server.log_level: {other:?} is not trace, debug, info, warn or error")
        }
    };
    let json_logs = match raw.server.log_format.as_str() {
        "text" => false,
        "json" => true,
        other => bail!("config key server.log_format: {other:?} is not text or json"),
    };
    if raw.data_dir.trim().is_empty() {
        bail!("config key data_dir: must not be empty");
    }
    if raw.database.max_connections == 0 {
        bail!("config key database.max_connections: must be at least 1");
    }
    validate_tokens("admin.tokens", &raw.admin.tokens)?;
    validate_tokens("bundle.tokens", &raw.bundle.tokens)?;
    let data_dir = PathBuf::from(&raw.data_dir);
    let nats_url = match raw.nats.url.trim() {
        "" => None,
        url if url.starts_with("nats://") || url.starts_with("tls://") => Some(url.to_owned()),
        other => bail!("config key nats.url: {other:?} must start with nats:// or tls://"),
    };
    let prefix_ok = |prefix: &str| {
        !prefix.is_empty()
            && prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
    };
    if !prefix_ok(&raw.nats.subject_prefix) {
        bail!(
            "config key nats.subject_prefix: {:?} is not a NATS subject",
            raw.nats.subject_prefix
        );
    }
    let bundle_storage = bundle_storage(&raw.bundle, &data_dir)?;
    Ok(ServeConfig {
        proxy_addr,
        proxy_metrics_addr,
        proxy,
        admin_addr,
        http_addr,
        log_level,
        json_logs,
        database_url: database_url(&raw.database)?,
        max_connections: raw.database.max_connections,
        admin_tokens: raw.admin.tokens,
        bundle_tokens: raw.bundle.tokens,
        bundle_storage,
        nats_url,
        nats_subject_prefix: raw.nats.subject_prefix,
        data_dir,
    })
}

fn bundle_storage(bundle: &RawBundle, data_dir: &Path) -> anyhow::Result<BundleStorage> {
    let url = bundle.url.trim();
    if url.is_empty() {
        let dir = match bundle.dir.trim() {
            "" => data_dir.join("bundles"),
            dir => PathBuf::from(dir),
        };
        return Ok(BundleStorage::LocalDir(dir));
    }
    if !bundle.dir.trim().is_empty() {
        bail!("config key bundle.url: give either bundle.dir or bundle.url, not both");
    }
    let (scheme, location) = url.split_once("://").unwrap_or(("", url));
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    if bucket.is_empty() {
        bail!("config key bundle.url: {url:?} names no bucket");
    }
    let (bucket, prefix) = (bucket.to_owned(), prefix.trim_matches('/').to_owned());
    match scheme {
        "s3" => {}
        "gs" => return Ok(BundleStorage::Gcs { bucket, prefix }),
        "az" | "azure" => {
            return Ok(BundleStorage::Azure {
                container: bucket,
                prefix,
            });
        }
        _ => bail!("config key bundle.url: {url:?} must start with s3://, gs:// or az://"),
    }
    let optional = |value: &str| Some(value.trim().to_owned()).filter(|value| !value.is_empty());
    Ok(BundleStorage::S3(S3Storage {
        bucket,
        prefix,
        endpoint: optional(&bundle.s3.endpoint),
        region: optional(&bundle.s3.region),
        allow_http: bundle.s3.allow_http,
        access_key_id: optional(&bundle.s3.access_key_id),
        secret_access_key: optional(&bundle.s3.secret_access_key),
    }))
}

fn validate_tokens(key: &str, tokens: &[RawAdminToken]) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for (index, token) in tokens.iter().enumerate() {
        heimdall_control_plane::AdminToken::from_hex(&token.name, &token.sha256)
            .map_err(|reason| anyhow::anyhow!("config key {key}[{index}]: {reason}"))?;
        if !names.insert(token.name.as_str()) {
            bail!(
                "config key {key}[{index}]: name {:?} is used twice",
                token.name
            );
        }
    }
    Ok(())
}

fn parse_addr(key: &str, raw: &str) -> anyhow::Result<SocketAddr> {
    let candidate = match raw.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => raw.to_owned(),
    };
    candidate
        .parse()
        .map_err(|_| anyhow::anyhow!("config key {key}: {raw:?} is not host:port with an IP host"))
}

fn database_url(database: &RawDatabase) -> anyhow::Result<Option<String>> {
    let url = database.url.trim();
    let driver = database.driver.trim();
    let dsn = database.dsn.trim();
    if !url.is_empty() && (!driver.is_empty() || !dsn.is_empty()) {
        bail!("config key database.url: give either url, or driver and dsn, not both");
    }
    if !url.is_empty() {
        heimdall_control_plane::store::Dialect::from_url(url)
            .map_err(|error| anyhow::anyhow!("config key database.url: {error}"))?;
        return Ok(Some(url.to_owned()));
    }
    match (driver, dsn) {
        ("", "") => Ok(None),
        ("postgres" | "postgresql", dsn) if dsn.starts_with("postgres") => Ok(Some(dsn.to_owned())),
        ("postgres" | "postgresql", _) => {
            bail!("config key database.dsn: give a postgres:// URL")
        }
        ("sqlite", "") => bail!("config key database.dsn: give the SQLite file's path"),
        ("sqlite", path) => Ok(Some(sqlite_url(Path::new(path)))),
        (other, _) => bail!("config key database.driver: {other:?} is not postgres or sqlite"),
    }
}

/// Returns the URL of a SQLite file, created if missing.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

#[cfg(test)]
mod tests;
