//! `dialbackd`: parse flags, set up logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use dialback_sidecar::config::{CertsCommand, Command};
use dialback_sidecar::{Cli, Config};

/// Exit code for bad configuration (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, not clap's usage block: the first line says what is wrong.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ");
            // ... and, for a choice, what the choices are.
            let choices = text.lines().map(str::trim).find(|l| l.starts_with("[possible values:"));
            match choices {
                Some(c) => eprintln!("dialbackd: {first} {c} (see dialbackd --help)"),
                None => eprintln!("dialbackd: {first} (see dialbackd --help)"),
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Some(Command::Certs { command: CertsCommand::Init { out, app_ids, server_names, force } }) = cli.command {
        return match dialback_certs::write_dev_set(&out, &server_names, &app_ids, force) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dialbackd certs init: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let workers = cli.run.worker_threads;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.run.log_level.clone());
    let env_filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dialbackd: bad --log-level {filter:?}: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr).init();
    let config = match Config::from_args(cli.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dialbackd: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // The common soft limit of 1024 open files is far below what a sidecar
    // facing a network needs; the listeners' caps are sized from the result.
    if let Some(n) = dialback_sidecar::raise_fd_limit() {
        tracing::debug!(limit = n, "open-files limit");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = workers {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dialbackd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dialback_sidecar::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dialbackd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
