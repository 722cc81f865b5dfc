//! The legitimate callers: `n` tasks, each calling
//! `POST /v1.0/invoke/echo/method/m<i>` through the sidecar's HTTP API
//! with the API token and a small body, one call at a time, and sorting
//! every outcome into answered, clear error, sidecar down or LOST.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialback_benches::dapr_error;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::task::JoinHandle;

/// A call with no answer after this long is LOST.
pub const CALL_BOUND: Duration = Duration::from_secs(30);

/// How much longer a LOST call is followed, for the report (past the
/// sidecar's default call timeout of 60 s).
const LATE_BOUND: Duration = Duration::from_secs(45);

/// Error statuses that count as a clear failure when their body is Dapr's JSON error.
const CLEAR_STATUSES: [u16; 4] = [503, 504, 429, 413];

/// One minute's calls, by the minute they finished in.
#[derive(Clone, Debug, Default)]
pub struct MinuteCalls {
    /// Answered with the body echoed.
    pub ok: u64,
    /// Failed with a clear error, by status.
    pub clear: BTreeMap<u16, u64>,
    /// Connection errors to the API while the sidecar process was down (killed, not yet ready).
    pub down: u64,
    /// No answer in time, a connection error, a wrong body, or an error without Dapr's JSON.
    pub lost: u64,
}

/// A connection error to the API, sorted into "sidecar down" or LOST once the restart windows are known.
#[derive(Clone, Debug)]
struct ConnError {
    call: String,
    sent: Duration,
    failed_at: Duration,
    what: String,
}

/// One LOST call, for the report: which, when, why.
#[derive(Clone, Debug)]
pub struct LostCall {
    /// The call's path and body (caller and sequence number).
    pub what: String,
    /// When it was sent, since the start of the run.
    pub sent: Duration,
    /// When it was given up or failed.
    pub ended: Duration,
    /// Why it counts as LOST.
    pub why: String,
    /// For a call with no answer in time: what came of it later.
    pub later: Option<String>,
}

/// How many LOST calls are listed one by one (all are counted).
const LOST_LISTED: usize = 20;

#[derive(Debug, Default)]
struct Tally {
    minutes: Vec<MinuteCalls>,
    conn_errors: Vec<ConnError>,
    lost_reasons: BTreeMap<String, u64>,
    lost_calls: Vec<LostCall>,
    down_reasons: BTreeMap<String, u64>,
}

impl Tally {
    fn minute(&mut self, at: Duration) -> &mut MinuteCalls {
        let last = self.minutes.len() - 1;
        &mut self.minutes[(at.as_secs() / 60).min(last as u64) as usize]
    }

    fn lose(&mut self, what: String, sent: Duration, at: Duration, why: String, later: Option<String>) {
        self.minute(at).lost += 1;
        if self.lost_calls.len() < LOST_LISTED {
            self.lost_calls.push(LostCall { what, sent, ended: at, why: why.clone(), later });
        }
        *self.lost_reasons.entry(why).or_default() += 1;
    }
}

/// Shared between the callers and the rest of the bench.
struct Shared {
    start: Instant,
    tally: Mutex<Tally>,
    /// Send time (ms since the start) of the latest-sent answered call.
    last_ok_sent_ms: AtomicU64,
    /// Calls started, to check that every one of them was sorted.
    started: AtomicU64,
    stop: AtomicBool,
}

