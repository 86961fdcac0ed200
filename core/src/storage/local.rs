//! An S3-protocol server on loopback backed by a local folder (s3s + s3s-fs).
//!
//! Lectern's local default and its tests use it, so the same aws-sdk-s3 code path (signatures,
//! presigned URLs, multipart uploads) runs everywhere, with or without a cloud account.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use s3s_fs::FileSystem;

/// Serves S3 on `listener`, storing objects under `root`, accepting one access key; runs until
/// `shutdown` resolves, then lets open connections finish for up to ten seconds.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: PathBuf,
    access_key: String,
    secret_key: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::fs::create_dir_all(&root).await?;
    let fs = FileSystem::new(&root).map_err(|e| {
        std::io::Error::other(format!("cannot serve S3 from {}: {e:?}", root.display()))
    })?;
    let service = {
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        builder.build()
    };
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "local S3: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(Duration::from_secs(10)) => {},
    }
    Ok(())
}
