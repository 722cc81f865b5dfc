//! The dial plan, a pure core: from the sidecar's ConnectAppCallback answer
//! and the app's options, what to dial, over which transports, trusting
//! what, with which credential ([`from_answer`]); and from what the last
//! channel left behind, whether to redial the same sidecar directly first
//! ([`redial`]) and what to do when that fails ([`after_redial`]). No I/O:
//! the runner resolves the target, builds TLS and dials.

use dialback_certs::{Fingerprint, ServerTrust};
use dialback_channel::{Credential, DialError, RefusalReason, Transports};
use dialback_proto::runtime::ConnectAppCallbackResponse;

use crate::error::Error;
use crate::options::{ChannelOptions, CredentialChoice, TrustChoice};

/// What to dial for one channel, as the answer and the options decide.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// `host:port` to resolve and dial.
    pub target: String,
    /// The transports both ends share, in the app's order of preference.
    pub transports: Transports,
    /// The transports the sidecar offered (remembered for redials).
    pub offered: Transports,
    /// How to trust the sidecar's certificate.
    pub trust: ServerTrust,
    /// The TLS server name.
    pub server_name: String,
    /// The app-id to name in the hello.
    pub app_id: String,
    /// The credential to present.
    pub credential: Credential,
}

/// Plans a dial from `answer` over the `allowed` transports. `api_host` is
/// the host of the sidecar's API endpoint (where to dial when the sidecar
/// advertises no address) and `api_token` the app's `DAPR_API_TOKEN`.
/// Fails when the answer cannot be used: no transport in common, a bad
/// port or fingerprint.
pub(crate) fn from_answer(
    answer: &ConnectAppCallbackResponse,
    allowed: Transports,
    options: &ChannelOptions,
    api_host: Result<String, Error>,
    api_token: Option<&str>,
) -> Result<Plan, Error> {
    let offered = Transports::from_proto(&answer.transports);
    let transports = offered.intersect(allowed);
    if transports.is_empty() {
        return Err(Error::BadAnswer(format!("the sidecar offers {offered}, this app allows {allowed}")));
    }
    let target = if answer.address.is_empty() {
        let host = api_host?;
        let port = u16::try_from(answer.port).map_err(|_| Error::BadAnswer(format!("port {}", answer.port)))?;
        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
    } else {
        answer.address.clone()
    };
    let trust = match &options.trust {
        TrustChoice::FromSidecar => ServerTrust::Pinned(
            Fingerprint::from_slice(&answer.cert_sha256).map_err(|e| Error::BadAnswer(e.to_string()))?,
        ),
        TrustChoice::Roots(r) => ServerTrust::Roots(r.clone()),
    };
    let server_name = if answer.server_name.is_empty() {
        dialback_certs::DEFAULT_SERVER_NAME.to_string()
    } else {
        answer.server_name.clone()
    };
    let credential = match &options.credential {
        CredentialChoice::OneTimeToken => Credential::OneTimeToken(answer.token.clone()),
        CredentialChoice::ApiToken => Credential::ApiToken(api_token.unwrap_or_default().to_string()),
        CredentialChoice::ClientCertificate(_) => Credential::ClientCertificate(true),
    };
    Ok(Plan { target, transports, offered, trust, server_name, app_id: answer.app_id.clone(), credential })
}

/// What the last channel left for a direct redial of the same sidecar process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remembered {
    /// The transports that sidecar offered.
    pub offered: Transports,
    /// Its reconnect token (empty: it gave none).
    pub reconnect_token: String,
    /// Its certificate's SHA-256, as ConnectAppCallback reported it: a
    /// different one from the API means a different sidecar.
    pub fingerprint: Vec<u8>,
}

/// A direct redial: over which transports, with which credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Redial {
    /// The transports the sidecar offered and the caller allows.
    pub transports: Transports,
    /// The reconnect token.
    pub credential: Credential,
}

/// Whether to redial the remembered sidecar directly, over `allowed`
/// transports, before (and while) asking ConnectAppCallback: only with a
/// reconnect token and a transport in common.
pub(crate) fn redial(remembered: Option<&Remembered>, allowed: Transports) -> Option<Redial> {
    let r = remembered.filter(|r| !r.reconnect_token.is_empty())?;
    let transports = r.offered.intersect(allowed);
    (!transports.is_empty())
        .then(|| Redial { transports, credential: Credential::ReconnectToken(r.reconnect_token.clone()) })
}

/// What to do when a direct redial failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterRedial {
    /// The sidecar said the slot is taken (a standby hello): that is the
    /// answer, a fresh token would get the same.
    GiveUp,
    /// Forget the remembered sidecar and dial what ConnectAppCallback says
    /// (e.g. the sidecar restarted and no longer knows the token).
    UseAnswer,
}

