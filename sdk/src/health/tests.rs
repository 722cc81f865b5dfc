//! Tests of the channel health core.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Counts with `n` datagrams received and nothing sent.
fn rx(n: u64) -> Option<PathCounts> {
    rx_tx(n, 0)
}

/// Counts with `n` datagrams received and `sent` ack-eliciting frames sent.
fn rx_tx(n: u64, sent: u64) -> Option<PathCounts> {
    Some(PathCounts { received: n, eliciting_sent: sent, rtt: 50 * MS })
}

fn keep_alive() -> KeepAlive {
    KeepAlive { interval: Duration::from_secs(5), idle_timeout: Duration::from_secs(15) }
}

#[test]
fn an_overdue_ping_asks_the_sidecar_before_anything_else_and_again_while_silent() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    // Default interval 2 s, jitter unknown: late after 2.025 s, then every 500 ms.
    assert_eq!(h.check(t0 + 2024 * MS, None), Verdict::Healthy);
    assert_eq!(h.check(t0 + 2025 * MS, None), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 2400 * MS, None), Verdict::Healthy, "not again at once");
    assert_eq!(h.poll_timeout(), t0 + 2525 * MS, "next: ask again");
    assert_eq!(h.check(t0 + 2525 * MS, None), Verdict::AskSidecar);
    assert_eq!(h.poll_timeout(), t0 + 3025 * MS);
    // Both lines passed at once: ask first, then move.
    let mut h = Health::new(keep_alive(), t0);
    assert_eq!(h.check(t0 + 8 * S, None), Verdict::AskSidecar);
    assert_eq!(h.poll_timeout(), t0 + 7 * S);
    assert_eq!(h.check(t0 + 8 * S, None), Verdict::MoveSocket { nth: 1 });
}

#[test]
fn quiet_within_the_interval_is_healthy() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
    assert_eq!(h.check(t0, None), Verdict::Healthy);
    assert_eq!(h.check(t0 + 2 * S, None), Verdict::Healthy);
}

#[test]
fn a_late_ping_moves_the_socket_once_then_the_channel_dies() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    // Suspect after 2 + 5 = 7 s, dead after 2 + 15 = 17 s.
    assert_eq!(h.check(t0 + 7 * S, None), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 7 * S, None), Verdict::MoveSocket { nth: 1 });
    // Once per silence: the same silence does not move it again (the
    // sidecar is asked again, though).
    assert_eq!(h.check(t0 + 7200 * MS, None), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 7500 * MS, "next: ask again");
    let mut t = 7500;
    while t < 17000 {
        assert_eq!(h.check(t0 + t * MS, None), Verdict::AskSidecar, "at {t} ms");
        t += 500;
    }
    assert_eq!(h.check(t0 + 16900 * MS, None), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 17 * S, "next: the dead line");
    match h.check(t0 + 17 * S, None) {
        Verdict::Redial(why) => assert!(why.contains("no Ping"), "{why}"),
        v => panic!("17 s of silence: {v:?}"),
    }
}

#[test]
fn a_ping_ends_the_silence_and_a_new_one_is_suspected_again() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    assert_eq!(h.check(t0 + 7 * S, None), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 7 * S, None), Verdict::MoveSocket { nth: 1 });
    h.on_ping(t0 + 8 * S, None, None);
    assert_eq!(h.poll_timeout(), t0 + 10025 * MS);
    assert_eq!(h.check(t0 + 10 * S, None), Verdict::Healthy);
    assert_eq!(h.check(t0 + 10025 * MS, None), Verdict::AskSidecar, "a new silence is suspected anew");
    assert_eq!(h.check(t0 + 15 * S, None), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 15 * S, None), Verdict::MoveSocket { nth: 1 });
}

#[test]
fn the_sidecars_interval_sets_the_lines() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    h.on_ping(t0, Some(Duration::from_secs(20)), None);
    // Late after 20.025 s (asked every 5 s), suspect after 25 s, dead after 35 s.
    assert_eq!(h.poll_timeout(), t0 + 20025 * MS);
    assert_eq!(h.check(t0 + 20 * S, None), Verdict::Healthy);
    assert_eq!(h.check(t0 + 20025 * MS, None), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 25 * S, None), Verdict::MoveSocket { nth: 1 });
    assert!(matches!(h.check(t0 + 35 * S, None), Verdict::Redial(_)));
    // No interval said: back to the default.
    h.on_ping(t0 + 40 * S, None, None);
    assert_eq!(h.poll_timeout(), t0 + 42025 * MS);
}

