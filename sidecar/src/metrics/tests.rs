//! Unit tests of the metrics: every one registers and encodes, labels stay bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn text(m: &Metrics, up: Option<Transport>) -> String {
    String::from_utf8(m.encode(up)).unwrap()
}

#[test]
fn every_metric_registers_and_encodes() {
    let m = Metrics::new("app").unwrap();
    m.invoked("app", 0, Duration::from_millis(3));
    m.http.request_count.with_label_values(&["app", "POST", "/v1.0/invoke/app/method/echo", "200"]).inc();
    let t = text(&m, Some(Transport::Quic));
    assert!(t.contains("dialback_channels_up{transport=\"quic\"} 1"), "{t}");
    assert!(t.contains("dialback_channels_up{transport=\"tcp\"} 0"), "{t}");
    assert!(
        t.contains(
            "dapr_runtime_service_invocation_req_sent_total{app_id=\"app\",dst_app_id=\"app\",type=\"unary\"} 1"
        ),
        "{t}"
    );
    assert!(t.contains("dapr_runtime_service_invocation_res_recv_latency_ms_bucket{app_id=\"app\",src_app_id=\"app\",status=\"0\",le=\"4\"} 1"), "{t}");
    assert!(t.contains("dapr_http_server_request_count{app_id=\"app\",method=\"POST\",path=\"/v1.0/invoke/app/method/echo\",status=\"200\"} 1"), "{t}");
    let t = text(&m, None);
    assert!(t.contains("dialback_channels_up{transport=\"quic\"} 0"), "{t}");
}

#[test]
fn a_change_of_transport_is_counted_each_way() {
    let m = Metrics::new("app").unwrap();
    m.channel_up(Transport::Quic);
    m.channel_up(Transport::Quic);
    m.channel_up(Transport::TcpTls);
    m.channel_up(Transport::Quic);
    let t = text(&m, None);
    assert!(t.contains("dialback_transport_changes_total{from=\"quic\",to=\"tcp\"} 1"), "{t}");
    assert!(t.contains("dialback_transport_changes_total{from=\"tcp\",to=\"quic\"} 1"), "{t}");
}

#[test]
fn the_label_budget_holds_against_a_flood_of_new_values() {
    let b = LabelBudget::default();
    for i in 0..10_000 {
        let got = b.admit(&format!("/x/{i}"));
        if i < LABEL_BUDGET {
            assert_eq!(got, format!("/x/{i}"));
        } else {
            assert_eq!(got, OTHER);
        }
    }
    // A value admitted before stays itself.
    assert_eq!(b.admit("/x/0"), "/x/0");
}

#[tokio::test]
async fn a_wait_that_times_out_is_counted_and_no_longer_waiting() {
    let m = Metrics::new("app").unwrap();
    assert_eq!(m.waiting_for_channel(async { None::<()> }).await, None);
    assert_eq!(m.waiting_for_channel(async { Some(1) }).await, Some(1));
    let t = text(&m, None);
    assert!(t.contains("dialback_channel_wait_timeouts_total 1"), "{t}");
    assert!(t.contains("dialback_calls_waiting_for_channel 0"), "{t}");
}
