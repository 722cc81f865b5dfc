//! Property tests of what `dialbackd` parses from strangers, disk and its
//! command line: the state-dir files, the HTTP-to-InvokeRequest mapping,
//! and the flags. None may panic; each keeps to its documented bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::test_runner::{Config as PropConfig, RngSeed};

/// A fixed seed and a case count that keeps each property well under a
/// second in a debug build.
fn config(cases: u32) -> PropConfig {
    PropConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x6469_616c_6261_636b),
        failure_persistence: None,
        ..PropConfig::default()
    }
}

/// The peers and reset-key files of the state dir.
mod statedir {
    use std::net::{SocketAddr, SocketAddrV6};

    use dialback_sidecar::statedir::{MAX_CIDS, MAX_PEERS, format_peers, parse_peers, parse_reset_key};
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Addresses as a peer's: IPv6 ones may carry a scope id, never flow
    /// info (the file format has no place for it, and peers do not use it).
    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            any::<std::net::SocketAddrV4>().prop_map(SocketAddr::V4),
            (any::<std::net::Ipv6Addr>(), any::<u16>(), prop_oneof![Just(0u32), any::<u32>()])
                .prop_map(|(ip, port, scope)| SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope))),
        ]
    }

    fn cid() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..=20)
    }

    /// Lines as found in a peers file someone else may have written.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            addr().prop_map(|a| format!("peer {a}")),
            cid().prop_map(|c| format!("cid {}", c.iter().map(|b| format!("{b:02x}")).collect::<String>())),
            "peer [0-9a-f:.\\[\\]%]{0,48}",
            "cid [0-9a-fA-F+-]{0,48}",
            "cid .{0,44}",
            "(peer|cid)?[ \t\r]?.{0,40}",
            any::<String>(),
        ]
    }

    fn file() -> impl Strategy<Value = String> {
        (vec(line(), 0..400), prop_oneof![Just("\n"), Just("\r\n")]).prop_map(|(lines, eol)| lines.join(eol))
    }

    proptest! {
        #![proptest_config(super::config(256))]

        #[test]
        fn format_then_parse_round_trips(
            peers in vec(addr(), 0..=MAX_PEERS),
            cids in vec(cid(), 0..=MAX_CIDS),
        ) {
            prop_assert_eq!(parse_peers(&format_peers(&peers, &cids)), (peers, cids));
        }

        #[test]
        fn parse_keeps_the_first_within_the_bounds(
            peers in vec(addr(), 0..3 * MAX_PEERS),
            cids in vec(cid(), 0..2 * MAX_CIDS),
        ) {
            let (p, c) = parse_peers(&format_peers(&peers, &cids));
            prop_assert_eq!(&p[..], &peers[..peers.len().min(MAX_PEERS)]);
            prop_assert_eq!(&c[..], &cids[..cids.len().min(MAX_CIDS)]);
        }

        #[test]
        fn arbitrary_text_stays_bounded(text in file()) {
            let (peers, cids) = parse_peers(&text);
            prop_assert!(peers.len() <= MAX_PEERS);
            prop_assert!(cids.len() <= MAX_CIDS);
            prop_assert!(cids.iter().all(|c| c.len() <= 20), "{cids:?}");
            // What we would write back reads back the same.
            prop_assert_eq!(parse_peers(&format_peers(&peers, &cids)), (peers, cids));
        }

        #[test]
        fn arbitrary_bytes_as_lossy_text_stay_bounded(bytes in vec(any::<u8>(), 0..2048)) {
            let (peers, cids) = parse_peers(&String::from_utf8_lossy(&bytes));
            prop_assert!(peers.len() <= MAX_PEERS && cids.len() <= MAX_CIDS);
            prop_assert!(cids.iter().all(|c| c.len() <= 20));
        }

        #[test]
        fn reset_key_is_exactly_32_bytes(bytes in vec(any::<u8>(), 0..70)) {
            match parse_reset_key(&bytes) {
                Some(key) => prop_assert_eq!(&key[..], &bytes[..]),
                None => prop_assert_ne!(bytes.len(), 32),
            }
        }
    }
}

/// The HTTP API's mapping of a call to Dapr's InvokeRequest.
mod invoke {
    use bytes::Bytes;
    use dialback_sidecar::to_invoke_request;
    use http::header::CONTENT_TYPE;
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use tonic::metadata::{Ascii, MetadataKey};

    /// Headers that must never reach the app as metadata.
    const NEVER: &[&str] =
        &["dapr-api-token", "dapr-app-id", "host", "content-length", "connection", "transfer-encoding", "content-type"];

