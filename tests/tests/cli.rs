//! `dialbackd` as an operator meets it: `--help`, `certs init`, and flags
//! that fail before anything is bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use dialback_e2e::binaries;

#[test]
fn help_lists_every_flag_group_with_a_meaning() {
    let out = Command::new(&binaries().dialbackd).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--app-id",
        "--dapr-http-port",
        "--dapr-grpc-port",
        "--dapr-listen-addresses",
        "--app-port",
        "--enable-callback-channel",
        "--callback-channel-port",
        "--callback-transport",
        "--callback-advertise-address",
        "--callback-wait-timeout",
        "--callback-idle-timeout",
        "--dapr-api-token",
        "--callback-client-ca-file",
        "--log-level",
        "--worker-threads",
    ] {
        let line = help.lines().find(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| panic!("{flag} missing"));
        let idx = help.find(line).unwrap();
        // The meaning is on the flag's line or the next one.
        let rest: String = help[idx..].lines().take(2).collect::<Vec<_>>().join(" ");
        assert!(rest.split_whitespace().count() > 3, "{flag} has no meaning: {rest}");
    }
}

#[test]
fn certs_init_writes_a_dev_set_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let run = |force: bool| {
        let mut c = Command::new(&binaries().dialbackd);
        c.args(["certs", "init", "--out"]).arg(&out).args(["--app-id", "echo"]);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let first = run(false);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for f in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client-echo.pem", "client-echo-key.pem"] {
        assert!(out.join(f).exists(), "{f} not written");
    }
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    let again = run(false);
    assert!(!again.status.success(), "a second init must not overwrite silently");
    assert!(!String::from_utf8_lossy(&again.stderr).is_empty());
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), ca, "nothing was overwritten");
    assert!(run(true).status.success());
    // The files are usable: dialbackd starts with them.
    let state = dir.path().join("state");
    let mut sc = Command::new(&binaries().dialbackd);
    sc.args(["--app-id", "echo", "--enable-callback-channel", "--dapr-http-port", "0", "--dapr-grpc-port", "0"])
        .args(["--enable-metrics=false"])
        .args(["--callback-listen-address", "127.0.0.1", "--state-dir"])
        .arg(&state)
        .arg("--callback-cert-file")
        .arg(out.join("server.pem"))
        .arg("--callback-key-file")
        .arg(out.join("server-key.pem"))
        .arg("--callback-client-ca-file")
        .arg(out.join("ca.pem"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = sc.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("dialbackd ready"), "{line}");
}

#[test]
fn bad_flags_fail_with_one_line_and_exit_64() {
    for args in [
        vec!["--app-id", "a", "--callback-keepalive-interval", "9s"],
        vec!["--app-id", "a b"],
        vec!["--enable-callback-channel"],
        vec!["--app-id", "a", "--callback-advertise-address", "nohost"],
        vec!["--app-id", "a", "--no-such-flag"],
        vec!["--app-id", "a", "--callback-transport", "udp"],
        vec!["--app-id", "a", "--worker-threads", "0"],
    ] {
        let out = Command::new(&binaries().dialbackd).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