#[test]
fn an_older_ping_never_moves_the_clock_back() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0 + 10 * S);
    h.on_ping(t0, None, None);
    assert_eq!(h.poll_timeout(), t0 + 12025 * MS);
}

#[test]
fn the_margin_follows_the_pings_jitter_within_bounds() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    // Regular Pings (2 ms of jitter): the floor, 25 ms.
    h.on_ping(t0, None, Some(2 * MS));
    assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
    // A wobbly path (30 ms): four deviations, 120 ms.
    h.on_ping(t0, None, Some(30 * MS));
    assert_eq!(h.poll_timeout(), t0 + 2120 * MS);
    assert_eq!(h.check(t0 + 2119 * MS, None), Verdict::Healthy);
    assert_eq!(h.check(t0 + 2120 * MS, None), Verdict::AskSidecar);
    // A wild one (1 s): at most a quarter interval.
    let mut h = Health::new(keep_alive(), t0);
    h.on_ping(t0, None, Some(S));
    assert_eq!(h.poll_timeout(), t0 + 2500 * MS);
}

#[test]
fn on_quic_a_silent_path_is_nudged_until_anything_arrives() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    assert_eq!(h.check(t0 + S, rx(10)), Verdict::Healthy);
    // Datagrams came since the last look: look again a nudge interval on.
    for t in [1100, 1200, 1300] {
        assert_eq!(h.poll_timeout(), t0 + t * MS);
        assert_eq!(h.check(t0 + t * MS, rx(10)), Verdict::Healthy);
    }
    // A look a nudge interval before the Ping is due notes the count.
    assert_eq!(h.poll_timeout(), t0 + 1925 * MS);
    assert_eq!(h.check(t0 + 1925 * MS, rx(10)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
    // Overdue: ask first, then move at once (nothing came for 1 s).
    assert_eq!(h.check(t0 + 2025 * MS, rx(10)), Verdict::AskSidecar);
    assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
    assert_eq!(h.check(t0 + 2025 * MS, rx(10)), Verdict::MoveSocket { nth: 1 });
    // Again every 100 ms (a twentieth of the 2 s interval) while silent.
    assert_eq!(h.poll_timeout(), t0 + 2125 * MS);
    assert_eq!(h.check(t0 + 2124 * MS, rx(10)), Verdict::Healthy);
    assert_eq!(h.check(t0 + 2125 * MS, rx(10)), Verdict::MoveSocket { nth: 2 });
    // A datagram came: the path is not silent; wait a whole interval again.
    assert_eq!(h.check(t0 + 2225 * MS, rx(11)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 2325 * MS);
    assert_eq!(h.check(t0 + 2325 * MS, rx(11)), Verdict::MoveSocket { nth: 3 });
    // A Ping ends the silence, and the moves.
    h.on_ping(t0 + 2400 * MS, None, None);
    assert_eq!(h.check(t0 + 2400 * MS, rx(12)), Verdict::Healthy);
    for t in [2500, 2600, 2700] {
        assert_eq!(h.check(t0 + t * MS, rx(12)), Verdict::Healthy);
    }
    assert_eq!(h.poll_timeout(), t0 + 4325 * MS, "the look before the next Ping is due");
    assert_eq!(h.check(t0 + 4325 * MS, rx(12)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 4425 * MS);
    assert_eq!(h.check(t0 + 4425 * MS, rx(12)), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 4425 * MS, rx(12)), Verdict::MoveSocket { nth: 1 }, "a new silence counts anew");
}

#[test]
fn frames_left_unanswered_move_the_socket_before_the_ping_is_due() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0).counting(rx_tx(5, 5));
    // Calls come and the app answers: busy, looked at every 100 ms.
    assert_eq!(h.check(t0 + 100 * MS, rx_tx(9, 8)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 200 * MS);
    // Nothing more comes; the app had sent more: unanswered since 200 ms.
    assert_eq!(h.check(t0 + 200 * MS, rx_tx(9, 9)), Verdict::Healthy);
    // Quiet after three round trips and the ACK delay, at least 250 ms
    // (looked at every 100 ms until then).
    assert_eq!(h.poll_timeout(), t0 + 300 * MS);
    assert_eq!(h.check(t0 + 449 * MS, rx_tx(9, 11)), Verdict::Healthy);
    assert_eq!(h.check(t0 + 450 * MS, rx_tx(9, 11)), Verdict::MoveSocket { nth: 1 });
    assert!(!h.pings_overdue(t0 + 450 * MS), "moved before the Ping was due");
    // Again every nudge interval while nothing comes.
    assert_eq!(h.poll_timeout(), t0 + 550 * MS);
    assert_eq!(h.check(t0 + 550 * MS, rx_tx(9, 12)), Verdict::MoveSocket { nth: 2 });
    // Something came: no more moves.
    assert_eq!(h.check(t0 + 650 * MS, rx_tx(10, 12)), Verdict::Healthy);
    for t in [750, 850] {
        assert_eq!(h.poll_timeout(), t0 + t * MS, "looks for a quiet interval after datagrams came");
        assert_eq!(h.check(t0 + t * MS, rx_tx(10, 12)), Verdict::Healthy);
    }
    assert_eq!(h.poll_timeout(), t0 + 950 * MS);
    assert_eq!(h.check(t0 + 950 * MS, rx_tx(10, 12)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 1925 * MS, "idle: next, the look before the Ping is due");
    // Frames sent a while after the last datagram, seen by those looks.
    let mut h = Health::new(keep_alive(), t0).counting(rx_tx(5, 5));
    assert_eq!(h.check(t0 + 100 * MS, rx_tx(5, 5)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 200 * MS);
    assert_eq!(h.check(t0 + 200 * MS, rx_tx(5, 6)), Verdict::Healthy, "a probe went out: unanswered");
    assert_eq!(h.poll_timeout(), t0 + 300 * MS);
    assert_eq!(h.check(t0 + 450 * MS, rx_tx(5, 6)), Verdict::MoveSocket { nth: 1 });

    // Nothing sent, nothing received: an idle channel is not quiet.
    let mut h = Health::new(keep_alive(), t0).counting(rx_tx(5, 5));
    for t in (100..2000).step_by(100) {
        assert_eq!(h.check(t0 + t * MS, rx_tx(5, 5)), Verdict::Healthy, "at {t} ms");
    }
    // A slow path waits longer: 3 x 1.2 s + 25 ms.
    let slow = |n, sent| Some(PathCounts { received: n, eliciting_sent: sent, rtt: 1200 * MS });
    let mut h = Health::new(keep_alive(), t0).counting(slow(5, 5));
    assert_eq!(h.check(t0 + 100 * MS, slow(5, 6)), Verdict::Healthy);
    assert!(h.poll_timeout() < t0 + 2025 * MS, "looks come before the Ping is due");
    assert_eq!(h.check(t0 + 1900 * MS, slow(5, 6)), Verdict::Healthy);
}

#[test]
fn a_path_silent_before_the_ping_is_due_is_nudged_when_it_is_overdue() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    // A Ping interval in: the first look learns that QUIC counts datagrams.
    h.on_ping(t0 + 2 * S, None, None);
    assert_eq!(h.check(t0 + 2025 * MS, rx(100)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 2125 * MS, "datagrams came: a look a nudge interval on");
    assert_eq!(h.check(t0 + 2125 * MS, rx(100)), Verdict::Healthy);
    assert_eq!(h.check(t0 + 2225 * MS, rx(100)), Verdict::Healthy);
    assert_eq!(h.check(t0 + 2325 * MS, rx(100)), Verdict::Healthy);
    // The next Ping is due at 4 s; a look at 3.925 s notes the count.
    assert_eq!(h.poll_timeout(), t0 + 3925 * MS);
    assert_eq!(h.check(t0 + 3925 * MS, rx(140)), Verdict::Healthy);
    // Nothing arrived since (the path died before then): ask, and move at once.
    assert_eq!(h.check(t0 + 4025 * MS, rx(140)), Verdict::AskSidecar);
    assert_eq!(h.poll_timeout(), t0 + 4025 * MS);
    assert_eq!(h.check(t0 + 4025 * MS, rx(140)), Verdict::MoveSocket { nth: 1 });
    // Had datagrams still come in that last interval, it would wait one.
    let mut h = Health::new(keep_alive(), t0);
    h.on_ping(t0 + 2 * S, None, None);
    assert_eq!(h.check(t0 + 2025 * MS, rx(100)), Verdict::Healthy);
    assert_eq!(h.check(t0 + 3925 * MS, rx(140)), Verdict::Healthy);
    assert_eq!(h.check(t0 + 4025 * MS, rx(150)), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 4025 * MS, rx(150)), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 4125 * MS);
    // A channel whose transport counts makes that look in its first interval too.
    let mut h = Health::new(keep_alive(), t0).counting(rx(7));
    assert_eq!(h.poll_timeout(), t0 + 100 * MS, "first, the looks of a quiet interval after the start");
    for t in [100, 200, 300] {
        assert_eq!(h.check(t0 + t * MS, rx(7)), Verdict::Healthy);
    }
    assert_eq!(h.poll_timeout(), t0 + 1925 * MS);
    assert_eq!(h.check(t0 + 1925 * MS, rx(9)), Verdict::Healthy);
    assert_eq!(h.check(t0 + 2025 * MS, rx(9)), Verdict::AskSidecar);
    assert_eq!(h.check(t0 + 2025 * MS, rx(9)), Verdict::MoveSocket { nth: 1 });
    assert_eq!(Health::new(keep_alive(), t0).counting(None).poll_timeout(), t0 + 2025 * MS);
    // Without a datagram count (TCP) there is no such look.
    let mut h = Health::new(keep_alive(), t0);
    h.on_ping(t0 + 2 * S, None, None);
    assert_eq!(h.check(t0 + 2025 * MS, None), Verdict::Healthy);
    assert_eq!(h.poll_timeout(), t0 + 4025 * MS);
}

#[test]
fn a_path_that_still_carries_traffic_is_not_nudged() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    // Pings stop, but datagrams keep coming: only the sidecar is asked,
    // and the socket moves once, when the Pings are a keepalive late.
    let mut moves: Vec<(u32, u32)> = vec![];
    let mut t = 2025;
    while t < 7000 {
        if let Verdict::MoveSocket { nth } = h.check(t0 + t * MS, rx(t.into())) {
            moves.push((t, nth));
        }
        t += 50;
    }
    assert_eq!(moves, vec![]);
    assert_eq!(h.check(t0 + 7 * S, rx(7000)), Verdict::MoveSocket { nth: 1 });
    for t in [7050u32, 7100, 7150] {
        assert!(!matches!(h.check(t0 + t * MS, rx(t.into())), Verdict::MoveSocket { .. }), "once, at {t} ms");
    }
    // Without a datagram count (TCP) there are no nudges either.
    let mut h = Health::new(keep_alive(), t0);
    assert_eq!(h.check(t0 + 2025 * MS, None), Verdict::AskSidecar);
    assert_eq!(h.poll_timeout(), t0 + 2525 * MS, "next: ask again, no nudge");
}

#[test]
fn the_nudges_follow_the_ping_interval() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    assert_eq!(h.nudge_every(), 100 * MS);
    h.on_ping(t0, Some(Duration::from_secs(25)), None);
    assert_eq!(h.nudge_every(), 1250 * MS, "the mobile profile's beat");
    h.on_ping(t0, Some(Duration::from_millis(500)), None);
    assert_eq!(h.nudge_every(), 100 * MS, "at least 100 ms");
}

#[test]
fn silence_past_the_dead_line_at_once_is_a_redial_not_a_move() {
    let t0 = Instant::now();
    let mut h = Health::new(keep_alive(), t0);
    assert!(matches!(h.check(t0 + 60 * S, None), Verdict::Redial(_)));
}
