//! The worker's Prometheus metrics, per job kind: attempts started, succeeded, failed for good
//! and failed-then-retried, an attempt duration histogram, and the attempts in flight. Served at
//! `GET /metrics` on `WORKER_METRICS_ADDR` by a small listener (one request per connection).
//!
//! Every attempt that starts ends in exactly one of succeeded, failed or retried, or is still in
//! flight (an attempt cut short by shutdown or a lost lease is counted as retried).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use lectern_core::jobs::KINDS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Seconds; jobs run from a millisecond (a no-op) to hours (a transcode).
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
];

#[derive(Default)]
struct KindMetrics {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    in_flight: AtomicI64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

pub struct Jobs {
    kinds: [KindMetrics; KINDS.len()],
}

pub static JOBS: LazyLock<Jobs> = LazyLock::new(|| Jobs {
    kinds: Default::default(),
});

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Succeeded,
    /// Failed for good (a dead letter).
    Failed,
    /// Failed, and will run again after a backoff.
    Retried,
}

/// One running attempt: counted in flight until [`Attempt::finish`] or drop (an attempt dropped
/// without an outcome, e.g. by an error while recording it, counts as retried: the job runs again).
pub struct Attempt {
    kind: Option<&'static KindMetrics>,
    started: std::time::Instant,
    outcome: Option<Outcome>,
}

impl Jobs {
    fn kind(&self, kind: &str) -> Option<&KindMetrics> {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.kinds.get(i))
    }

    /// Counts an attempt of `kind` as started and in flight.
    pub fn start(&'static self, kind: &str) -> Attempt {
        let metrics = self.kind(kind);
        if let Some(m) = metrics {
            m.started.fetch_add(1, Ordering::Relaxed);
            m.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Attempt {
            kind: metrics,
            started: std::time::Instant::now(),
            outcome: None,
        }
    }

    pub fn render(&self, out: &mut String) {
        type Field = fn(&KindMetrics) -> &AtomicU64;
        let counters: [(&str, &str, Field); 4] = [
            (
                "lectern_worker_jobs_started_total",
                "Job attempts started, by kind.",
                |m| &m.started,
            ),
            (
                "lectern_worker_jobs_succeeded_total",
                "Job attempts that succeeded, by kind.",
                |m| &m.succeeded,
            ),
            (
                "lectern_worker_jobs_failed_total",
                "Job attempts that failed for good (dead letters), by kind.",
                |m| &m.failed,
            ),
            (
                "lectern_worker_jobs_retried_total",
                "Job attempts that failed and were scheduled to run again, by kind.",
                |m| &m.retried,
            ),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (kind, m) in KINDS.iter().zip(&self.kinds) {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{kind}\"}} {}",
                    field(m).load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP lectern_worker_jobs_in_flight Job attempts running in this process, by kind."
        );
        let _ = writeln!(out, "# TYPE lectern_worker_jobs_in_flight gauge");
        for (kind, m) in KINDS.iter().zip(&self.kinds) {
            let _ = writeln!(
                out,
                "lectern_worker_jobs_in_flight{{kind=\"{kind}\"}} {}",
                m.in_flight.load(Ordering::Relaxed).max(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lectern_worker_job_duration_seconds Time job attempts ran, by kind, whatever their outcome."
        );
        let _ = writeln!(out, "# TYPE lectern_worker_job_duration_seconds histogram");
        for (kind, m) in KINDS.iter().zip(&self.kinds) {
            for (bucket, bound) in m.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "lectern_worker_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = m.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "lectern_worker_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {count}"
            );
            let sum = m.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "lectern_worker_job_duration_seconds_sum{{kind=\"{kind}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "lectern_worker_job_duration_seconds_count{{kind=\"{kind}\"}} {count}"
            );
        }
    }
}

impl Attempt {
    /// Records how the attempt ended (once; later calls change nothing).
    pub fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
            self.record(outcome);
        }
    }

    fn record(&self, outcome: Outcome) {
        let Some(m) = self.kind else {
            return;
        };
        match outcome {
            Outcome::Succeeded => &m.succeeded,
            Outcome::Failed => &m.failed,
            Outcome::Retried => &m.retried,
        }
        .fetch_add(1, Ordering::Relaxed);
        m.in_flight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in m.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        m.count.fetch_add(1, Ordering::Relaxed);
        m.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(Outcome::Retried);
    }
}

/// Largest request head the listener reads.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics listener. A busy address (another worker process on this host took it) is
/// logged and skipped: the worker runs on without metrics rather than not at all.
pub async fn bind(addr: SocketAddr) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "serving worker metrics at /metrics");
            Some(listener)
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot serve worker metrics (give each worker process on a host its own WORKER_METRICS_ADDR); running without them");
            None
        }
    }
}

/// Answers `GET /metrics` until the task is aborted.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream)).await {
                        tracing::debug!(error = %e, "metrics request timed out");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener could not accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let mut body = String::new();
            JOBS.render(&mut body);
            ("200 OK", body)
        }
        (Some(b"GET"), _) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_counted_once_and_leaves_flight() {
        let jobs: &'static Jobs = Box::leak(Box::new(Jobs {
            kinds: Default::default(),
        }));
        let mut attempt = jobs.start("noop");
        let mut out = String::new();
        jobs.render(&mut out);
        assert!(
            out.contains("lectern_worker_jobs_in_flight{kind=\"noop\"} 1"),
            "{out}"
        );
        attempt.finish(Outcome::Succeeded);
        attempt.finish(Outcome::Failed);
        drop(attempt);
        drop(jobs.start("send_email"));
        let mut out = String::new();
        jobs.render(&mut out);
        for line in [
            "lectern_worker_jobs_started_total{kind=\"noop\"} 1",
            "lectern_worker_jobs_succeeded_total{kind=\"noop\"} 1",
            "lectern_worker_jobs_failed_total{kind=\"noop\"} 0",
            "lectern_worker_jobs_in_flight{kind=\"noop\"} 0",
            "lectern_worker_job_duration_seconds_count{kind=\"noop\"} 1",
            "lectern_worker_job_duration_seconds_bucket{kind=\"noop\",le=\"+Inf\"} 1",
            "lectern_worker_jobs_retried_total{kind=\"send_email\"} 1",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        // An unknown kind is not counted (and does not panic).
        drop(jobs.start("mine_bitcoin"));
    }
}
