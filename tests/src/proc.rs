//! Real processes: `dialbackd` and the echo example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::PATIENCE;

/// Paths of the built `dialbackd` and example app binaries.
pub struct Binaries {
    /// `dialbackd`.
    pub dialbackd: PathBuf,
    /// The echo example.
    pub echo: PathBuf,
    /// The subscriber example.
    pub subscriber: PathBuf,
}

/// Builds `dialbackd` and the echo example once per process (cargo does
/// nothing when they are fresh) and returns their paths. They are built
/// with the profile this crate was built with: debug for tests, release
/// for benchmarks. The environment variables `DIALBACK_E2E_DIALBACKD` and
/// `DIALBACK_E2E_ECHO` name another `dialbackd` and echo app to run instead
/// (an older commit's, to show that an attack test fails there, or to
/// measure two builds side by side in one benchmark run).
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = cargo_build(&[
            "-p",
            "dialback-sidecar",
            "--bin",
            "dialbackd",
            "-p",
            "dialback",
            "--example",
            "echo",
            "--example",
            "subscriber",
        ]);
        let dialbackd =
            std::env::var_os("DIALBACK_E2E_DIALBACKD").map(PathBuf::from).unwrap_or_else(|| dir.join("dialbackd"));
        let echo = std::env::var_os("DIALBACK_E2E_ECHO")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("examples").join("echo"));
        let subscriber = dir.join("examples").join("subscriber");
        Binaries { dialbackd, echo, subscriber }
    })
}

/// Runs `cargo build` of `what` with the profile this crate was built with
/// (debug for tests, release for benchmarks) and returns the directory the
/// binaries land in. Cargo does nothing when they are fresh.
fn cargo_build(what: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let release = !cfg!(debug_assertions);
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&root).args(["build", "--quiet"]).args(what);
    if release {
        cmd.arg("--release");
    }
    // Cargo sets these for the test or bench binary running this code. Build
    // scripts that track them (ring's tracks CARGO_MANIFEST_DIR and
    // CARGO_PKG_*) would rebuild here, and the next plain cargo command
    // would rebuild them back: minutes of CPU each time.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                k.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            cmd.env_remove(&*k);
        }
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build {} failed", what.join(" "));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    target.join(if release { "release" } else { "debug" })
}

/// A `netsim` relay process forwarding TCP only, with no fault switched on:
/// a process on the path that only copies bytes, to measure what one more
/// process costs (the bridge benchmark's `relay` mode). Killed when dropped.
pub struct Netsim {
    proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    _tmp: tempfile::TempDir,
}

impl Netsim {
    /// Builds `netsim` on first use (built apart from [`binaries`], so that
    /// their features stay what they were), starts it in front of `target`
    /// and waits for its ready line.
    pub async fn spawn(target: SocketAddr) -> Netsim {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        let bin = BIN.get_or_init(|| cargo_build(&["-p", "dialback-netsim", "--bin", "netsim"]).join("netsim"));
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(bin);
        cmd.args(["--target", &target.to_string(), "--no-udp"]);
        let mut proc = Proc::spawn("netsim", cmd, tmp.path().join("netsim.log"));
        let line = proc.wait_line("its ready line", PATIENCE, |l| l.starts_with("netsim ready")).await;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr= in netsim's ready line: {line}"));
        Netsim { proc, addr, _tmp: tmp }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }
}

/// A child process whose stdout lines arrive on a channel and whose stderr goes to a log file.
struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: PathBuf,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open log");
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(err)).stdin(Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines, log, name }
    }

    /// Waits for a stdout line matching `pred`; panics with the log tail after `limit`.
    async fn wait_line(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if pred(&line) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("{} exited while waiting for {what}; log:\n{}", self.name, self.log_tail()),
                Err(_) => panic!(
                    "timed out after {limit:?} waiting for {} to print {what}; log:\n{}",
                    self.name,
                    self.log_tail()
                ),
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid();
        if pid != 0 {
            let _ = std::process::Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status();
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {limit:?}; log:\n{}", self.name, self.log_tail()))
            .expect("wait")
    }
}

