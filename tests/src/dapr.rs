//! Real Dapr in tests: `daprd` built from Dapr's Go module by
//! `scripts/daprd.sh` (cached by version under `~/.cache/dialback/dapr`),
//! run on free ports with resource files of the test's choosing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::{PATIENCE, http_call};

/// The directory holding `daprd` (and `placement`), built on first use.
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

/// A free TCP port on loopback for a process that wants its port numbers
/// up front (bound, read back, released). Never the same one twice in this
/// process: a released port can come back from the next bind, and two
/// daprds of parallel tests must not be handed one port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
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

/// A running daprd, killed when dropped.
pub struct Daprd {
    child: Child,
    /// Its HTTP API port.
    pub http: u16,
    /// Its gRPC API port.
    pub grpc: u16,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Daprd {
    /// Two free ports for daprd's HTTP and gRPC APIs, chosen before it
    /// starts (dialbackd's `--dapr-upstream-*` name them).
    pub fn ports() -> (u16, u16) {
        (free_port(), free_port())
    }

    /// Starts daprd for `app_id` on `ports` (HTTP, gRPC, from
    /// [`Daprd::ports`]) with its app at `app_port` (`grpc` or `http`
    /// protocol), app health checks every second, the `resources` (file
    /// name, YAML) in a resources dir of its own and `extra` flags; waits
    /// until its `/v1.0/healthz` answers.
    pub async fn spawn(
        app_id: &str,
        (http, grpc): (u16, u16),
        app_port: u16,
        protocol: &str,
        resources: &[(&str, &str)],
        extra: &[&str],
    ) -> Daprd {
        let tmp = tempfile::tempdir().expect("temp dir");
        let res = tmp.path().join("resources");
        std::fs::create_dir_all(&res).expect("resources dir");
        for (name, yaml) in resources {
            std::fs::write(res.join(name), yaml).expect("write a resource file");
        }
        let log = tmp.path().join("daprd.log");
        let file = std::fs::File::create(&log).expect("daprd log");
        let child = Command::new(dapr_dir().join("daprd"))
            .args(["--app-id", app_id, "--app-port", &app_port.to_string(), "--app-protocol", protocol])
            .args(["--dapr-http-port", &http.to_string(), "--dapr-grpc-port", &grpc.to_string()])
            .args(["--dapr-internal-grpc-port", &free_port().to_string(), "--metrics-port", &free_port().to_string()])
            .args(["--enable-app-health-check", "--app-health-probe-interval", "1"])
            .arg("--resources-path")
            .arg(&res)
            .args(extra)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start daprd");
        let mut d = Daprd { child, http, grpc, log, _tmp: tmp };
        // Ready when /v1.0/healthz answers; a daprd that exits first (a
        // port taken, a bad resource file) fails at once, with its log.
        let url = format!("http://127.0.0.1:{http}/v1.0/healthz");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if http_call("GET", &url, &[], "").await.is_ok_and(|r| r.status < 300) {
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daprd exited ({status}) before it was ready; its log:\n{}", d.log_tail());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "daprd not ready within {PATIENCE:?}; its log:\n{}",
                d.log_tail()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daprd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