    fn verb() -> impl Strategy<Value = Method> {
        prop_oneof![
            prop::sample::select(vec![
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::CONNECT,
                Method::OPTIONS,
                Method::TRACE,
                Method::PATCH,
            ]),
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
        ]
    }

    fn name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            prop::sample::select(NEVER.to_vec()).prop_map(String::from),
            "grpc-[a-z0-9-]{0,12}",
            "x-[a-z0-9-]{0,12}(-bin)?",
            "[a-z0-9!#$%&'*+.^_`|~-]{1,20}",
        ]
        .prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
    }

    fn value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            "[ -~]{0,40}".prop_map(|v| HeaderValue::from_str(&v).unwrap()),
            vec(any::<u8>(), 0..40).prop_filter_map("not a header value", |v| HeaderValue::from_bytes(&v).ok()),
        ]
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        vec((name(), value()), 0..24).prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(n, v);
            }
            h
        })
    }

    proptest! {
        #![proptest_config(super::config(512))]

        #[test]
        fn carries_the_call_and_filters_the_hop(
            verb in verb(),
            method in any::<String>(),
            query in proptest::option::of(any::<String>()),
            headers in headers(),
            body in vec(any::<u8>(), 0..256),
        ) {
            let (req, md) = to_invoke_request(&verb, &method, query.as_deref(), &headers, Bytes::from(body.clone()));
            prop_assert_eq!(&req.method, &method);
            prop_assert_eq!(req.data.as_ref().map(|d| &d.value[..]), Some(&body[..]));
            let ext = req.http_extension.as_ref().unwrap();
            prop_assert_eq!(&ext.querystring, query.as_deref().unwrap_or_default());
            let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            prop_assert_eq!(&req.content_type, ct);

            let md = md.into_headers();
            for name in md.keys() {
                let n = name.as_str();
                prop_assert!(!NEVER.contains(&n) && !n.starts_with("grpc-"), "{n} reached the metadata");
            }
            for name in headers.keys() {
                let n = name.as_str();
                let sent: Vec<_> = headers.get_all(name).iter().collect();
                let got: Vec<_> = md.get_all(name).iter().collect();
                if NEVER.contains(&n) || n.starts_with("grpc-") || MetadataKey::<Ascii>::from_bytes(n.as_bytes()).is_err() {
                    prop_assert!(got.is_empty(), "{n} reached the metadata");
                } else {
                    prop_assert_eq!(got, sent, "{} not carried as sent", n);
                }
            }
        }
    }
}

/// The command line: `Cli::try_parse_from` then `Config::from_args`, and
/// the duration parser. Written against --app-id and the --callback-*
/// durations only, so that new flags do not break it.
mod flags {
    use std::time::Duration;