/// Options for a `dialbackd` process.
#[derive(Clone, Debug)]
pub struct SidecarBuilder {
    app_id: String,
    args: Vec<String>,
    http_port: u16,
    grpc_port: u16,
    state_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    soft_fd_limit: Option<u64>,
}

impl SidecarBuilder {
    /// A callback-mode sidecar for `app_id`, on loopback, every port 0.
    pub fn callback(app_id: &str) -> SidecarBuilder {
        SidecarBuilder {
            app_id: app_id.into(),
            args: vec!["--enable-callback-channel".into(), "--callback-listen-address".into(), "127.0.0.1".into()],
            http_port: 0,
            grpc_port: 0,
            state_dir: None,
            env: vec![],
            soft_fd_limit: None,
        }
    }

    /// Starts the process with this soft limit on open files (as a shell's
    /// `ulimit -Sn` would), e.g. the common 1024 or lower.
    pub fn soft_fd_limit(mut self, n: u64) -> Self {
        self.soft_fd_limit = Some(n);
        self
    }

    /// A callback-mode sidecar for `app_id` in bridge mode: its bridge port
    /// `bridge` (0: any) for daprd's `--app-port`, and the daprd on
    /// `daprd_ports` (HTTP, gRPC; see `Daprd::ports`) behind its API.
    pub fn bridged(app_id: &str, daprd_ports: (u16, u16), bridge: u16) -> SidecarBuilder {
        let up = |p: u16| format!("127.0.0.1:{p}");
        SidecarBuilder::callback(app_id).args([
            "--bridge-app-port".to_string(),
            bridge.to_string(),
            "--dapr-upstream-http".into(),
            up(daprd_ports.0),
            "--dapr-upstream-grpc".into(),
            up(daprd_ports.1),
        ])
    }

    /// A classic-mode sidecar that dials the app at `app_port`.
    pub fn classic(app_id: &str, app_port: u16) -> SidecarBuilder {
        SidecarBuilder { args: vec!["--app-port".into(), app_port.to_string()], ..SidecarBuilder::callback(app_id) }
    }

    /// Adds flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Fixes the API ports (for a restart on the same ports).
    pub fn ports(mut self, http: u16, grpc: u16) -> Self {
        self.http_port = http;
        self.grpc_port = grpc;
        self
    }

    /// Uses `dir` as the state dir (for a restart that keeps its identity).
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Starts it behind a netsim relay on loopback (UDP and TCP, for
    /// making faults): apps are told to dial the relay (the advertised
    /// address), which forwards to the callback port.
    pub async fn spawn_behind_relay(self) -> (dialback_netsim::Relay, Sidecar) {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
        let relay = dialback_netsim::Relay::start(dialback_netsim::RelayConfig::new(any, nowhere))
            .await
            .expect("start the relay");
        let sc = self.args(["--callback-advertise-address".to_string(), relay.addr().to_string()]).spawn().await;
        relay.set_target(sc.callback.expect("a sidecar with a callback port"));
        (relay, sc)
    }

    /// Starts it and waits for its ready line.
    pub async fn spawn(self) -> Sidecar {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state_dir = self.state_dir.clone().unwrap_or_else(|| tmp.path().join("state"));
        let mut cmd = match self.soft_fd_limit {
            // The shell lowers its soft limit and then becomes dialbackd (same pid).
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -S -n {n} && exec \"$0\" \"$@\"")]).arg(&binaries().dialbackd);
                c
            }
            None => Command::new(&binaries().dialbackd),
        };
        // Metrics on a free loopback port unless the test chose: many
        // sidecars run at once, and daprd's default 9090 may be taken.
        if !self.args.iter().any(|a| a.starts_with("--metrics-") || a.starts_with("--enable-metrics")) {
            cmd.args(["--metrics-port", "0", "--metrics-listen-address", "127.0.0.1"]);
        }
        cmd.args(["--app-id", &self.app_id])
            .args(["--dapr-http-port", &self.http_port.to_string()])
            .args(["--dapr-grpc-port", &self.grpc_port.to_string()])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(&self.args)
            .env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .env("RUST_LOG", "info,dialback_channel=debug")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = tmp.path().join("dialbackd.log");
        let mut proc = Proc::spawn("dialbackd", cmd, log);
        let line = proc.wait_line("its ready line", PATIENCE, |l| l.starts_with("dialbackd ready")).await;
        let field =
            |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).map(str::to_string);
        let port = |k: &str| -> u16 {
            field(k)
                .and_then(|v| v.split(',').next().and_then(|a| a.parse::<SocketAddr>().ok()))
                .map(|a| a.port())
                .unwrap_or(0)
        };
        Sidecar {
            http: port("http"),
            grpc: port("grpc"),
            callback: field("callback").and_then(|a| a.parse().ok()),
            bridge: field("bridge").and_then(|a| a.parse().ok()),
            metrics: field("metrics").and_then(|a| a.parse().ok()),
            cert_sha256: field("cert_sha256"),
            state_dir,
            builder: self,
            proc,
            _tmp: tmp,
        }
    }
}

