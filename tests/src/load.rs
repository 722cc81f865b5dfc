//! A steady stream of invocations through the sidecar's HTTP API, each
//! call on its own task (as independent callers would), with every outcome
//! recorded: answered, failed (status and body), or never finished.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::http_call;

/// One call's outcome.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it was sent, from the start of the loop.
    pub sent: Duration,
    /// How long it took.
    pub took: Duration,
    /// `Ok` with the body, or `Err` with the status and body (or transport error).
    pub result: Result<String, String>,
}

/// A running call loop.
pub struct CallLoop {
    start: Instant,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    sent: Arc<Mutex<u64>>,
    task: JoinHandle<()>,
    inflight: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// What a stopped loop saw.
#[derive(Debug, Default)]
pub struct Summary {
    /// Calls sent.
    pub sent: u64,
    /// Every outcome, in completion order.
    pub outcomes: Vec<Outcome>,
}

impl Summary {
    /// Calls that failed, with why.
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }

    /// Calls answered.
    pub fn ok(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_ok()).count()
    }

    /// Calls sent but neither answered nor failed.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.outcomes.len() as u64)
    }

    /// Fails the test, saying `what` and listing the failures, unless
    /// every call was answered: none failed, none lost.
    pub fn assert_no_failure(&self, what: &str) {
        let failed: Vec<_> = self.failures().iter().map(|o| format!("{:?}: {:?}", o.sent, o.result)).collect();
        assert!(failed.is_empty(), "{what}: {} of {} calls failed: {failed:#?}", failed.len(), self.sent);
        assert_eq!(self.lost(), 0, "{what}: calls neither answered nor failed");
    }
}

impl CallLoop {
    /// Sends `POST /v1.0/invoke/<app>/method/<method>` every `every`, until stopped.
    pub fn start(http_port: u16, app_id: &str, method: &str, every: Duration) -> CallLoop {
        CallLoop::start_with(http_port, app_id, method, every, &[])
    }

    /// [`CallLoop::start`], each call carrying `headers` (e.g. the API token).
    pub fn start_with(
        http_port: u16,
        app_id: &str,
        method: &str,
        every: Duration,
        headers: &[(&str, &str)],
    ) -> CallLoop {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let start = Instant::now();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0u64));
        let inflight = Arc::new(Mutex::new(Vec::new()));
        let url = format!("http://127.0.0.1:{http_port}/v1.0/invoke/{app_id}/method/{method}");
        let task = {
            let (outcomes, sent, inflight) = (outcomes.clone(), sent.clone(), inflight.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                loop {
                    tick.tick().await;
                    n += 1;
                    *sent.lock().expect("lock") += 1;
                    let (url, outcomes, headers) = (url.clone(), outcomes.clone(), headers.clone());
                    let at = start.elapsed();
                    let h = tokio::spawn(async move {
                        let body = format!("call {n}");
                        let t0 = Instant::now();
                        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        let result = match http_call("POST", &url, &h, body.clone()).await {
                            Ok(r) if r.status == 200 && r.text() == body => Ok(r.text()),
                            Ok(r) => Err(format!("{} {}", r.status, r.text())),
                            Err(e) => Err(e.to_string()),
                        };
                        outcomes.lock().expect("lock").push(Outcome { sent: at, took: t0.elapsed(), result });
                    });
                    let mut v = inflight.lock().expect("lock");
                    v.retain(|h: &JoinHandle<()>| !h.is_finished());
                    v.push(h);
                }
            })
        };
        CallLoop { start, outcomes, sent, task, inflight }
    }

    /// Time since the loop started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// How long after `t_ref` (time since the loop started) the first call
    /// sent at or after `t_ref` was answered; `None` while none has been.
    pub fn first_ok_after(&self, t_ref: Duration) -> Option<Duration> {
        let outcomes = self.outcomes.lock().expect("lock");
        outcomes.iter().filter(|o| o.result.is_ok() && o.sent >= t_ref).map(|o| o.sent + o.took - t_ref).min()
    }

    /// How long after `t_ref` the first answer of any call arrived, whenever
    /// it was sent (after a blackhole: when answers flow again, before the
    /// backlog of calls sent during it has drained); `None` while none has.
    pub fn first_answer_after(&self, t_ref: Duration) -> Option<Duration> {
        let outcomes = self.outcomes.lock().expect("lock");
        outcomes.iter().filter(|o| o.result.is_ok()).filter_map(|o| (o.sent + o.took).checked_sub(t_ref)).min()
    }

    /// Calls answered so far.
    pub fn ok_so_far(&self) -> usize {
        self.outcomes.lock().expect("lock").iter().filter(|o| o.result.is_ok()).count()
    }

    /// Waits (within [`crate::PATIENCE`]) until at least `n` more calls
    /// have been answered than so far.
    pub async fn answered(&self, n: usize) {
        let base = self.ok_so_far();
        crate::eventually(&format!("{n} more calls answered"), crate::PATIENCE, || async {
            (self.ok_so_far() >= base + n).then_some(())
        })
        .await;
    }

    /// Stops sending, waits (bounded by `limit`) for calls in flight, and
    /// returns what happened.
    pub async fn stop(self, limit: Duration) -> Summary {
        self.task.abort();
        // Wait until the sender has really stopped, so no call it counted
        // as sent is missing from the list below.
        let _ = self.task.await;
        let pending: Vec<_> = std::mem::take(&mut *self.inflight.lock().expect("lock"));
        let _ = tokio::time::timeout(limit, futures_join(pending)).await;
        let sent = *self.sent.lock().expect("lock");
        let outcomes = self.outcomes.lock().expect("lock").clone();
        Summary { sent, outcomes }
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
