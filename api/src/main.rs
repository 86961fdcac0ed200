//! `lectern-api`: the HTTP API. Subcommands: `serve` (default), `migrate`, `create-admin`.

mod app;
mod auth;
mod cors;
mod error;
mod idempotency;
mod input_guard;
mod metrics;
mod openapi;
mod request_context;
mod routes;
mod ws;

use std::process::ExitCode;
use std::time::Duration;

use actix_web::{HttpServer, web};
use clap::{Parser, Subcommand};
use lectern_core::config::{Config, ExposeSecret};
use lectern_core::{Services, db, storage, telemetry};

/// Lectern's HTTP API.
#[derive(Parser)]
#[command(name = "lectern-api", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (the default).
    Serve,
    /// Create the database if needed and apply pending migrations (the Procfile's release step).
    Migrate,
    /// Create an admin account (or promote an existing one); the password is read from standard
    /// input.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
    },
}

/// Exit code for invalid configuration, distinct from run-time failures.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // `--help`, `--version` and bad arguments end here (exit 0, or 2 for a usage error), before
    // any configuration is read.
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lectern-api: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(config.log_format);
    let outcome = match command {
        Command::Serve => actix_web::rt::System::new().block_on(serve(config)),
        Command::Migrate => actix_web::rt::System::new().block_on(migrate(config)),
        Command::CreateAdmin { email, name } => {
            actix_web::rt::System::new().block_on(create_admin(config, email, name))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "lectern-api stopped");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let url = config.database_url.expose_secret().to_owned();
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match db::ensure_database(&url).await {
            Ok(()) => break,
            Err(e) if attempt < 20 => {
                tracing::warn!(error = %e, attempt, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(e) => return Err(anyhow::anyhow!("cannot reach PostgreSQL: {e}")),
        }
    }
    let pool = db::connect(&url).await?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn create_admin(config: Config, email: String, name: String) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    let pool = db::connect(config.database_url.expose_secret()).await?;
    match lectern_core::accounts::create_admin(&pool, &email, password, &name).await {
        Ok(user) => {
            println!("admin {} ({})", user.email, user.id);
            Ok(())
        }
        Err(lectern_core::Error::Validation(fields)) => {
            let problems: Vec<String> = fields
                .0
                .iter()
                .map(|(f, p)| format!("{f}: {}", p.join(", ")))
                .collect();
            Err(anyhow::anyhow!("invalid admin: {}", problems.join("; ")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (stop_local_s3, local_s3_stopped) = tokio::sync::oneshot::channel::<()>();
    let local_s3 = match &config.storage.local {
        Some(local) => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", local.port))
                .await
                .map_err(|e| anyhow::anyhow!("LOCAL_S3_PORT {}: {e}", local.port))?;
            tracing::info!(dir = %local.dir.display(), port = local.port, "serving local S3 storage");
            Some(tokio::spawn(storage::local::serve(
                listener,
                local.dir.clone(),
                config.storage.access_key_id.clone(),
                config.storage.secret_access_key.expose_secret().to_owned(),
                config.cors_allowed_origins.clone(),
                async {
                    let _ = local_s3_stopped.await;
                },
            )))
        }
        None => None,
    };

    let (host, port, shutdown_timeout) = (config.host, config.port, config.shutdown_timeout);
    let services = Services::new(config)?;
    tokio::spawn(ensure_bucket(services.clone()));

    // Real-time events from every process (API and workers) to the WebSockets this one holds.
    let hub = web::Data::new(ws::Hub::default());
    {
        let hub = hub.clone();
        tokio::spawn(lectern_core::events::subscribe(
            services.config.redis_url.expose_secret().to_owned(),
            services.config.queue_prefix.clone(),
            move |event| hub.deliver(event),
        ));
    }
    let data = web::Data::new(services);
    let doc = app::OpenApiDoc::default();
    let server = HttpServer::new(move || app::build(data.clone(), hub.clone(), doc.clone()))
        .bind((host, port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?
        .shutdown_timeout(shutdown_timeout.as_secs())
        .run();
    tracing::info!(
        url = format!("http://{host}:{port}"),
        startup_ms = started.elapsed().as_millis() as u64,
        "lectern-api listening"
    );
    // actix handles SIGTERM and SIGINT: stop accepting, finish in-flight requests, return.
    server.await?;
    let _ = stop_local_s3.send(());
    if let Some(task) = local_s3 {
        let _ = task.await;
    }
    tracing::info!("lectern-api stopped cleanly");
    Ok(())
}

/// Makes sure the media bucket exists, retrying with backoff while storage is unreachable.
async fn ensure_bucket(services: Services) {
    let mut delay = Duration::from_millis(200);
    loop {
        match services.storage.ensure_bucket().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "media bucket not available yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