/// A running `dialbackd`.
pub struct Sidecar {
    /// HTTP API port.
    pub http: u16,
    /// gRPC API port.
    pub grpc: u16,
    /// Callback listener address.
    pub callback: Option<SocketAddr>,
    /// The bridge port (where daprd's `--app-port` points), in bridge mode.
    pub bridge: Option<SocketAddr>,
    /// The metrics server's address, unless metrics are off.
    pub metrics: Option<SocketAddr>,
    /// The channel certificate's fingerprint.
    pub cert_sha256: Option<String>,
    /// Its state dir.
    pub state_dir: PathBuf,
    builder: SidecarBuilder,
    proc: Proc,
    _tmp: tempfile::TempDir,
}

impl Sidecar {
    /// `http://127.0.0.1:<http>`.
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL, and wait for the exit.
    pub async fn kill(&mut self) {
        self.proc.signal("KILL");
        self.proc.wait_exit(PATIENCE).await;
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.signal("TERM");
        self.proc.wait_exit(PATIENCE).await
    }

    /// A new process with the same flags, ports (callback port too) and
    /// state dir, as a supervisor would restart it (after [`Sidecar::kill`]).
    pub async fn restart(&self) -> Sidecar {
        let mut b = self.builder.clone().ports(self.http, self.grpc).state_dir(&self.state_dir);
        if let Some(cb) = self.callback
            && !b.args.iter().any(|a| a == "--callback-channel-port")
        {
            b = b.args(["--callback-channel-port".to_string(), cb.port().to_string()]);
        }
        b.spawn().await
    }

    /// A new sidecar on the same API ports with a fresh state dir (a new
    /// identity and reset key) and its own callback port, as a sidecar
    /// rescheduled to another pod or node would be (after [`Sidecar::kill`]).
    pub async fn relocate(&self) -> Sidecar {
        let mut b = self.builder.clone().ports(self.http, self.grpc);
        b.state_dir = None;
        b.spawn().await
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Its log file (stderr); removed with its temp dir when the handle drops.
    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }
}

