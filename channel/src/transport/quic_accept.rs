//! The sidecar's side of QUIC: the accept loop, and each connection's
//! TLS handshake (offering it early when its resumed session names the
//! app) and hello.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::time::Instant;
use tracing::debug;

use super::quic::{RETRY_ABOVE, alpn, channel_parts, early_connection, negotiated_streams};
use crate::Transport;
use crate::accept::Shared;
use crate::error::AcceptError;
use crate::io::CloseCode;

/// Accepts QUIC connections until the listener stops, each handshake in a
/// task of its own, within the QUIC budget and the per-source bound.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            () = shared.stop.cancelled() => return,
        };
        let peer = incoming.remote_address();
        // Under load, make the client prove its address first (a Retry round
        // trip): spoofed or bare Initials then cost no slot.
        let load = shared.load(Transport::Quic);
        if load >= RETRY_ABOVE && !incoming.remote_address_validated() && incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                debug!(%peer, error = %e, "QUIC Retry failed");
            }
            continue;
        }
        let Some(admitted) = shared.admit(peer, Transport::Quic) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match handshake(incoming, &shared).await {
                Ok(()) => {}
                // An app's dial that lost its own race (see `race`): not a refusal.
                Err(AcceptError::Quic(e)) if abandoned(&e) => {
                    shared.events.refused(Transport::Quic, crate::events::Refused::Abandoned);
                    debug!(%peer, "a QUIC connection was given up by its app before its hello");
                }
                Err(e) => shared.log_refused(peer, Transport::Quic, &e),
            }
            drop(admitted);
        });
    }
}

/// Whether the peer closed the connection with code 0 (dropped it) before
/// its hello: what an app does with the attempts that lost a dial's race.
pub(super) fn abandoned(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner() == CloseCode::Done as u64,
        // Closed before 1-RTT keys: sent as a transport close, APPLICATION_ERROR.
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR,
        _ => false,
    }
}

/// What the TLS handshake gave: the connection, whether its session was
/// resumed with a client certificate, and, when the connection has streams
/// per call, the channel id it was offered early under and the way to say
/// how its hello went.
type Tls = (quinn::Connection, bool, Option<(u64, tokio::sync::oneshot::Sender<bool>)>);

/// The TLS handshake. Once the ClientHello is read, a flight before the
/// app's Finished, the connection is offered early: with a resumed
/// session whose client certificate names the app, calls may go out in the
/// sidecar's first flight (docs/architecture.md, "The credential in
/// TLS"); otherwise a probe may.
async fn handshake_tls(incoming: quinn::Incoming, shared: &Shared) -> Result<Tls, quinn::ConnectionError> {
    let peer = incoming.remote_address();
    let mut connecting = incoming.accept()?;
    connecting.handshake_data().await?;
    // A server's connection is usable from here, for 0.5-RTT data.
    let (conn, mut done) = match connecting.into_0rtt() {
        Ok(early) => early,
        Err(connecting) => return Ok((connecting.await?, false, None)),
    };
    let certs = conn.peer_identity().and_then(|c| c.downcast::<Vec<CertificateDer<'static>>>().ok());
    // A client certificate known before the handshake's end came with the
    // ClientHello: the session was resumed. Known only once it has ended (a
    // busy task looked late), it may be a full handshake's: not counted as
    // resumed (quinn does not say how a handshake went), though it names
    // the app all the same, having been verified.
    let ended = futures_util::FutureExt::now_or_never(&mut done).is_some();
    let resumed = certs.is_some() && !ended;
    // Offered early with streams per call: to take the waiting calls when
    // the session names the app, else to be probed (see `EarlyChannel`).
    let early = if negotiated_streams(&conn) {
        let names_app = certs.as_ref().and_then(|c| c.first()).is_some_and(|cert| shared.names_app(cert));
        shared.offer_early(early_connection(&conn), peer, names_app)
    } else {
        None
    };
    if !ended {
        done.await;
    }
    match conn.close_reason() {
        Some(e) => Err(e),
        None => Ok((conn, resumed, early)),
    }
}

async fn handshake(incoming: quinn::Incoming, shared: &Shared) -> Result<(), AcceptError> {
    let arrived = Instant::now();
    let deadline = arrived + shared.timeouts.handshake;
    let limit = shared.timeouts.handshake;
    let peer = incoming.remote_address();
    let tls = handshake_tls(incoming, shared);
    let (conn, resumed, early) =
        tokio::time::timeout_at(deadline, tls).await.map_err(|_| AcceptError::Timeout(limit))??;
    let alpn = alpn(&conn);
    let Ok(accepted) = tokio::time::timeout_at(deadline, conn.accept_bi()).await else {
        conn.close(quinn::VarInt::from_u32(CloseCode::Refused as u32), b"no hello within the handshake timeout");
        return Err(AcceptError::Timeout(limit));
    };
    let (mut send, mut recv) = accepted?;
    let certs = conn.peer_identity().and_then(|c| c.downcast::<Vec<CertificateDer<'static>>>().ok());
    let client_cert = certs.as_ref().and_then(|c| c.first());
    let (channel_id, decided) = early.unzip();
    let seen = crate::accept::Seen {
        transport: Transport::Quic,
        peer,
        alpn: alpn.as_deref(),
        client_cert,
        resumed,
        channel_id,
    };
    match crate::accept::exchange(&mut recv, &mut send, &seen, deadline, shared).await {
        Ok(accepted) => {
            // Proven: open the window that was kept small for strangers.
            conn.set_receive_window(quinn::VarInt::from_u32(crate::config::CONN_RECEIVE_WINDOW));
            let api = accepted.api_over_http3();
            if api {
                // The app's HTTP/3 request streams next to the hello's, and
                // its control and QPACK streams.
                conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(crate::http3::API_STREAMS + 1));
                conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(crate::http3::UNI_STREAMS));
            }
            let (io, connection) = channel_parts(conn, send, recv, api);
            crate::accept::deliver(shared, accepted, Transport::Quic, peer, io, connection, arrived).await;
            if let Some(decided) = decided {
                let _ = decided.send(true);
            }
            Ok(())
        }
        Err(e) => {
            // Refused: an early channel of this connection is taken out now,
            // not once the verdict below has reached the app.
            if let Some(decided) = decided {
                let _ = decided.send(false);
            }
            // Let the verdict reach the app before the connection closes.
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            let reason = e.to_string();
            conn.close(quinn::VarInt::from_u32(CloseCode::Refused as u32), reason.as_bytes());
            Err(e)
        }
    }
}
