//! A Redis server for the tests (Debian's `redis-server`), and the few
//! commands they send it.

use std::process::{Child, Command, Stdio};

use super::free_port;
use crate::PATIENCE;

/// A Redis server (Debian's `redis-server`) on a free loopback port, with
/// nothing on disk; killed when dropped.
pub struct Redis {
    child: Child,
    /// Its port.
    pub port: u16,
    _tmp: tempfile::TempDir,
}

impl Redis {
    /// Starts one and waits until it answers PING. Panics with what to
    /// install when `redis-server` is missing (`.ci/run` installs it).
    pub async fn start() -> Redis {
        let tmp = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start ({e}): install Debian's redis-server (.ci/run does)")
            });
        let r = Redis { child, port, _tmp: tmp };
        crate::eventually("redis-server to answer PING", PATIENCE, || async {
            r.try_command(&["PING"], 1).await.ok().filter(|got| got == &["+PONG"]).map(|_| ())
        })
        .await;
        r
    }

    /// `SET key value`; panics unless Redis answers OK.
    pub async fn set(&self, key: &str, value: &str) {
        let got = self.command(&["SET", key, value], 1).await;
        assert_eq!(got, ["+OK"], "Redis SET {key}");
    }

    /// How many clients are subscribed to `channel` (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> u64 {
        // *2, $len, the channel, :count
        let got = self.command(&["PUBSUB", "NUMSUB", channel], 4).await;
        got[3].strip_prefix(':').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("PUBSUB NUMSUB: {got:?}"))
    }

    /// One command in RESP; its answer's first `lines` lines. Panics when
    /// Redis does not answer.
    async fn command(&self, args: &[&str], lines: usize) -> Vec<String> {
        let what = args.first().copied().unwrap_or_default();
        self.try_command(args, lines).await.unwrap_or_else(|e| panic!("Redis {what}: {e}"))
    }

    /// [`Redis::command`], or why Redis did not answer within [`PATIENCE`].
    async fn try_command(&self, args: &[&str], lines: usize) -> std::io::Result<Vec<String>> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            cmd.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        let talk = async {
            let mut s = tokio::io::BufReader::new(tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?);
            s.get_mut().write_all(&cmd).await?;
            let mut got = Vec::new();
            for _ in 0..lines {
                let mut line = String::new();
                s.read_line(&mut line).await?;
                got.push(line.trim_end().to_string());
            }
            Ok::<_, std::io::Error>(got)
        };
        tokio::time::timeout(PATIENCE, talk).await.map_err(|_| std::io::ErrorKind::TimedOut)?
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
