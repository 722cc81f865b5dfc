//! Dapr actors hosted by an app with no listening socket: daprd, with
//! Dapr's placement service, an actor state store and Dapr's scheduler,
//! places the actors an HTTP app (daprd's `--app-protocol http`) declares
//! in `GET /dapr/config` on that app, behind dialbackd's bridge and the
//! app's channel; the subscriber example hosts them (`--actor-type`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dapr::dapr::proto::runtime::v1::InvokeActorRequest;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dialback_e2e::dapr::components::ACTOR_STATE_STORE;
use dialback_e2e::dapr::{Daprd, Placement, Scheduler};
use dialback_e2e::{App, AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, eventually_or, http_call};
use serde_json::Value;

const APP: &str = "subscriber";

/// Placement, the scheduler, dialbackd (bridge, HTTP app protocol, with
/// `sc_args`), daprd behind it, and the subscriber hosting `actor_type`.
struct Actors {
    placement: Placement,
    scheduler: Scheduler,
    sc: Sidecar,
    daprd: Daprd,
    app: App,
}

impl Actors {
    async fn start(actor_type: &str, sc_args: &[String]) -> Actors {
        let (placement, scheduler) = (Placement::start().await, Scheduler::start().await);
        let ports = Daprd::ports();
        let up = |p: u16| format!("127.0.0.1:{p}");
        let sc = SidecarBuilder::bridged(APP, ports, 0)
            .args(["--bridge-app-protocol", "http"])
            .args(sc_args.iter().cloned())
            .spawn()
            .await;
        let mut daprd = Daprd::builder(APP, ports, sc.bridge.expect("bridge port").port())
            .protocol("http")
            .resource("actorstate.yaml", ACTOR_STATE_STORE)
            .args(["--placement-host-address".to_string(), up(placement.port)])
            .args(["--scheduler-host-address".to_string(), up(scheduler.port)])
            .start();
        // The app comes after daprd: daprd asks an app for its actor types
        // when its health check first sees it healthy, which the bridge says
        // only while a channel is up (docs/dapr.md); daprd's healthz waits
        // for that too.
        let app = Actors::app(&sc, actor_type).await;
        daprd.wait_ready().await;
        let a = Actors { placement, scheduler, sc, daprd, app };
        a.wait_hosting(actor_type).await;
        a
    }

    /// The subscriber hosting `actor_type`, connected to `sc`.
    async fn app(sc: &Sidecar, actor_type: &str) -> App {
        let mut app = AppBuilder::subscriber(sc.grpc)
            .transport("quic")
            .args(["--protocol", "http", "--actor-type", actor_type])
            .spawn();
        app.wait_connected().await;
        app
    }

    fn logs(&self) -> String {
        format!(
            "dialbackd log:\n{}\ndaprd log:\n{}\nplacement log:\n{}\nscheduler log:\n{}",
            self.sc.log_tail(),
            self.daprd.log_tail(),
            self.placement.log_tail(),
            self.scheduler.log_tail()
        )
    }

    /// Waits until daprd hosts `actor_type`, placed by the placement service.
    async fn wait_hosting(&self, actor_type: &str) {
        let ready = || async {
            let md = self.daprd.try_metadata().await?;
            let actors = &md["actorRuntime"];
            let hosted = actors["activeActors"].as_array()?.iter().any(|a| a["type"] == actor_type);
            (hosted && actors["hostReady"] == true && actors["placement"] == "placement: connected").then_some(())
        };
        let what = format!("daprd to host {actor_type} actors, placed by the placement service");
        eventually_or(&what, PATIENCE, ready, || self.logs()).await;
    }

    /// Calls method `bump` of actor `ty`/`id` through dialbackd's HTTP API,
    /// with `body`: the actor's JSON answer, which must be a 200.
    async fn call(&self, ty: &str, id: &str, body: &str) -> Value {
        let url = format!("{}/v1.0/actors/{ty}/{id}/method/bump", self.sc.http_base());
        let r = http_call("POST", &url, &[("content-type", "text/plain")], body.to_string()).await.expect("actor call");
        assert_eq!(r.status, 200, "actor {ty}/{id}: {}\n{}", r.text(), self.logs());
        r.json()
    }
}