/// Decides what follows a failed direct redial.
pub(crate) fn after_redial(e: &Error) -> AfterRedial {
    match e {
        Error::Dial(DialError::Refused { reason: RefusalReason::SlotTaken, .. }) => AfterRedial::GiveUp,
        _ => AfterRedial::UseAnswer,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use dialback_channel::Transport;

    use super::*;

    fn answer() -> ConnectAppCallbackResponse {
        ConnectAppCallbackResponse {
            port: 50002,
            transports: Transports::AUTO.to_proto(),
            token: "ott".into(),
            cert_sha256: vec![7; 32],
            app_id: "echo".into(),
            ..Default::default()
        }
    }

    fn host() -> Result<String, Error> {
        Ok("127.0.0.1".into())
    }

    #[test]
    fn the_default_plan_pins_the_answer_and_presents_its_token() {
        let p = from_answer(&answer(), Transports::AUTO, &ChannelOptions::default(), host(), None).unwrap();
        assert_eq!(p.target, "127.0.0.1:50002", "no advertised address: the API's host and the channel port");
        assert_eq!(p.transports, Transports::AUTO);
        assert_eq!(p.offered, Transports::AUTO);
        assert!(matches!(p.trust, ServerTrust::Pinned(f) if f.0 == [7; 32]));
        assert_eq!(p.server_name, dialback_certs::DEFAULT_SERVER_NAME);
        assert_eq!(p.app_id, "echo");
        assert_eq!(p.credential, Credential::OneTimeToken("ott".into()));
    }

    #[test]
    fn an_advertised_address_and_name_win_and_ipv6_hosts_get_brackets() {
        let mut a = answer();
        a.address = "sidecar.example:7000".into();
        a.server_name = "sidecar.example".into();
        let p =
            from_answer(&a, Transports::AUTO, &ChannelOptions::default(), Err(Error::Endpoint("unused".into())), None)
                .unwrap();
        assert_eq!((p.target.as_str(), p.server_name.as_str()), ("sidecar.example:7000", "sidecar.example"));
        let p = from_answer(&answer(), Transports::AUTO, &ChannelOptions::default(), Ok("::1".into()), None).unwrap();
        assert_eq!(p.target, "[::1]:50002");
    }

    #[test]
    fn the_transports_are_what_both_ends_share() {
        let options = ChannelOptions::default();
        let mut a = answer();
        assert_eq!(from_answer(&a, Transports::QUIC, &options, host(), None).unwrap().transports, Transports::QUIC);
        a.transports = vec![Transport::TcpTls.to_proto() as i32];
        match from_answer(&a, Transports::QUIC, &options, host(), None) {
            Err(Error::BadAnswer(m)) => assert!(m.contains("offers tcp") && m.contains("allows quic"), "{m}"),
            other => panic!("no transport in common: {other:?}"),
        }
    }

    #[test]
    fn the_credential_follows_the_choice() {
        let api = ChannelOptions { credential: CredentialChoice::ApiToken, ..ChannelOptions::default() };
        assert_eq!(
            from_answer(&answer(), Transports::AUTO, &api, host(), Some("s3")).unwrap().credential,
            Credential::ApiToken("s3".into())
        );
        assert_eq!(
            from_answer(&answer(), Transports::AUTO, &api, host(), None).unwrap().credential,
            Credential::ApiToken(String::new())
        );
        let roots = ChannelOptions {
            trust: TrustChoice::Roots(std::sync::Arc::new(rustls::RootCertStore::empty())),
            ..ChannelOptions::default()
        };
        assert!(matches!(
            from_answer(&answer(), Transports::AUTO, &roots, host(), None).unwrap().trust,
            ServerTrust::Roots(_)
        ));
    }

    #[test]
    fn unusable_answers_are_refused() {
        let mut a = answer();
        a.port = 70000;
        assert!(matches!(
            from_answer(&a, Transports::AUTO, &ChannelOptions::default(), host(), None),
            Err(Error::BadAnswer(_))
        ));
        let mut a = answer();
        a.cert_sha256 = vec![1, 2, 3];
        assert!(matches!(
            from_answer(&a, Transports::AUTO, &ChannelOptions::default(), host(), None),
            Err(Error::BadAnswer(_))
        ));
        let bad_host = Err(Error::Endpoint("x".into()));
        assert!(matches!(
            from_answer(&answer(), Transports::AUTO, &ChannelOptions::default(), bad_host, None),
            Err(Error::Endpoint(_))
        ));
    }

    #[test]
    fn a_redial_needs_a_token_and_a_transport_in_common() {
        let r = Remembered { offered: Transports::AUTO, reconnect_token: "rt".into(), fingerprint: vec![1] };
        assert_eq!(
            redial(Some(&r), Transports::QUIC),
            Some(Redial { transports: Transports::QUIC, credential: Credential::ReconnectToken("rt".into()) })
        );
        assert_eq!(redial(None, Transports::AUTO), None);
        let no_token = Remembered { reconnect_token: String::new(), ..r.clone() };
        assert_eq!(redial(Some(&no_token), Transports::AUTO), None);
        let tcp_only = Remembered { offered: Transports::TCP, ..r };
        assert_eq!(redial(Some(&tcp_only), Transports::QUIC), None);
    }

    #[test]
    fn only_a_taken_slot_ends_the_attempt_after_a_failed_redial() {
        let refused = |reason| Error::Dial(DialError::Refused { reason, message: String::new() });
        assert_eq!(after_redial(&refused(RefusalReason::SlotTaken)), AfterRedial::GiveUp);
        assert_eq!(after_redial(&refused(RefusalReason::BadCredential)), AfterRedial::UseAnswer);
        assert_eq!(after_redial(&Error::Timeout(std::time::Duration::from_secs(1))), AfterRedial::UseAnswer);
    }
}
