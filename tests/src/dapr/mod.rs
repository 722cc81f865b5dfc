//! Real Dapr in tests: `daprd` built from Dapr's Go module by
//! `scripts/daprd.sh` (cached by version under `~/.cache/dialback/dapr`),
//! run on free ports with resource files of the test's choosing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::{PATIENCE, Sidecar, http_call};

mod control;
mod redis;

pub use control::{Placement, Scheduler};
pub use redis::Redis;

/// The directory holding `daprd`, `placement` and `scheduler`, built on first use.
/// Panics with what is missing when Go is not installed or the build fails.
pub fn dapr_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let out = Command::new("bash")
            .arg(root.join("scripts/daprd.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/daprd.sh");
        assert!(
            out.status.success(),
            "scripts/daprd.sh could not provide daprd (exit {:?}; it says why above: Go missing, or the build failed)",
            out.status.code()
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Dapr resource files the tests give daprd (file name, YAML). The
/// subscriber example's own copies, for people, are in
/// `sdk/examples/dapr-resources`.
pub mod components {
    /// `pubsub`: Dapr's in-memory pub/sub.
    pub const PUBSUB: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.in-memory
  version: v1
";

    /// `statestore`: Dapr's in-memory state store (transactions included).
    pub const STATE_STORE: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
";

    /// `actorstate`: in-memory state, daprd's actor state store.
    pub const ACTOR_STATE_STORE: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: actorstate
spec:
  type: state.in-memory
  version: v1
  metadata:
  - name: actorStateStore
    value: \"true\"
";

    /// `cron`: an input binding that fires every second.
    pub const CRON: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: cron
spec:
  type: bindings.cron
  version: v1
  metadata:
  - name: schedule
    value: \"@every 1s\"
";

    /// Retries a delivery the app asked to be retried, every 200 ms up to
    /// 10 times: in-memory pub/sub does not redeliver by itself (a durable
    /// broker does).
    pub const RESILIENCY: &str = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: retries
spec:
  policies:
    retries:
      quick:
        policy: constant
        duration: 200ms
        maxRetries: 10
  targets:
    components:
      pubsub:
        inbound:
          retry: quick
";
}

/// A free TCP port for a process that wants its port numbers up front
/// (daprd). Taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), which `bind(0)` and outgoing
/// connections draw from: a port handed out here and released cannot be
/// taken meanwhile by another process's port-0 listener (dialbackd's, an
/// app's) before daprd binds it, as happened once in CI ("bind: address
/// already in use"). Never the same one twice in this process, so two
/// daprds of parallel tests are not handed one port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let below = ephemeral_floor();
    let floor = 10_000u16;
    let mut x = seed();
    if below > floor + 1_000 {
        for _ in 0..10_000 {
            // xorshift64: a cheap spread over the range, different per process.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = floor + u16::try_from(x % u64::from(below - floor)).unwrap_or(0);
            let fresh = GIVEN.lock().map(|g| !g.contains(&port)).unwrap_or(false);
            if fresh
                && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
                && GIVEN.lock().map(|mut g| g.insert(port)).unwrap_or(false)
            {
                return port;
            }
        }
    }
    // No room below the ephemeral range: any free port.
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if GIVEN.lock().map(|mut g| g.insert(port)).unwrap_or(true) {
            return port;
        }
    }
}

/// The lowest port of the kernel's ephemeral range (Linux's default 32768).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32768)
}

/// A seed that differs between processes and runs.
fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Options for a daprd process: see [`Daprd::builder`].
#[derive(Clone, Debug)]
pub struct DaprdBuilder {
    app_id: String,
    ports: (u16, u16),
    app_port: u16,
    protocol: String,
    resources: Vec<(String, String)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl DaprdBuilder {
    /// daprd's `--app-protocol` (`grpc` by default, or `http`).
    pub fn protocol(mut self, p: &str) -> Self {
        self.protocol = p.into();
        self
    }

    /// A resource file (component, resiliency, subscription) by name and YAML.
    pub fn resource(mut self, name: &str, yaml: &str) -> Self {
        self.resources.push((name.into(), yaml.into()));
        self
    }

    /// More flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable (e.g. `APP_API_TOKEN`).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Starts it without waiting: daprd blocks its start-up until its app
    /// port accepts, so a test that starts dialbackd later waits with
    /// [`Daprd::wait_ready`] after that.
    pub fn start(self) -> Daprd {
        let tmp = tempfile::tempdir().expect("temp dir");
        let res = tmp.path().join("resources");
        std::fs::create_dir_all(&res).expect("resources dir");
        for (name, yaml) in &self.resources {
            std::fs::write(res.join(name), yaml).expect("write a resource file");
        }
        let log = tmp.path().join("daprd.log");
        let child = self.launch(&res, &log);
        Daprd { child, http: self.ports.0, grpc: self.ports.1, log, spec: self, _tmp: tmp }
    }

    /// Starts it and waits until it is ready.
    pub async fn spawn(self) -> Daprd {
        let mut d = self.start();
        d.wait_ready().await;
        d
    }

    fn launch(&self, res: &Path, log: &Path) -> Child {
        let (http, grpc) = self.ports;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("daprd log");
        let mut cmd = Command::new(dapr_dir().join("daprd"));
        cmd.args(["--app-id", &self.app_id, "--app-port", &self.app_port.to_string()])
            .args(["--app-protocol", &self.protocol])
            .args(["--dapr-http-port", &http.to_string(), "--dapr-grpc-port", &grpc.to_string()])
            .args(["--dapr-internal-grpc-port", &free_port().to_string(), "--metrics-port", &free_port().to_string()])
            .args(["--enable-app-health-check", "--app-health-probe-interval", "1"])
            .arg("--resources-path")
            .arg(res)
            .args(&self.args)
            .env_remove("APP_API_TOKEN")
            .env_remove("DAPR_API_TOKEN")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("start daprd")
    }
}

/// A running daprd, killed when dropped.
pub struct Daprd {
    child: Child,
    /// Its HTTP API port.
    pub http: u16,
    /// Its gRPC API port.
    pub grpc: u16,
    log: PathBuf,
    spec: DaprdBuilder,
    _tmp: tempfile::TempDir,
}

impl Daprd {
    /// Two free ports for daprd's HTTP and gRPC APIs, chosen before it
    /// starts (dialbackd's `--dapr-upstream-*` name them).
    pub fn ports() -> (u16, u16) {
        (free_port(), free_port())
    }