/// The running callers.
pub struct Callers {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the callers saw, with connection errors sorted by the restart windows.
#[derive(Debug)]
pub struct CallReport {
    /// Per minute of the run.
    pub minutes: Vec<MinuteCalls>,
    /// Why calls were LOST, and how often.
    pub lost_reasons: BTreeMap<String, u64>,
    /// The first LOST calls, one by one.
    pub lost_calls: Vec<LostCall>,
    /// Which connection errors fell in a sidecar restart window, and how often.
    pub down_reasons: BTreeMap<String, u64>,
    /// Calls started; every one is in exactly one count of `minutes`.
    pub started: u64,
}

impl Callers {
    /// Starts `n` callers on the sidecar's HTTP port, each pausing `pause` between calls.
    pub fn start(start: Instant, minutes: u64, http_port: u16, token: &str, n: usize, pause: Duration) -> Callers {
        let tally = Tally { minutes: vec![MinuteCalls::default(); minutes as usize], ..Tally::default() };
        let shared = Arc::new(Shared {
            start,
            tally: Mutex::new(tally),
            last_ok_sent_ms: AtomicU64::new(0),
            started: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // The sidecar closes an HTTP/1 connection idle for its header timeout
        // (10 s); a pooled connection kept longer may be reused at the very
        // moment it closes, and that call fails mid-flight. A client keeps
        // its idle connections for less (once seen here: 2 calls of 22,000).
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(n)
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .build(connector);
        let tasks = (0..n)
            .map(|i| {
                let (shared, client, token) = (shared.clone(), client.clone(), token.to_string());
                let url = format!("http://127.0.0.1:{http_port}/v1.0/invoke/echo/method/m{i}");
                tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !shared.stop.load(Relaxed) {
                        seq += 1;
                        call(&shared, &client, &url, &token, format!("soak {i} {seq}")).await;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Callers { shared, tasks }
    }

    /// Calls answered so far, all minutes.
    pub fn ok_so_far(&self) -> u64 {
        self.shared.tally.lock().expect("lock").minutes.iter().map(|m| m.ok).sum()
    }

    /// A handle that tells another task how the calls are going.
    pub fn progress(&self) -> Progress {
        Progress(self.shared.clone())
    }

    /// Stops the callers, waits for their last calls (each bounded by [`CALL_BOUND`], a LOST one
    /// followed [`LATE_BOUND`] more),
    /// and sorts connection errors: from calls whose life overlapped one of `down` (sidecar
    /// killed .. ready again) they are "sidecar down", elsewhere LOST.
    pub async fn stop(self, down: &[(Duration, Duration)]) -> CallReport {
        self.shared.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut tally = std::mem::take(&mut *self.shared.tally.lock().expect("lock"));
        for e in std::mem::take(&mut tally.conn_errors) {
            // The call's life overlapped a window: its error may be seen (and
            // timed) a little after the new ready line on a loaded machine.
            if down.iter().any(|(from, to)| e.sent <= *to && e.failed_at >= *from) {
                tally.minute(e.failed_at).down += 1;
                *tally.down_reasons.entry(e.what).or_default() += 1;
            } else {
                tally.lose(e.call, e.sent, e.failed_at, format!("connection error to the API: {}", e.what), None);
            }
        }
        let report = CallReport {
            minutes: tally.minutes,
            lost_reasons: tally.lost_reasons,
            lost_calls: tally.lost_calls,
            down_reasons: tally.down_reasons,
            started: self.shared.started.load(Relaxed),
        };
        let sorted: u64 = report.minutes.iter().map(|m| m.ok + m.clear.values().sum::<u64>() + m.down + m.lost).sum();
        assert_eq!(sorted, report.started, "the harness lost track of calls");
        report
    }
}

/// See [`Callers::progress`].
#[derive(Clone)]
pub struct Progress(Arc<Shared>);

impl Progress {
    /// Send time, since the start, of the latest-sent call that was answered.
    pub fn last_ok_sent(&self) -> Duration {
        Duration::from_millis(self.0.last_ok_sent_ms.load(Relaxed))
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.0.start.elapsed()
    }
}

/// What came back.
enum Reply {
    Answer(u16, Bytes),
    ConnError(String),
    /// None within [`CALL_BOUND`]; what came later, if anything.
    NoAnswer(String),
}

async fn call(shared: &Shared, client: &Client<HttpConnector, Full<Bytes>>, url: &str, token: &str, body: String) {
    let sent = shared.start.elapsed();
    shared.started.fetch_add(1, Relaxed);
    let req = http::Request::post(url)
        .header("content-type", "text/plain")
        .header("dapr-api-token", token)
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| chain(&e))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| chain(&e))?.to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::pin!(exchange);
    let reply = match tokio::time::timeout(CALL_BOUND, &mut exchange).await {
        Ok(Ok((status, b))) => Reply::Answer(status, b),
        Ok(Err(e)) => Reply::ConnError(e),
        Err(_) => {
            // LOST already; what came of it later (the sidecar's own call
            // timeout is 60 s) tells a slow path from a call dropped on the way.
            let later = match tokio::time::timeout(LATE_BOUND, &mut exchange).await {
                Ok(Ok((status, _))) => format!("then status {status}"),
                Ok(Err(e)) => format!("then failed: {e}"),
                Err(_) => format!("nothing within {:?} more", LATE_BOUND),
            };
            Reply::NoAnswer(format!("{later} after {:.1} s", shared.start.elapsed().saturating_sub(sent).as_secs_f64()))
        }
    };
    let done = shared.start.elapsed();
    // Which call, for the report of a LOST one.
    let what = || format!("{} {body:?}", url.rsplit('/').next().unwrap_or(url));
    let mut t = shared.tally.lock().expect("lock");
    match reply {
        Reply::Answer(200, b) if b == body.as_bytes() => {
            t.minute(done).ok += 1;
            shared.last_ok_sent_ms.fetch_max(sent.as_millis() as u64, Relaxed);
        }
        Reply::Answer(200, _) => t.lose(what(), sent, done, "200 with a wrong body".into(), None),
        Reply::Answer(s, b) if CLEAR_STATUSES.contains(&s) && dapr_error(&b).is_some() => {
            *t.minute(done).clear.entry(s).or_default() += 1;
        }
        Reply::Answer(s, b) => {
            let kind = if dapr_error(&b).is_some() { "Dapr JSON" } else { "no Dapr JSON" };
            t.lose(what(), sent, done, format!("status {s} ({kind})"), None);
        }
        Reply::ConnError(e) => t.conn_errors.push(ConnError { call: what(), sent, failed_at: done, what: e }),
        // Counted in the minute it was given up in, as before it was followed.
        Reply::NoAnswer(later) => {
            t.lose(what(), sent, sent + CALL_BOUND, format!("no answer within {CALL_BOUND:?}"), Some(later))
        }
    }
}

/// An error and its sources, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// As JSON.
pub fn report_json(r: &CallReport) -> serde_json::Value {
    json!({
        "minutes": r.minutes.iter().enumerate().map(|(i, m)| json!({
            "minute": i, "ok": m.ok, "clear_errors": m.clear, "sidecar_down": m.down, "lost": m.lost,
        })).collect::<Vec<_>>(),
        "started": r.started,
        "lost_reasons": r.lost_reasons,
        "lost_calls": r.lost_calls.iter().map(|l| json!({
            "call": l.what, "sent_s": l.sent.as_secs_f64(), "ended_s": l.ended.as_secs_f64(), "why": l.why,
            "later": l.later,
        })).collect::<Vec<_>>(),
        "sidecar_down_errors": r.down_reasons,
    })
}
