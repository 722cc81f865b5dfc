//! What daprd was told of a gRPC app's input bindings and an HTTP app's
//! actor types, and a warning (or a reload of daprd) when the app declares
//! one it was not told of.
//!
//! daprd asks a gRPC app `ListInputBindings`, and an HTTP app `GET
//! /dapr/config`, once per run and keeps the answer (docs/dapr.md): an app
//! that comes back declaring another binding would never get its events,
//! one hosting another actor type would never get its calls, and nothing
//! would say why. The bridge does
//! not answer for the app (the question crosses as it is), but it keeps a
//! copy of the answer on the way back ([`Watched`]); the relay asks each
//! new channel's app the same question and warns when it declares one
//! daprd was not told of, naming the ways out, or, with
//! `--bridge-reload-daprd-pid-file`, sends daprd SIGHUP ([`reload_daprd`]):
//! daprd restarts its runtime in place and asks the app again.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prost::Message;

/// The largest answer copied: a longer one is passed on and not kept.
const MAX_ANSWER: usize = 64 * 1024;

/// What daprd asks an app once per run and keeps (docs/dapr.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// A gRPC app's input bindings (`ListInputBindings`).
    Bindings,
    /// An HTTP app's actor types (`GET /dapr/config`, its `entities`).
    ActorTypes,
}

impl Asked {
    /// What it is, in log lines.
    pub fn what(self) -> &'static str {
        match self {
            Asked::Bindings => "input bindings",
            Asked::ActorTypes => "actor types",
        }
    }
}

/// What daprd was last told, shared by the bridge and the relay.
#[derive(Debug, Default)]
pub struct Told {
    bindings: Mutex<Option<BTreeSet<String>>>,
    actor_types: Mutex<Option<BTreeSet<String>>>,
}

impl Told {
    fn names(&self, asked: Asked) -> &Mutex<Option<BTreeSet<String>>> {
        match asked {
            Asked::Bindings => &self.bindings,
            Asked::ActorTypes => &self.actor_types,
        }
    }

    /// Records the answer daprd got; a later one means daprd asked again,
    /// which it does only after a restart, so the newest counts.
    pub fn record(&self, asked: Asked, names: impl IntoIterator<Item = String>) {
        *self.names(asked).lock().unwrap_or_else(|e| e.into_inner()) = Some(names.into_iter().collect());
    }

    /// Of the names the app declares now, those daprd was not told of:
    /// empty while daprd has not asked yet.
    pub fn missing(&self, asked: Asked, app: &[String]) -> Vec<String> {
        match &*self.names(asked).lock().unwrap_or_else(|e| e.into_inner()) {
            Some(told) => app.iter().filter(|b| !told.contains(*b)).cloned().collect(),
            None => Vec::new(),
        }
    }
}

/// The longest pid file read.
const MAX_PID_FILE: u64 = 64;

/// The least time between two reloads of daprd: an app that comes back
/// with other bindings on every connection (buggy, or flapping while daprd
/// is still asking again) must not keep daprd restarting.
pub const RELOAD_GAP: std::time::Duration = std::time::Duration::from_secs(30);

/// When daprd was last reloaded, shared by the relay's channels.
#[derive(Debug, Default)]
pub struct Reloads(Mutex<Option<std::time::Instant>>);

impl Reloads {
    /// Whether a reload may go now (and if so, it counts from `now`); else
    /// how long ago the last one went.
    pub fn take(&self, now: std::time::Instant) -> Result<(), std::time::Duration> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.saturating_duration_since(at) < RELOAD_GAP => Err(now.saturating_duration_since(at)),
            _ => {
                *last = Some(now);
                Ok(())
            }
        }
    }
}

/// Sends SIGHUP to the daprd whose pid `pid_file` holds (its runtime then
/// restarts in place and asks the app again); the pid, or why not.
pub async fn reload_daprd(pid_file: &std::path::Path) -> Result<u32, String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(pid_file).await.map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
    let mut text = String::new();
    file.take(MAX_PID_FILE)
        .read_to_string(&mut text)
        .await
        .map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
    let pid: u32 =
        text.trim().parse().map_err(|_| format!("{} holds no pid: {:?}", pid_file.display(), text.trim()))?;
    // 0 and 1 would be this process group and init: never a daprd.
    if pid <= 1 {
        return Err(format!("{} holds pid {pid}, which is not a daprd", pid_file.display()));
    }
    let status = tokio::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("running kill: {e}"))?;
    if status.success() {
        Ok(pid)
    } else {
        Err(format!("kill -HUP {pid} failed ({status}): no such process, or not ours"))
    }
}

/// The body of the app's answer to one of daprd's once-a-run questions
/// ([`Asked`]), passed on unchanged; at its end, what it said is recorded
/// in [`Told`]. Wrap only a successful answer (HTTP 200).
pub struct Watched<B> {
    inner: B,
    seen: BytesMut,
    told: Arc<Told>,
    asked: Asked,
    recorded: bool,
}

