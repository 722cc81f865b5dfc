//! Dapr's official SDKs in tests: the JavaScript (`@dapr/dapr`), Python
//! (`dapr`), Go (`go-sdk`) and Java (`dapr-sdk`) SDKs, pinned and installed
//! by `scripts/sdks.sh` (cached under `~/.cache/dialback/sdks`), run
//! unchanged by the small programs in `tests/sdk/`, which find their
//! sidecar as any Dapr app does: from `DAPR_GRPC_PORT`, `DAPR_HTTP_PORT`
//! and `DAPR_API_TOKEN`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::PATIENCE;

/// One of Dapr's official SDKs that `scripts/sdks.sh` installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sdk {
    /// The JavaScript SDK, npm's `@dapr/dapr`, run with `node`.
    Js,
    /// The Python SDK, PyPI's `dapr`, run with its venv's `python`.
    Py,
    /// The Go SDK, `github.com/dapr/go-sdk`: `tests/sdk/go`, built.
    Go,
    /// The Java SDK, Maven's `io.dapr:dapr-sdk`: `tests/sdk/java/*.java`,
    /// run by `java` in source-file mode on the resolved classpath.
    Java,
}

impl Sdk {
    /// Its name as `scripts/sdks.sh` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Sdk::Js => "js",
            Sdk::Py => "py",
            Sdk::Go => "go",
            Sdk::Java => "java",
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The directory `scripts/sdks.sh` installed `sdk` into (a prefix holding
/// `node_modules/@dapr/dapr`, or a venv), installed on first use. Panics
/// with the script's own line when it cannot (node, npm or python3
/// missing, or a registry out of reach).
pub fn sdk_dir(sdk: Sdk) -> &'static Path {
    static JS: OnceLock<PathBuf> = OnceLock::new();
    static PY: OnceLock<PathBuf> = OnceLock::new();
    static GO: OnceLock<PathBuf> = OnceLock::new();
    static JAVA: OnceLock<PathBuf> = OnceLock::new();
    let cell = match sdk {
        Sdk::Js => &JS,
        Sdk::Py => &PY,
        Sdk::Go => &GO,
        Sdk::Java => &JAVA,
    };
    cell.get_or_init(|| match install(sdk) {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    })
}

/// Runs `scripts/sdks.sh <sdk>` and reads the directory it prints.
fn install(sdk: Sdk) -> Result<PathBuf, String> {
    let script = workspace_root().join("scripts/sdks.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(sdk.name())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "scripts/sdks.sh could not provide Dapr's {} SDK (exit {:?}):\n{}",
            sdk.name(),
            out.status.code(),
            stderr.trim_end()
        ));
    }
    // Progress of a first install, for a failing test's output.
    eprint!("{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(sdk.name()).and_then(|rest| rest.strip_prefix(' ')))
        .map(PathBuf::from)
        .ok_or_else(|| format!("scripts/sdks.sh printed no directory for {}: {stdout:?}", sdk.name()))
}

/// Where a program finds its sidecar: what Dapr's SDKs read from
/// `DAPR_HTTP_PORT`, `DAPR_GRPC_PORT` and `DAPR_API_TOKEN`.
#[derive(Clone, Debug)]
pub struct SidecarEnv {
    /// The sidecar's HTTP API port.
    pub http: u16,
    /// The sidecar's gRPC API port.
    pub grpc: u16,
    /// The API token the SDK sends, if any.
    pub token: Option<String>,
}

/// Runs the program `tests/sdk/<program>` with `sdk` (node with
/// `DIALBACK_SDK_JS` naming the SDK, the venv's python, Go's build of
/// `tests/sdk/go` named `program`, or `java` on the SDK's classpath) and `args`,
/// pointed at `sidecar` only through the environment variables Dapr's SDKs
/// read, bounded by [`PATIENCE`]. Returns the JSON of the last line it
/// printed, or an error with its exit status, stderr and stdout.
pub async fn run_program(
    sdk: Sdk,
    program: &str,
    args: &[&str],
    sidecar: &SidecarEnv,
) -> Result<serde_json::Value, String> {
    let dir = sdk_dir(sdk);
    let path = workspace_root().join("tests/sdk").join(program);
    let mut cmd = match sdk {
        Sdk::Js => {
            let mut c = tokio::process::Command::new("node");
            c.env("DIALBACK_SDK_JS", dir).arg(&path);
            c
        }
        // The SDK waits for /v1.0/healthz/outbound in its constructor (60 s
        // by default); fail within the bound here, with the SDK's words.
        Sdk::Py => {
            let mut c = tokio::process::Command::new(dir.join("bin/python"));
            c.env("DAPR_HEALTH_TIMEOUT", (PATIENCE / 2).as_secs().to_string());
            c.arg(&path);
            c
        }
        // NewClient's blocking dial: 5 s by default.
        Sdk::Go => {
            let mut c = tokio::process::Command::new(dir.join(program));
            c.env("DAPR_CLIENT_TIMEOUT_SECONDS", (PATIENCE / 2).as_secs().to_string());
            c
        }
        Sdk::Java => {
            let classpath = std::fs::read_to_string(dir.join("classpath"))
                .map_err(|e| format!("the Java SDK's classpath in {}: {e}", dir.display()))?;
            let mut c = tokio::process::Command::new("java");
            c.arg("-cp").arg(classpath.trim()).arg(&path);
            c
        }
    };
    cmd.args(args)
        .env("DAPR_HTTP_PORT", sidecar.http.to_string())
        .env("DAPR_GRPC_PORT", sidecar.grpc.to_string())
        // Anything in the test's own environment that would point the SDK
        // elsewhere.
        .env_remove("DAPR_HTTP_ENDPOINT")
        .env_remove("DAPR_GRPC_ENDPOINT")
        .env_remove("DAPR_RUNTIME_HOST")
        .env_remove("DAPR_API_TOKEN")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = &sidecar.token {
        cmd.env("DAPR_API_TOKEN", t);
    }
    let what = format!("{} {program} {}", sdk.name(), args.join(" "));
    let child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} did not finish within {PATIENCE:?}"))?
        .map_err(|e| format!("waiting for {what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report =
        || format!("{what} exited with {}\nstderr:\n{}\nstdout:\n{}", out.status, tail(&stderr), tail(&stdout));
    if !out.status.success() {
        return Err(report());
    }
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("its last line is not JSON ({e}); {}", report()))
}

/// The last 40 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