/// A field of `/proc/<pid>/status` in KiB (e.g. `VmRSS`, `VmHWM`, the peak RSS).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Options for an app process: the echo example, or the subscriber.
#[derive(Clone, Debug)]
pub struct AppBuilder {
    /// `echo` or `subscriber`: the example run, and its lines' prefix.
    program: &'static str,
    grpc_port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl AppBuilder {
    /// An echo app whose sidecar API is on `grpc_port`.
    pub fn echo(grpc_port: u16) -> AppBuilder {
        AppBuilder { program: "echo", grpc_port, args: vec![], env: vec![] }
    }

    /// The subscriber example (a Dapr pub/sub and binding app) whose
    /// sidecar API is on `grpc_port`.
    pub fn subscriber(grpc_port: u16) -> AppBuilder {
        AppBuilder { program: "subscriber", grpc_port, args: vec![], env: vec![] }
    }

    /// A classic echo app: it listens on a loopback port (see
    /// [`App::wait_listening`]) for a sidecar started with `--app-port`.
    pub fn classic() -> AppBuilder {
        AppBuilder::echo(0).args(["--listen", "127.0.0.1:0"])
    }

    /// Transport: quic, tcp or auto.
    pub fn transport(self, t: &str) -> Self {
        self.args(["--transport", t])
    }

    /// Adds flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Starts it (does not wait for the channel).
    pub fn spawn(&self) -> App {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = if self.program == "subscriber" { &binaries().subscriber } else { &binaries().echo };
        let mut cmd = Command::new(bin);
        cmd.args(&self.args)
            .env("DAPR_GRPC_PORT", self.grpc_port.to_string())
            .env_remove("DAPR_GRPC_ENDPOINT")
            .env_remove("DAPR_HTTP_ENDPOINT")
            .env_remove("DAPR_HTTP_PORT")
            .env_remove("DAPR_API_TOKEN")
            .env_remove("DIALBACK_TRANSPORT")
            .env("RUST_LOG", "info,dialback=debug,dialback_channel=debug")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = tmp.path().join(format!("{}.log", self.program));
        let name = if self.program == "subscriber" { "subscriber app" } else { "echo app" };
        App { proc: Proc::spawn(name, cmd, log), builder: self.clone(), _tmp: tmp }
    }
}

/// A running app (echo or subscriber).
pub struct App {
    proc: Proc,
    builder: AppBuilder,
    _tmp: tempfile::TempDir,
}

impl App {
    /// Waits for its next "connected" line and returns the transport it names.
    pub async fn wait_connected(&mut self) -> String {
        let prefix = format!("{}: connected", self.builder.program);
        let line = self.proc.wait_line("a connected line", PATIENCE, |l| l.starts_with(&prefix)).await;
        line.split_whitespace().find_map(|w| w.strip_prefix("transport=")).unwrap_or_default().to_string()
    }

    /// Waits for a classic app's "listening" line and returns its port.
    pub async fn wait_listening(&mut self) -> u16 {
        let line = self.wait_line("echo: listening").await;
        line.split_whitespace().find_map(|w| w.strip_prefix("port=")).and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// Waits for a stdout line starting with `prefix`.
    pub async fn wait_line(&mut self, prefix: &str) -> String {
        self.proc.wait_line(prefix, PATIENCE, |l| l.starts_with(prefix)).await
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Sends a signal by name (e.g. `USR1`).
    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// SIGKILL, and wait for the exit.
    pub async fn kill(&mut self) {
        self.proc.signal("KILL");
        self.proc.wait_exit(PATIENCE).await;
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.signal("TERM");
        self.proc.wait_exit(PATIENCE).await
    }

    /// A new process with the same options.
    pub fn respawn(&self) -> App {
        self.builder.spawn()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Waits until its log says the channel went down more often than
    /// `before` times (see [`App::downs`]). Unlike the `disconnected` state
    /// on stdout, which a redial at once can replace before anyone sees it,
    /// a log line is never skipped.
    pub async fn wait_down(&self, before: usize) {
        crate::eventually("the app to see its channel go down", PATIENCE, || async {
            (self.downs() > before).then_some(())
        })
        .await;
    }

    /// How many times its log says the channel went down so far.
    pub fn downs(&self) -> usize {
        self.log().lines().filter(|l| l.contains("callback channel down")).count()
    }

    /// Its log file (stderr); removed with its temp dir when the handle drops.
    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }
}

/// The TCP sockets in LISTEN state that process `pid` holds (from /proc).
pub fn tcp_listening_sockets(pid: u32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is column 1, st is column 3 (0A = LISTEN), inode column 9.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                found.push(format!("{table} {}", cols[1]));
            }
        }
    }
    found
}
