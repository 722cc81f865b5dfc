//! Dapr's control-plane services for the tests that need them: placement
//! (actors) and the scheduler (jobs, reminders, workflows), built beside
//! daprd by `scripts/daprd.sh` and run on free loopback ports.

use std::path::PathBuf;
use std::process::{Child, Command};

use super::{dapr_dir, free_port};
use crate::{PATIENCE, http_call};

/// Dapr's placement service (built beside daprd), on free loopback ports,
/// its Raft log in memory; killed when dropped. daprd finds it with
/// `--placement-host-address 127.0.0.1:<port>`.
pub struct Placement {
    child: Child,
    /// Its gRPC port.
    pub port: u16,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Placement {
    /// Starts one and waits until its healthz answers.
    pub async fn start() -> Placement {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (port, healthz, metrics, raft) = (free_port(), free_port(), free_port(), free_port());
        let log = tmp.path().join("placement.log");
        let file = std::fs::File::create(&log).expect("placement log");
        let child = Command::new(dapr_dir().join("placement"))
            .args(["--port", &port.to_string(), "--listen-address", "127.0.0.1"])
            .args(["--healthz-port", &healthz.to_string(), "--healthz-listen-address", "127.0.0.1"])
            .args(["--metrics-port", &metrics.to_string(), "--metrics-listen-address", "127.0.0.1"])
            .args(["--initial-cluster", &format!("dapr-placement-0=127.0.0.1:{raft}")])
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start placement");
        let p = Placement { child, port, log, _tmp: tmp };
        let url = format!("http://127.0.0.1:{healthz}/healthz");
        crate::eventually_or(
            "placement's healthz to answer",
            PATIENCE,
            || async { http_call("GET", &url, &[], "").await.ok().filter(|r| r.status < 300).map(|_| ()) },
            || p.log_tail(),
        )
        .await;
        p
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Dapr's scheduler (built beside daprd; `scripts/daprd.sh` says how),
/// its etcd embedded with its data in a temp dir, on free loopback ports;
/// killed when dropped. daprd finds it with
/// `--scheduler-host-address 127.0.0.1:<port>`. Jobs, actor reminders and
/// workflows need it.
pub struct Scheduler {
    child: Child,
    /// Its gRPC port.
    pub port: u16,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Scheduler {
    /// Starts one and waits until its healthz answers. Panics with why
    /// when the scheduler could not be built here.
    pub async fn start() -> Scheduler {
        let bin = dapr_dir().join("scheduler");
        if !bin.exists() {
            let why = std::fs::read_to_string(dapr_dir().join("scheduler.failed")).unwrap_or_default();
            panic!("Dapr's scheduler could not be built here (scripts/daprd.sh): {why}");
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let (port, healthz, metrics, client, peer) = (free_port(), free_port(), free_port(), free_port(), free_port());
        let log = tmp.path().join("scheduler.log");
        let file = std::fs::File::create(&log).expect("scheduler log");
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--listen-address", "127.0.0.1"])
            .args(["--healthz-port", &healthz.to_string(), "--healthz-listen-address", "127.0.0.1"])
            .args(["--metrics-port", &metrics.to_string(), "--metrics-listen-address", "127.0.0.1"])
            .args(["--etcd-client-port", &client.to_string(), "--etcd-client-listen-address", "127.0.0.1"])
            .args(["--etcd-initial-cluster", &format!("dapr-scheduler-server-0=http://127.0.0.1:{peer}")])
            .arg("--etcd-data-dir")
            .arg(tmp.path().join("etcd"))
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the scheduler");
        let s = Scheduler { child, port, log, _tmp: tmp };
        let url = format!("http://127.0.0.1:{healthz}/healthz");
        crate::eventually_or(
            "the scheduler's healthz to answer",
            PATIENCE,
            || async { http_call("GET", &url, &[], "").await.ok().filter(|r| r.status < 300).map(|_| ()) },
            || s.log_tail(),
        )
        .await;
        s
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
