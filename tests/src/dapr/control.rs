//! Dapr's control-plane services for the tests that need them: placement
//! (actors) and the scheduler (jobs, reminders, workflows), built beside
//! daprd by `scripts/daprd.sh` and run on free loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::{dapr_dir, free_port};
use crate::{PATIENCE, http_call};

/// One running control-plane process: its log and temp dir, killed when dropped.
struct Service {
    child: Child,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Service {
    /// Starts `bin` (`name` in messages) with the flags `args` makes of its
    /// temp dir, its healthz on `healthz`, and waits until that answers.
    async fn start(name: &str, bin: PathBuf, args: impl FnOnce(&Path) -> Vec<String>, healthz: u16) -> Service {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{name} log: {e}"));
        let child = Command::new(bin)
            .args(args(tmp.path()))
            .args(["--healthz-port", &healthz.to_string(), "--healthz-listen-address", "127.0.0.1"])
            .args(["--metrics-port", &free_port().to_string(), "--metrics-listen-address", "127.0.0.1"])
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let s = Service { child, log, _tmp: tmp };
        let url = format!("http://127.0.0.1:{healthz}/healthz");
        crate::eventually_or(
            &format!("{name}'s healthz to answer"),
            PATIENCE,
            || async { http_call("GET", &url, &[], "").await.ok().filter(|r| r.status < 300).map(|_| ()) },
            || s.log_tail(),
        )
        .await;
        s
    }

    fn log_tail(&self) -> String {
        super::file_tail(&self.log, 30)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Dapr's placement service (built beside daprd), on free loopback ports,
/// its Raft log in memory; killed when dropped. daprd finds it with
/// `--placement-host-address 127.0.0.1:<port>`.
pub struct Placement {
    /// Its gRPC port.
    pub port: u16,
    service: Service,
}

impl Placement {
    /// Starts one and waits until its healthz answers.
    pub async fn start() -> Placement {
        let (port, raft) = (free_port(), free_port());
        let args = |_: &Path| {
            vec![
                "--port".to_string(),
                port.to_string(),
                "--listen-address".into(),
                "127.0.0.1".into(),
                "--initial-cluster".into(),
                format!("dapr-placement-0=127.0.0.1:{raft}"),
            ]
        };
        let service = Service::start("placement", dapr_dir().join("placement"), args, free_port()).await;
        Placement { port, service }
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.service.log_tail()
    }
}

/// Dapr's scheduler (built beside daprd; `scripts/daprd.sh` says how),
/// its etcd embedded with its data in a temp dir, on free loopback ports;
/// killed when dropped. daprd finds it with
/// `--scheduler-host-address 127.0.0.1:<port>`. Jobs, actor reminders and
/// workflows need it.
pub struct Scheduler {
    /// Its gRPC port.
    pub port: u16,
    service: Service,
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
        let (port, client, peer) = (free_port(), free_port(), free_port());
        let args = |tmp: &Path| {
            vec![
                "--port".to_string(),
                port.to_string(),
                "--listen-address".into(),
                "127.0.0.1".into(),
                "--etcd-client-port".into(),
                client.to_string(),
                "--etcd-client-listen-address".into(),
                "127.0.0.1".into(),
                "--etcd-initial-cluster".into(),
                format!("dapr-scheduler-server-0=http://127.0.0.1:{peer}"),
                "--etcd-data-dir".into(),
                tmp.join("etcd").display().to_string(),
            ]
        };
        let service = Service::start("scheduler", bin, args, free_port()).await;
        Scheduler { port, service }
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.service.log_tail()
    }
}
