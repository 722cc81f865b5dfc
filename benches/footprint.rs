//! Footprint benchmark: what the SDK adds to an app, and what dialbackd
//! costs, at the edge: stripped binary sizes, and idle memory (VmRSS) after
//! `--idle` seconds (default 10) with the channel up.
//!
//! `cargo bench -p dialback-benches --bench footprint` builds, in the
//! release profile, dialbackd, the SDK's `minimal` and `echo` examples and
//! `benches/examples/baseline.rs` (the same tokio runtime without the SDK,
//! dialing out once), strips copies of them (`strip`), and runs them: the
//! apps connected to one dialbackd. Prints one table and writes
//! `target/bench-footprint.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dialback_e2e::{SidecarBuilder, proc_status_kib};
use serde_json::json;

fn cargo(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(args).status().expect("run cargo");
    assert!(status.success(), "cargo {args:?} failed");
}

/// The size of a stripped copy of `bin`, in bytes.
fn stripped_size(bin: &Path, tmp: &Path) -> u64 {
    let copy = tmp.join(bin.file_name().unwrap());
    std::fs::copy(bin, &copy).unwrap();
    let status = Command::new("strip").arg(&copy).status().expect("run strip (binutils)");
    assert!(status.success(), "strip {}", copy.display());
    std::fs::metadata(&copy).unwrap().len()
}

/// Starts `bin` with `args` and `env`, and waits for its first stdout line starting with `ready`.
fn start(bin: &Path, args: &[&str], env: &[(&str, String)], ready: &str) -> Child {
    let mut c = Command::new(bin);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::null()).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn");
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with(ready) => break,
            Some(_) => {}
            None => panic!("{} ended before saying {ready:?}", bin.display()),
        }
    }
    // Keep reading (and dropping) what it prints, so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let idle = Duration::from_secs(flag("--idle").and_then(|v| v.parse().ok()).unwrap_or(10));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cargo(&["build", "--release", "-p", "dialback-sidecar", "--bin", "dialbackd"]);
    cargo(&["build", "--release", "-p", "dialback", "--example", "minimal", "--example", "echo"]);
    cargo(&["build", "--release", "-p", "dialback-benches", "--example", "baseline"]);
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let rel = target.join("release");
    let bins = [
        ("dialbackd", rel.join("dialbackd")),
        ("minimal (SDK)", rel.join("examples/minimal")),
        ("echo (SDK)", rel.join("examples/echo")),
        ("baseline (no SDK)", rel.join("examples/baseline")),
    ];
    let tmp = tempfile::tempdir()?;
    let sizes: Vec<u64> = bins.iter().map(|(_, b)| stripped_size(b, tmp.path())).collect();

    // One dialbackd (release, as the kit builds it here), the apps connected to it.
    dialback_e2e::binaries();
    let sc = SidecarBuilder::callback("minimal").spawn().await;
    let env = [("DAPR_GRPC_PORT", sc.grpc.to_string())];
    let mut minimal = start(&bins[1].1, &[], &env, "minimal: connected");
    let sc_echo = SidecarBuilder::callback("echo").spawn().await;
    let env_echo = [("DAPR_GRPC_PORT", sc_echo.grpc.to_string())];
    let mut echo = start(&bins[2].1, &["--transport", "quic"], &env_echo, "echo: connected");
    let to = format!("127.0.0.1:{}", sc.http);
    let mut baseline = start(&bins[3].1, &[&to], &[], "baseline: started");
    tokio::time::sleep(idle).await;
    let rss = [
        proc_status_kib(sc.pid(), "VmRSS"),
        proc_status_kib(minimal.id(), "VmRSS"),
        proc_status_kib(echo.id(), "VmRSS"),
        proc_status_kib(baseline.id(), "VmRSS"),
    ];
    for c in [&mut minimal, &mut echo, &mut baseline] {
        let _ = c.kill();
        let _ = c.wait();
    }

    println!("footprint: release profile, stripped copies; idle RSS after {} s with the channel up\n", idle.as_secs());
    println!("{:<20} {:>14} {:>14}", "binary", "stripped MB", "idle RSS MiB");
    let mut rows = Vec::new();
    for (((name, _), size), rss) in bins.iter().zip(&sizes).zip(&rss) {
        println!("{:<20} {:>14.2} {:>14}", name, *size as f64 / 1e6, mib(*rss));
        rows.push(json!({ "binary": name, "stripped_bytes": size, "idle_rss_kib": rss }));
    }
    let sdk_adds = sizes[1].saturating_sub(sizes[3]);
    println!("\nthe SDK adds {:.2} MB to a stripped app binary (minimal - baseline)", sdk_adds as f64 / 1e6);
    let out = target.join("bench-footprint.json");
    let doc = json!({ "idle_s": idle.as_secs(), "rows": rows, "sdk_adds_bytes": sdk_adds });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
