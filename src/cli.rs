//! The command line: `heimdall serve` and the admin commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Heimdall: access control for multi-tenant Prometheus-compatible metrics.
#[derive(Debug, Parser)]
#[command(name = "heimdall", version)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// How the admin commands reach a control plane.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The control plane's admin API.
    #[arg(
        long,
        global = true,
        env = "HEIMDALL_SERVER",
        default_value = "http://127.0.0.1:9093"
    )]
    pub server: String,
    /// An admin token.
    #[arg(long, global = true, env = "HEIMDALL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How results are printed.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a Heimdall server.
    Serve(ServeArgs),
    /// Manages tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manages policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Lists the events that changed tenants and policies, oldest first.
    History(HistoryArgs),
    /// Shows the tenants and policies as they were right after a revision.
    State(StateArgs),
    /// Builds OPA bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Shows the decision for a subject, tenant and action, and the policies behind it.
    Explain(ExplainArgs),
    /// Generates an admin token and prints it with the SHA-256 that the config takes.
    AdminToken,
    /// Mints a token from the development key of `serve --target=all --dev`.
    Token(TokenArgs),
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Builds the bundle of a revision, byte for byte as it is for that revision.
    Build {
        /// The revision; default the latest.
        #[arg(long)]
        at: Option<u64>,
        /// Where to write the tar.gz.
        #[arg(short = 'o', long = "file")]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The user id, as the identity provider's token names it.
    #[arg(long)]
    pub user: String,
    /// A group of the user; repeat for several.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    #[arg(long)]
    pub tenant: String,
    /// read, write, rules:read, rules:write or alerts:read.
    #[arg(long, default_value = "read")]
    pub action: String,
    /// Evaluate the bundle of this revision; default the latest.
    #[arg(long)]
    pub at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The event store, the admin API and the bundle server.
    ControlPlane,
    /// The stateless proxy in front of Mimir.
    Proxy,
    /// Both in one process, on the embedded defaults.
    All,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What to run.
    #[arg(long, value_enum, default_value_t = Target::All)]
    pub target: Target,
    /// A YAML config file; without one, the embedded defaults apply.
    #[arg(long, env = "HEIMDALL_CONFIG")]
    pub config: Option<PathBuf>,
    /// With `--target=all`: trust a development signing key kept in the data folder, serve its
    /// JWKS, and let `heimdall token` mint tokens. Never for production.
    #[arg(long)]
    pub dev: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user the token names (`sub`).
    #[arg(long)]
    pub user: String,
    /// A group the user is in; repeat for several.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// How long the token is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// The config file whose `data_dir` holds the development key.
    #[arg(long, env = "HEIMDALL_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Options of every write.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// Why the change is made; recorded with the event.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// An idempotency key: a retry with the same key is not applied twice. Default: random.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Refuse the write unless the stream is at this version (0: must not exist).
    #[arg(long)]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Registers a tenant.
    Create {
        id: String,
        name: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Lists the registered tenants.
    List,
    /// Shows one tenant.
    Get { id: String },
    /// Deletes a tenant; refused while policies name it, unless --force.
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Creates or replaces the policies of a JSON file (`-`: standard input), all or none.
    #[command(alias = "create")]
    Apply {
        file: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Lists the policies.
    List,
    /// Shows one policy as JSON.
    Get { name: String },
    /// Deletes a policy.
    Delete {
        name: String,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this stream (tenant/acme), or streams with a prefix (policy/*).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only events by this actor.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events since this time: RFC 3339, or a duration ago such as 30m, 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time, in the same forms.
    #[arg(long)]
    pub until: Option<String>,
    /// First revision to show.
    #[arg(long)]
    pub from_revision: Option<u64>,
    /// Last revision to show.
    #[arg(long)]
    pub to_revision: Option<u64>,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// The revision; default the latest.
    #[arg(long)]
    pub at: Option<u64>,
}
