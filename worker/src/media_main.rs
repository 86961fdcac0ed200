//! `lectern-media`: runs one attempt of one media job (transcode, image processing) for a
//! `lectern-worker`, which starts it, and exits. It is the only Lectern program that loads
//! FFmpeg. Not meant to be run by hand: see `lectern_core::media::child` for the protocol.
//!
//! Standard input: one request line, then kept open by the worker (end of file: the worker is
//! gone, and so is this process). Standard output: one outcome line. Standard error: logs.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

use lectern_core::config::Config;
use lectern_core::media::child::{self, Outcome, Request};
use lectern_core::{Services, telemetry};

/// Exit status when the request cannot be read or the process cannot start its services.
const EXIT_USAGE: u8 = 2;
/// Connections to PostgreSQL: progress, the media row, the completion. One attempt needs few.
const DATABASE_CONNECTIONS: u32 = 2;

fn main() -> ExitCode {
    let mut config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", child::PROGRAM);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    telemetry::init_stderr(config.log_format);
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    let request: Request = match stdin
        .read_line(&mut line)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&line).map_err(|e| e.to_string()))
    {
        Ok(request) => request,
        Err(e) => {
            tracing::error!(error = %e, "could not read the request on standard input");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    drop(stdin);
    // The worker holds the other end open while it waits for us: end of file means it died.
    std::thread::spawn(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut rest);
        eprintln!("{}: the worker is gone; stopping", child::PROGRAM);
        std::process::exit(i32::from(child::EXIT_ORPHANED));
    });
    config.database_max_connections = config.database_max_connections.min(DATABASE_CONNECTIONS);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "could not start the async runtime");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome = runtime.block_on(async move {
        // Stopping is the worker's call (it finishes or gives back its jobs, then kills us): a
        // SIGTERM or Ctrl-C sent to the whole process group must not cut the attempt short.
        let _term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let _int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        let services = match Services::new(config) {
            Ok(services) => services,
            Err(e) => {
                return Outcome::Retryable {
                    reason: format!("the media process could not start its services: {e}"),
                };
            }
        };
        let span = tracing::info_span!(
            "media_job",
            job_id = %request.context.id,
            kind = request.job.kind(),
            attempt = request.context.attempt,
        );
        // Boxed: the transcode's future is too deep to lay out inline in this block.
        tracing::Instrument::instrument(Box::pin(child::run_requested(&services, request)), span)
            .await
    });
    let line = match serde_json::to_string(&outcome) {
        Ok(line) => line,
        Err(e) => {
            tracing::error!(error = %e, "could not write the outcome");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