impl<B> Watched<B> {
    /// Watches `inner`, the answer to `asked`, for `told`.
    pub fn new(inner: B, told: Arc<Told>, asked: Asked) -> Watched<B> {
        Watched { inner, seen: BytesMut::new(), told, asked, recorded: false }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(d) = f.data_ref()
                && this.seen.len() + d.len() <= MAX_ANSWER
            {
                this.seen.extend_from_slice(d);
            }
            // The trailers end a gRPC answer, and its status says whether it counts.
            if this.asked == Asked::Bindings
                && let Some(t) = f.trailers_ref()
                && t.get("grpc-status").is_some_and(|s| s == "0")
                && let Some(names) = decode(&this.seen)
            {
                this.told.record(Asked::Bindings, names);
            }
        }
        // An HTTP answer ends with its body: at its last frame (hyper asks
        // no further once the body says it is at its end) or at none.
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if this.asked == Asked::ActorTypes
            && ended
            && !this.recorded
            && let Some(names) = actor_types(&this.seen)
        {
            this.recorded = true;
            this.told.record(Asked::ActorTypes, names);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The actor types (`entities`) in an app's `/dapr/config` JSON; `None`
/// when it is not one.
pub fn actor_types(json: &[u8]) -> Option<Vec<String>> {
    let config: serde_json::Value = serde_json::from_slice(json).ok()?;
    let entities = config.get("entities")?.as_array()?;
    Some(entities.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
}

/// The binding names in one gRPC-framed `ListInputBindingsResponse`
/// (uncompressed, as the SDK's server sends it); `None` when it is not one.
fn decode(framed: &[u8]) -> Option<Vec<String>> {
    let mut b = framed;
    if b.len() < 5 || b[0] != 0 {
        return None;
    }
    b.advance(1);
    let len = usize::try_from(b.get_u32()).ok()?;
    let msg = b.get(..len)?;
    dialback_proto::runtime::ListInputBindingsResponse::decode(msg).ok().map(|r| r.bindings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(names: &[&str]) -> Vec<u8> {
        let msg = dialback_proto::runtime::ListInputBindingsResponse {
            bindings: names.iter().map(|s| s.to_string()).collect(),
        }
        .encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }

    #[test]
    fn nothing_is_missing_before_daprd_asks() {
        assert!(Told::default().missing(Asked::Bindings, &["cron".into()]).is_empty());
    }

    #[test]
    fn a_binding_daprd_was_not_told_of_is_named() {
        let told = Told::default();
        told.record(Asked::Bindings, decode(&framed(&["cron"])).unwrap_or_default());
        assert!(told.missing(Asked::Bindings, &["cron".into()]).is_empty());
        assert_eq!(told.missing(Asked::Bindings, &["cron".into(), "queue".into()]), vec!["queue".to_string()]);
        assert!(told.missing(Asked::ActorTypes, &["Counter".into()]).is_empty(), "each question apart");
    }

    #[tokio::test]
    async fn an_http_answer_is_recorded_at_its_last_frame() {
        use http_body_util::BodyExt;
        let told = Arc::new(Told::default());
        let body = http_body_util::Full::new(Bytes::from_static(br#"{"entities":["Timer"]}"#));
        let mut watched = Watched::new(body, told.clone(), Asked::ActorTypes);
        // As hyper does: one frame, then no more polls once at its end.
        let frame = watched.frame().await;
        assert!(frame.is_some_and(|f| f.is_ok()), "the body's one frame");
        assert!(watched.is_end_stream());
        assert_eq!(told.missing(Asked::ActorTypes, &["Timer".into(), "Counter".into()]), vec!["Counter".to_string()]);
    }

    #[test]
    fn actor_types_are_read_from_an_apps_config() {
        let got = actor_types(br#"{"entities":["Counter","Timer"],"actorIdleTimeout":"1h"}"#);
        assert_eq!(got, Some(vec!["Counter".to_string(), "Timer".to_string()]));
        assert_eq!(actor_types(br#"{"actorIdleTimeout":"1h"}"#), None, "no entities");
        assert_eq!(actor_types(b""), None, "an echoed empty body");
        assert_eq!(actor_types(b"<html>"), None);
    }

    #[test]
    fn daprd_is_reloaded_at_most_once_a_gap() {
        let reloads = Reloads::default();
        let t0 = std::time::Instant::now();
        assert!(reloads.take(t0).is_ok(), "the first");
        let soon = t0 + RELOAD_GAP / 2;
        assert_eq!(reloads.take(soon), Err(RELOAD_GAP / 2), "not again so soon");
        assert!(reloads.take(t0 + RELOAD_GAP).is_ok(), "again once the gap is over");
    }

    #[tokio::test]
    async fn a_pid_file_that_names_no_daprd_is_refused_with_why() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let file = dir.path().join("daprd.pid");
        let refused = |r: Result<u32, String>| match r {
            Ok(pid) => panic!("refused, yet it signalled pid {pid}"),
            Err(e) => e,
        };
        let missing = refused(reload_daprd(&file).await);
        assert!(missing.contains("reading"), "{missing}");
        for (text, says) in [("not a pid\n", "holds no pid"), ("1\n", "not a daprd"), ("0", "not a daprd")] {
            std::fs::write(&file, text).unwrap_or_else(|e| panic!("write: {e}"));
            let e = refused(reload_daprd(&file).await);
            assert!(e.contains(says), "{text:?}: {e}");
        }
        // A huge file is read no further than a pid could reach.
        std::fs::write(&file, "7".repeat(1 << 20)).unwrap_or_else(|e| panic!("write: {e}"));
        let e = refused(reload_daprd(&file).await);
        assert!(e.contains("holds no pid"), "{}", &e[..e.len().min(200)]);
        assert!(e.len() < 300, "the error quotes at most what was read");
    }

    #[test]
    fn only_a_whole_uncompressed_message_is_read() {
        assert_eq!(decode(&framed(&["a", "b"])), Some(vec!["a".to_string(), "b".to_string()]));
        let mut compressed = framed(&["a"]);
        compressed[0] = 1;
        assert_eq!(decode(&compressed), None);
        let whole = framed(&["a"]);
        assert_eq!(decode(&whole[..whole.len() - 1]), None);
        assert_eq!(decode(&[]), None);
    }
}
