//! What the SDK reports about its channel, through the [`metrics`] facade:
//! the app has no listening socket, so the app decides where they go (a
//! push gateway, OTLP, its own log). Install any `metrics` recorder (e.g.
//! `metrics-exporter-prometheus`) and they flow; without one they cost a
//! few atomic loads. [`describe`] registers their descriptions and units.

use std::time::Duration;

use dialback_channel::{Transport, Transports};

/// Dials attempted, by transport (a dial racing QUIC and TCP counts one each).
pub const DIAL_ATTEMPTS: &str = "dialback_sdk_dial_attempts_total";
/// Channel attempts that gave no channel (the sidecar away, refused, timed out).
pub const DIAL_FAILURES: &str = "dialback_sdk_dial_failures_total";
/// Channels opened, by transport (the first, reconnects, moves to a better transport).
pub const CHANNELS_OPENED: &str = "dialback_sdk_channels_opened_total";
/// Channels back in service after one was lost.
pub const RECONNECTS: &str = "dialback_sdk_reconnects_total";
/// QUIC connections moved to a new socket, by cause (`rebind`: the app said
/// the network changed; `network`: the SDK saw it change (Linux netlink);
/// `late_pings`: the SDK saw the path go quiet).
pub const MIGRATIONS: &str = "dialback_sdk_migrations_total";
/// 1 while a channel is in service, else 0.
pub const CONNECTED: &str = "dialback_sdk_connected";
/// How long each outage lasted, from losing a channel to the next in
/// service (its sum is the time spent disconnected).
pub const DISCONNECTED_SECONDS: &str = "dialback_sdk_disconnected_seconds";

/// Registers the descriptions and units with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(DIAL_ATTEMPTS, "Dials attempted, by transport.");
    metrics::describe_counter!(DIAL_FAILURES, "Channel attempts that gave no channel.");
    metrics::describe_counter!(CHANNELS_OPENED, "Channels opened, by transport.");
    metrics::describe_counter!(RECONNECTS, "Channels back in service after one was lost.");
    metrics::describe_counter!(MIGRATIONS, "QUIC connections moved to a new socket, by cause.");
    metrics::describe_gauge!(CONNECTED, "1 while a channel is in service.");
    metrics::describe_histogram!(
        DISCONNECTED_SECONDS,
        metrics::Unit::Seconds,
        "Outages, from losing a channel to the next in service."
    );
}

pub(crate) fn dialing(transports: Transports) {
    for t in transports.iter() {
        metrics::counter!(DIAL_ATTEMPTS, "transport" => t.as_str()).increment(1);
    }
}

pub(crate) fn dial_failed() {
    metrics::counter!(DIAL_FAILURES).increment(1);
}

pub(crate) fn opened(t: Transport) {
    metrics::counter!(CHANNELS_OPENED, "transport" => t.as_str()).increment(1);
}

pub(crate) fn in_service(after_outage: Option<Duration>) {
    metrics::gauge!(CONNECTED).set(1.0);
    if let Some(d) = after_outage {
        metrics::counter!(RECONNECTS).increment(1);
        metrics::histogram!(DISCONNECTED_SECONDS).record(d.as_secs_f64());
    }
}

pub(crate) fn out_of_service() {
    metrics::gauge!(CONNECTED).set(0.0);
}

pub(crate) fn migrated(cause: &'static str) {
    metrics::counter!(MIGRATIONS, "cause" => cause).increment(1);
}