    /// daprd for `app_id` on `ports` (HTTP, gRPC, from [`Daprd::ports`])
    /// with its app at `app_port`, app health checks every second.
    pub fn builder(app_id: &str, ports: (u16, u16), app_port: u16) -> DaprdBuilder {
        DaprdBuilder {
            app_id: app_id.into(),
            ports,
            app_port,
            protocol: "grpc".into(),
            resources: vec![],
            args: vec![],
            env: vec![],
        }
    }

    /// Starts daprd for `app_id` on `ports` with its app at `app_port`
    /// (`grpc` or `http` protocol), the `resources` (file name, YAML) in a
    /// resources dir of its own and `extra` flags; waits until it is ready.
    pub async fn spawn(
        app_id: &str,
        ports: (u16, u16),
        app_port: u16,
        protocol: &str,
        resources: &[(&str, &str)],
        extra: &[&str],
    ) -> Daprd {
        let mut b = Daprd::builder(app_id, ports, app_port).protocol(protocol).args(extra.iter().copied());
        for (name, yaml) in resources {
            b = b.resource(name, yaml);
        }
        b.spawn().await
    }

    /// Waits until its `/v1.0/healthz` answers; a daprd that exits first (a
    /// port taken, a bad resource file) fails at once, with its log.
    pub async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/v1.0/healthz", self.http);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if http_call("GET", &url, &[], "").await.is_ok_and(|r| r.status < 300) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daprd exited ({status}) before it was ready; its log:\n{}", self.log_tail());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "daprd not ready within {PATIENCE:?}; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, then the same daprd (ports, resources, flags) again, ready.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self.spec.launch(&self._tmp.path().join("resources"), &self.log);
        self.wait_ready().await;
    }

    /// SIGHUP: daprd restarts its runtime in place (same process), which
    /// asks the app again for what it asked once (bindings, actor types).
    pub fn reload(&self) {
        let ok = Command::new("kill").args(["-HUP", &self.pid().to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "SIGHUP to daprd");
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its `/v1.0/metadata` as JSON (subscriptions, components, ...).
    pub async fn metadata(&self) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/v1.0/metadata", self.http);
        let r = http_call("GET", &url, &[], "").await.expect("daprd metadata");
        serde_json::from_slice(&r.body).expect("daprd metadata is JSON")
    }

    /// [`Daprd::metadata`], or `None` while daprd does not answer (as
    /// while its runtime restarts on SIGHUP).
    pub async fn try_metadata(&self) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/v1.0/metadata", self.http);
        let r = http_call("GET", &url, &[], "").await.ok().filter(|r| r.status == 200)?;
        serde_json::from_slice(&r.body).ok()
    }

    /// The topics daprd delivers to its app, as `pubsub/topic`.
    pub async fn subscribed_topics(&self) -> Vec<String> {
        let md = self.metadata().await;
        let subs = md["subscriptions"].as_array().cloned().unwrap_or_default();
        subs.iter()
            .map(|s| format!("{}/{}", s["pubsubname"].as_str().unwrap_or(""), s["topic"].as_str().unwrap_or("")))
            .collect()
    }

    /// Waits until daprd delivers `topic` of component `pubsub` to the app
    /// behind `sc`: daprd lists the subscription and `sc`'s relay has seen
    /// more than `before` streams for it subscribed ([`relayed`]). daprd's
    /// list alone is not enough: daprd lists a streaming subscription before
    /// it subscribes at the component, and its in-memory pub/sub drops a
    /// message published in between; it answers the stream once subscribed.
    pub async fn wait_relayed(&self, sc: &Sidecar, topic: &str, before: usize) {
        let want = format!("pubsub/{topic}");
        crate::eventually(&format!("daprd to hold the relay's subscription to {want}"), PATIENCE, || async {
            (relayed(sc, topic) > before && self.subscribed_topics().await.contains(&want)).then_some(())
        })
        .await;
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, 40)
    }
}

/// The last `n` lines of the file at `path` (empty when unreadable).
fn file_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Daprd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many streams to daprd for `topic` the relay of `sc` has seen
/// subscribed (daprd's first answer on a stream, logged "subscribed through daprd").
pub fn relayed(sc: &Sidecar, topic: &str) -> usize {
    let field = format!("topic={topic}");
    sc.log()
        .lines()
        .filter(|l| l.contains("subscribed through daprd") && l.split_whitespace().any(|w| w == field))
        .count()
}