    use clap::Parser;
    use dialback_sidecar::config::{MAX_DURATION, parse_duration};
    use dialback_sidecar::{Cli, Config, ConfigError};
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn parse(args: &[String]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("dialbackd".to_string()).chain(args.iter().cloned()))
            .map_err(|e| e.to_string())?;
        Config::from_args(cli.run).map_err(|e| e.to_string())
    }

    fn with_app_id(id: &str, rest: &[String]) -> Result<Config, ConfigError> {
        let args = ["dialbackd".to_string(), format!("--app-id={id}"), "--state-dir=/nonexistent".to_string()];
        let cli = Cli::try_parse_from(args.into_iter().chain(rest.iter().cloned())).unwrap();
        Config::from_args(cli.run)
    }

    fn arg() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("--app-id".to_string()),
            Just("--callback-wait-timeout".to_string()),
            Just("--callback-handshake-timeout".to_string()),
            Just("--callback-token-ttl".to_string()),
            Just("--enable-callback-channel".to_string()),
            Just("certs".to_string()),
            Just("init".to_string()),
            Just("--help".to_string()),
            "--[a-z-]{1,30}(=.{0,12})?",
            "-[a-zA-Z]",
            "[0-9]{1,6}(ms|s|m|h)?",
            any::<String>(),
        ]
    }

    fn unit() -> impl Strategy<Value = (&'static str, u64)> {
        prop::sample::select(vec![("ms", 1u64), ("s", 1000), ("", 1000), ("m", 60_000)])
    }

    proptest! {
        #![proptest_config(super::config(256))]

        #[test]
        fn arbitrary_arguments_never_panic(args in vec(arg(), 0..8)) {
            let _ = parse(&args);
        }

        #[cfg(unix)]
        #[test]
        fn arbitrary_os_arguments_never_panic(args in vec(vec(any::<u8>(), 0..16), 0..6)) {
            use std::os::unix::ffi::OsStringExt;
            let args = std::iter::once("dialbackd".into()).chain(args.into_iter().map(std::ffi::OsString::from_vec));
            if let Ok(cli) = Cli::try_parse_from(args) {
                let _ = Config::from_args(cli.run);
            }
        }

        #[test]
        fn arbitrary_durations_never_panic(s in any::<String>()) {
            let _ = parse_duration(&s);
        }

        #[test]
        fn near_durations_never_panic(s in prop_oneof![
            "[ ]?[0-9.]{0,30}(ms|s|m|h|e[0-9]|µs)?[ ]?",
            "[1-9][0-9]{8,21}(ms|s|m)?",
        ]) {
            if let Ok(d) = parse_duration(&s) {
                // Whatever is accepted can be used as a deadline from now on.
                prop_assert!(d <= MAX_DURATION, "{s:?} gave {d:?}");
                prop_assert!(std::time::Instant::now().checked_add(d).is_some(), "{s:?} gave {d:?}");
                prop_assert!(tokio::time::Instant::now().checked_add(d).is_some(), "{s:?} gave {d:?}");
            }
        }

        #[test]
        fn whole_durations_parse_exactly(n in 0u64..1_000_000_000, (unit, ms) in unit()) {
            let want = Duration::from_millis(n * ms);
            match parse_duration(&format!("{n}{unit}")) {
                Ok(d) => prop_assert_eq!(d, want),
                Err(e) => prop_assert!(want > MAX_DURATION, "{n}{unit}: {e}"),
            }
        }

        #[test]
        fn duration_flags_carry_their_value(n in 0u64..10_000_000, (unit, ms) in unit()) {
            let value = format!("{n}{unit}");
            let want = Duration::from_millis(n * ms);
            for (flag, got) in [
                ("--callback-wait-timeout", (|c: &Config| c.wait_timeout) as fn(&Config) -> Duration),
                ("--callback-handshake-timeout", |c: &Config| c.timeouts.handshake),
                ("--callback-token-ttl", |c: &Config| c.token_ttl),
            ] {
                match with_app_id("app", &[format!("{flag}={value}")]) {
                    Ok(c) => prop_assert_eq!(got(&c), want),
                    Err(ConfigError::ZeroDuration(f)) => prop_assert!(n == 0 && f == flag, "{f}"),
                    Err(e) => prop_assert!(false, "{flag}={value}: {e}"),
                }
            }
        }

        #[test]
        fn app_id_outside_the_charset_is_refused(id in prop_oneof![
            ".{0,300}",
            "[A-Za-z0-9._-]{0,20}[^A-Za-z0-9._-][A-Za-z0-9._-]{0,20}",
            "[A-Za-z0-9._-]{257,300}",
        ]) {
            let ok = (1..=256).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            match with_app_id(&id, &[]) {
                Err(ConfigError::BadAppId(got)) => prop_assert!(!ok && got == id, "{id:?} refused"),
                Err(ConfigError::NoAppId) => prop_assert!(false, "--app-id={id:?} not seen"),
                _ => prop_assert!(ok, "{id:?} accepted"),
            }
        }

        #[test]
        fn app_id_inside_the_charset_is_accepted(id in "[A-Za-z0-9._-]{1,256}") {
            prop_assert!(!matches!(with_app_id(&id, &[]), Err(ConfigError::BadAppId(_) | ConfigError::NoAppId)));
        }
    }

    /// Regression: a duration that cannot be added to the clock was
    /// accepted, then panicked the accept task of every callback connection
    /// (`--callback-handshake-timeout 10000000000000000000s`).
    #[test]
    fn absurd_durations_are_refused() {
        for s in ["10000000000000000000s", "18446744073709551615s", "300000000000000000m", "1e30s"] {
            let got = parse_duration(s);
            assert!(got.is_err(), "{s:?} gave {got:?}");
        }
        let max = MAX_DURATION.as_secs();
        assert_eq!(parse_duration(&format!("{max}s")), Ok(MAX_DURATION));
        assert!(parse_duration(&format!("{}s", max + 1)).is_err());
        let cli =
            Cli::try_parse_from(["dialbackd", "--app-id=a", "--callback-handshake-timeout=10000000000000000000s"]);
        assert!(cli.is_err(), "the flag must be refused before anything is bound");
    }
}
