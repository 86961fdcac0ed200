//! Prometheus metrics at `GET /metrics`: HTTP requests by status class and a latency histogram
//! (recorded by the request middleware), and job counts per queue and state from PostgreSQL.

use std::fmt::Write;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use lectern_core::{Services, jobs};

const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

pub struct Http {
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

pub static HTTP: LazyLock<Http> = LazyLock::new(|| Http {
    by_class: Default::default(),
    buckets: Default::default(),
    count: AtomicU64::new(0),
    sum_micros: AtomicU64::new(0),
});

impl Http {
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP lectern_http_requests_total HTTP requests answered, by status class."
        );
        let _ = writeln!(out, "# TYPE lectern_http_requests_total counter");
        for (i, n) in self.by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "lectern_http_requests_total{{class=\"{}xx\"}} {}",
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lectern_http_request_duration_seconds Time to answer HTTP requests."
        );
        let _ = writeln!(
            out,
            "# TYPE lectern_http_request_duration_seconds histogram"
        );
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "lectern_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "lectern_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "lectern_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "lectern_http_request_duration_seconds_count {count}");
    }
}

/// Prometheus text format. Job gauges are omitted (and `lectern_database_up` is 0) while
/// PostgreSQL is unreachable.
#[utoipa::path(tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(services: web::Data<Services>) -> HttpResponse {
    let mut out = String::new();
    HTTP.render(&mut out);
    let depths = jobs::depths(&services.db).await;
    let _ = writeln!(
        out,
        "# HELP lectern_database_up Whether PostgreSQL answered this scrape."
    );
    let _ = writeln!(out, "# TYPE lectern_database_up gauge");
    let _ = writeln!(out, "lectern_database_up {}", u8::from(depths.is_ok()));
    if let Ok(depths) = depths {
        let _ = writeln!(
            out,
            "# HELP lectern_jobs Jobs by queue and state (succeeded ones are not counted)."
        );
        let _ = writeln!(out, "# TYPE lectern_jobs gauge");
        for d in &depths {
            for (state, n) in [
                ("queued", d.queued),
                ("running", d.running),
                ("retrying", d.retrying),
                ("failed", d.failed),
            ] {
                let _ = writeln!(
                    out,
                    "lectern_jobs{{queue=\"{}\",state=\"{state}\"}} {n}",
                    d.queue
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP lectern_jobs_due Jobs due to run now (queued or retrying, run_at passed), per queue."
        );
        let _ = writeln!(out, "# TYPE lectern_jobs_due gauge");
        for d in &depths {
            let _ = writeln!(out, "lectern_jobs_due{{queue=\"{}\"}} {}", d.queue, d.due);
        }
        let _ = writeln!(
            out,
            "# HELP lectern_jobs_oldest_due_seconds Age of the oldest job waiting to run, per queue."
        );
        let _ = writeln!(out, "# TYPE lectern_jobs_oldest_due_seconds gauge");
        for d in &depths {
            let _ = writeln!(
                out,
                "lectern_jobs_oldest_due_seconds{{queue=\"{}\"}} {}",
                d.queue,
                d.oldest_due_secs.unwrap_or(0.0)
            );
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}
