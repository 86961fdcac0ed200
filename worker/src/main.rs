//! `lectern-worker`: runs the jobs the API enqueues. Scale out by running more copies, on any
//! machine that reaches Redis, PostgreSQL and storage.

mod fetch;
mod handlers;
mod media_child;
mod metrics;
mod runner;

use std::process::ExitCode;
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use lectern_core::config::{Config, ExposeSecret};
use lectern_core::jobs::{self, Queue};
use lectern_core::{Services, telemetry};

const EXIT_CONFIG: u8 = 2;

/// Runs the jobs the API enqueues; scale out by running more copies. Configured by environment
/// variables (see the README); takes no arguments besides these.
#[derive(clap::Parser)]
#[command(name = "lectern-worker", version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    // `--help`, `--version` and bad arguments end here, before any configuration is read.
    let Cli {} = <Cli as clap::Parser>::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lectern-worker: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(config.log_format);
    match media_child::locate(&config) {
        Ok(path) => tracing::info!(program = %path.display(), "media jobs run in a child process"),
        Err(e) => {
            eprintln!("lectern-worker: invalid configuration: LECTERN_MEDIA_BIN: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    match run(config).await {
        Ok(()) => {
            tracing::info!("lectern-worker stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "lectern-worker stopped");
            ExitCode::FAILURE
        }
    }
}

/// How many job ids one fetch takes from Redis. A fetched id waits in this process until a slot
/// frees up, so long jobs (media) take one at a time and never sit behind a running transcode
/// while another process is idle; short ones take up to a slot each, which saves round trips.
fn fetch_batch(queue: Queue, slots: usize) -> usize {
    match queue {
        Queue::Media => 1,
        Queue::Email | Queue::Default => slots.clamp(1, 100),
    }
}

/// A name no other process uses, so a restarted worker never hides its predecessor's orphans.
fn worker_name(queue: Queue) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{host}-{}-{}",
        queue.as_str(),
        std::process::id(),
        &unique[..8]
    )
}

async fn run(config: Config) -> anyhow::Result<()> {
    let concurrency = config.worker_concurrency;
    let shutdown_timeout = config.shutdown_timeout;
    let prefix = config.queue_prefix.clone();
    let metrics_addr = config.worker_metrics_addr;
    let services = Services::new(config)?;
    // What killed predecessors on this host left in the temporary folder (the relay loop sweeps
    // again periodically).
    let swept = lectern_core::media::workdir::sweep().await;
    tracing::info!(swept, "swept working folders of dead job attempts");

    let metrics_server = match metrics_addr {
        Some(addr) => metrics::bind(addr)
            .await
            .map(|l| tokio::spawn(metrics::serve(l))),
        None => None,
    };

    let wakers = std::sync::Arc::new(jobs::wake::Wakers::new(&prefix));
    let listener = tokio::spawn({
        let url = services.config.redis_url.expose_secret().to_owned();
        let wakers = std::sync::Arc::clone(&wakers);
        async move { wakers.listen(url).await }
    });
    let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(runner::relay_loop(services.clone(), relay_stopped));

    let batches = runner::Batches::start(&services);

    let mut monitor = Monitor::new().shutdown_timeout(shutdown_timeout);
    for queue in Queue::ALL {
        let slots = match queue {
            Queue::Email => concurrency.email,
            Queue::Media => concurrency.media,
            Queue::Default => concurrency.default,
        };
        let services = services.clone();
        let prefix = prefix.clone();
        let name = worker_name(queue);
        let wakers = std::sync::Arc::clone(&wakers);
        tracing::info!(queue = queue.as_str(), slots, worker = %name, "starting queue worker");
        let batches = batches.clone();
        monitor = monitor.register(move |_restarts| {
            // Woken by a push at once; polls as a backstop.
            let connection = fetch::TrackedConnection::new(services.redis.clone());
            let storage = RedisStorage::<jobs::JobRef, _>::new(connection.clone()).with_config(
                jobs::queue_config(&prefix, queue).batch_size(fetch_batch(queue, slots)),
            );
            let backend = fetch::Woken::new(
                storage,
                &connection,
                wakers.stream(queue),
                jobs::POLL_INTERVAL,
            );
            WorkerBuilder::new(name.clone())
                .backend(backend)
                .concurrency(slots)
                .data(services.clone())
                .data(batches.clone())
                .build(runner::run_job)
        });
    }
    // A worker whose Redis connection broke (Redis down or restarted) is restarted after a
    // growing pause instead of left dead; it re-registers with Redis and goes on.
    monitor = monitor.should_restart(|ctx, error| {
        let pause = Duration::from_millis(200)
            .saturating_mul(1 << ctx.restarts().min(5))
            .min(Duration::from_secs(5));
        tracing::warn!(worker = ctx.name(), error = %error, retry_in_ms = pause.as_millis() as u64, "queue worker lost Redis; restarting");
        // The monitor's callback is synchronous; let the runtime move other tasks off this thread.
        tokio::task::block_in_place(|| std::thread::sleep(pause));
        true
    });

    monitor.run_with_signal(shutdown_signal()).await?;
    // Successes handed to the batcher are written before unfinished jobs are given back.
    batches.flush_successes(shutdown_timeout).await;
    runner::release_in_flight(&services).await;
    let _ = stop_relay.send(true);
    let _ = relay.await;
    listener.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping fetches, finishing in-flight jobs"),
        res = tokio::signal::ctrl_c() => {
            res?;
            tracing::info!("SIGINT: stopping fetches, finishing in-flight jobs");
        }
    }
    Ok(())
}