/// Calls through dialbackd's HTTP and gRPC APIs reach the same actor
/// instance in the app; its state is saved and read through dialbackd; a
/// reminder registered through dialbackd (kept by Dapr's scheduler) calls
/// the actor back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_live_in_the_app_behind_the_channel() {
    let a = Actors::start("Counter", &[]).await;
    let first = a.call("Counter", "a1", "hello").await;
    assert_eq!((first["type"].as_str(), first["id"].as_str()), (Some("Counter"), Some("a1")), "{first}");
    assert_eq!((first["method"].as_str(), first["data"].as_str()), (Some("bump"), Some("hello")), "{first}");
    assert_eq!(first["calls"], 1, "{first}");
    assert_eq!(a.call("Counter", "a1", "again").await["calls"], 2, "the same actor, called again");
    assert_eq!(a.call("Counter", "b2", "other").await["calls"], 1, "another actor");

    let url = format!("http://127.0.0.1:{}", a.sc.grpc);
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.expect("connect");
    let req = InvokeActorRequest {
        actor_type: "Counter".into(),
        actor_id: "a1".into(),
        method: "bump".into(),
        data: b"over grpc".to_vec(),
        ..Default::default()
    };
    let got = DaprClient::new(channel)
        .invoke_actor(req)
        .await
        .unwrap_or_else(|e| panic!("InvokeActor: {e:?}\n{}", a.logs()))
        .into_inner();
    let got: Value = serde_json::from_slice(&got.data).expect("the actor's JSON answer");
    assert_eq!((got["calls"].as_i64(), got["data"].as_str()), (Some(3), Some("over grpc")), "{got}");

    let base = format!("{}/v1.0/actors/Counter/a1/state", a.sc.http_base());
    let ops = r#"[{"operation":"upsert","request":{"key":"k","value":"v1"}}]"#;
    let r = http_call("POST", &base, &[("content-type", "application/json")], ops).await.expect("actor state");
    assert_eq!(r.status, 204, "save the actor's state: {}\n{}", r.text(), a.logs());
    let r = http_call("GET", &format!("{base}/k"), &[], "").await.expect("actor state");
    assert_eq!((r.status, r.text()), (200, r#""v1""#.to_string()), "the actor's state, read back");

    // A reminder, kept by the scheduler, calls the actor back in the app.
    let url = format!("{}/v1.0/actors/Counter/a1/reminders/wake", a.sc.http_base());
    let r = http_call("POST", &url, &[("content-type", "application/json")], r#"{"dueTime":"1s","data":"up"}"#)
        .await
        .expect("register a reminder");
    assert_eq!(r.status, 204, "register the reminder: {}\n{}", r.text(), a.logs());
    let events = format!("{}/v1.0/invoke/{APP}/method/events", a.sc.http_base());
    let fired = || async {
        let r = http_call("POST", &events, &[], "").await.ok().filter(|r| r.status == 200)?;
        let evs = r.json();
        evs.as_array()?
            .iter()
            .any(|e| e["kind"] == "reminder" && e["actor"] == "a1" && e["name"] == "wake")
            .then_some(())
    };
    eventually_or("the reminder to call the actor back", PATIENCE, fired, || a.logs()).await;
}

/// daprd reads an app's actor types once per run: an app that comes back
/// hosting another type gets no calls for it until daprd's runtime
/// restarts. Given daprd's pid file, dialbackd sees the new type (it asks
/// the app's `/dapr/config` on each channel and keeps what daprd was told)
/// and sends daprd SIGHUP; the new type's actors then live in the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_actor_type_reaches_the_app_when_dialbackd_reloads_daprd() {
    let pid_dir = tempfile::tempdir().expect("temp dir");
    let pid_file = pid_dir.path().join("daprd.pid");
    let flag = ["--bridge-reload-daprd-pid-file".to_string(), pid_file.display().to_string()];
    let mut a = Actors::start("Counter", &flag).await;
    std::fs::write(&pid_file, format!("{}\n", a.daprd.pid())).expect("write daprd's pid file");
    assert_eq!(a.call("Counter", "c1", "first").await["calls"], 1);

    a.app.kill().await;
    a.app = Actors::app(&a.sc, "Timer").await;
    eventually("dialbackd to send daprd SIGHUP for actor type Timer", PATIENCE, || async {
        a.sc.log().lines().any(|l| l.contains("sent daprd SIGHUP") && l.contains(r#"["Timer"]"#)).then_some(())
    })
    .await;
    a.wait_hosting("Timer").await;
    let got = a.call("Timer", "t1", "after the reload").await;
    assert_eq!((got["type"].as_str(), got["calls"].as_i64()), (Some("Timer"), Some(1)), "{got}");
}
