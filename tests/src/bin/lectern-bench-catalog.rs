//! Catalogue benchmark: seeds 100,000 published courses (titles, descriptions and tags drawn from
//! a vocabulary, ten categories, prices, ratings), then drives the real `lectern-api` over HTTP.
//! Prints search latency p50/p99 for five representative queries, one at a time, and catalogue
//! page requests per second under concurrency. Run with `scripts/bench catalog`.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lectern_tests::{Options, TestApp};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let courses: i64 = std::env::var("BENCH_COURSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("RATE_LIMITS".into(), "off".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), "20".into()),
        ],
    })
    .await;
    let teacher = app
        .register("bench-teacher@example.com", "instructor")
        .await;
    let teacher_id = teacher["user"]["id"].as_str().unwrap().to_owned();
    let pool = &app.db.pool;
    let seeded = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO categories (id, slug, name)
         SELECT gen_random_uuid(), 'cat-' || g, 'Category ' || g FROM generate_series(1, 10) g;
         WITH words AS (SELECT ARRAY['rust','python','cooking','photography','guitar','marketing','statistics',
                 'kubernetes','drawing','spanish','algebra','design','finance','yoga','writing','chemistry',
                 'javascript','databases','networking','security','machine','learning','history','music',
                 'beginners','advanced','complete','masterclass','practical','introduction'] AS w),
              cats AS (SELECT array_agg(id ORDER BY slug) AS ids FROM categories)
         INSERT INTO courses (id, instructor_id, category_id, title, slug, short_description, description, tags,
                              price, difficulty, language, rating_average, rating_count, enrollment_count,
                              status, published_at)
         SELECT gen_random_uuid(), '{teacher_id}', cats.ids[1 + g % 10],
                initcap(w[1 + g % 30] || ' ' || w[1 + (g / 30) % 30] || ' ' || w[1 + (g / 900) % 30]) || ' ' || g,
                'bench-course-' || g,
                'A course about ' || w[1 + (g / 7) % 30] || ' and ' || w[1 + (g / 11) % 30],
                repeat('Lessons on ' || w[1 + (g / 13) % 30] || ', ' || w[1 + (g / 17) % 30] || ' and practice. ', 8),
                ARRAY[w[1 + (g / 3) % 30], w[1 + (g / 5) % 30]],
                CASE WHEN g % 4 = 0 THEN 0 ELSE (g % 200) + 0.99 END,
                (ARRAY['beginner','intermediate','advanced','all_levels'])[1 + g % 4],
                (ARRAY['en','en','en','es','fr'])[1 + g % 5],
                round((1 + (g % 400) / 100.0)::numeric, 2), g % 500, (g * 7919) % 10000,
                'published', now() - (g || ' minutes')::interval
           FROM generate_series(1, {courses}) g, words, cats;
         ANALYZE courses;"
    )))
    .execute(pool)
    .await
    .unwrap();
    println!(
        "lectern catalogue benchmark: {courses} published courses seeded in {:.1} s; {} cores; API, PostgreSQL on loopback",
        seeded.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let queries = [
        ("full text: q=rust", "/api/v1/courses?q=rust"),
        (
            "typo: q=photografy masterclas",
            "/api/v1/courses?q=photografy%20masterclas",
        ),
        (
            "text + filters + rating order",
            "/api/v1/courses?q=python&difficulty=beginner&max_price=50&order_by=rating",
        ),
        (
            "category + price order",
            "/api/v1/courses?category=cat-3&order_by=price",
        ),
        ("newest, page 1 (catalogue home)", "/api/v1/courses"),
    ];
    for (name, path) in queries {
        let url = format!("{}{path}", app.url);
        for _ in 0..20 {
            app.http.get(&url).send().await.unwrap();
        }
        let mut lat = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds.min(5)) {
            let t = Instant::now();
            let res = app.http.get(&url).send().await.unwrap();
            assert!(res.status().is_success(), "{name}: {}", res.status());
            res.bytes().await.unwrap();
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "{name:<36} p50 {:>6.2} ms   p99 {:>6.2} ms   ({} sequential requests)",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat.len()
        );
    }
    // Catalogue pages under load: 32 clients walking the newest-first listing and a search.
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (http, base, done, errors) = (
            app.http.clone(),
            app.url.clone(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                "/api/v1/courses"
            } else {
                "/api/v1/courses?q=guitar&order_by=popularity"
            };
            while started.elapsed() < Duration::from_secs(seconds) {
                match http.get(format!("{base}{path}")).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "catalogue pages, 32 clients:          {:.0} req/s ({} errors)",
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );
}
