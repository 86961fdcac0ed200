//! The test harness: each test gets its own PostgreSQL database, its own Redis key prefix, a real
//! S3 server and a real SMTP server on loopback, and the real `lectern-api` and `lectern-worker`
//! processes, stopped (and the database dropped) when the test ends.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod fixtures;
pub mod smtp;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

pub use smtp::{ReceivedMail, TestSmtp};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789ab";
pub const S3_KEY: &str = "test-access-key";
pub const S3_SECRET: &str = "test-secret-key-0123456789";
pub const BUCKET: &str = "lectern-test";

pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `target/<profile>/` of the test binary, where cargo put `lectern-api` and `lectern-worker`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; the test command does)",
        path.display()
    );
    path
}

/// A fresh, migrated database, dropped on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("lectern_test_{}", Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base()))
            .await
            .expect("PostgreSQL on loopback (start it with scripts/services.sh)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = format!("{}/{name}", postgres_base());
        let pool = sqlx::PgPool::connect(&url)
            .await
            .expect("connect test database");
        lectern_core::db::migrate(&pool)
            .await
            .expect("migrations apply");
        TestDb { name, url, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let base = postgres_base();
        // Drop needs its own runtime: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(admin) = sqlx::PgPool::connect(&format!("{base}/postgres")).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&admin)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A real S3 server (s3s-fs) on 127.0.0.1:<random>, storing into a temporary folder.
pub struct TestS3 {
    pub endpoint: String,
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestS3 {
    pub async fn start() -> TestS3 {
        let dir = std::env::temp_dir().join(format!("lectern-s3-{}", Uuid::new_v4().simple()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(lectern_core::storage::local::serve(
            listener,
            dir.clone(),
            S3_KEY.into(),
            S3_SECRET.into(),
            // Like a bucket with a CORS rule for local development: loopback pages on any port.
            lectern_core::config::AllowedOrigins::new(
                lectern_core::config::AllowedOrigins::loopback(),
            ),
            async {
                let _ = stopped.await;
            },
        ));
        TestS3 {
            endpoint,
            dir,
            stop: Some(stop),
        }
    }

    pub fn config(&self) -> lectern_core::config::StorageConfig {
        lectern_core::config::StorageConfig {
            endpoint: Some(self.endpoint.parse().expect("url")),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            access_key_id: S3_KEY.into(),
            secret_access_key: lectern_core::config::Secret::from(S3_SECRET),
            force_path_style: true,
            local: None,
        }
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running process whose output goes to a log file; killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(binary: &str, args: &[&str], env: &HashMap<String, String>, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin(binary))
            .args(args)
            .current_dir(log.parent().unwrap_or(Path::new("/")))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,lectern_worker=debug")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn process");
        Proc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary to completion with the given environment; returns (status, stdout+stderr).
pub fn run_to_end(
    binary: &str,
    args: &[&str],
    env: &HashMap<String, String>,
) -> (ExitStatus, String) {
    // Run outside the checkout so a developer's .env is not picked up.
    let out = Command::new(bin(binary))
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("run binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Runs a binary with `input` on its standard input.
pub fn run_with_stdin(
    binary: &str,
    args: &[&str],
    env: &HashMap<String, String>,
    input: &str,
) -> (ExitStatus, String) {
    use std::io::Write;
    let mut child = Command::new(bin(binary))
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// A fresh scratch folder under the temporary directory, named after the test file.
pub fn scratch_dir(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("lectern-{label}-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Runs the `ffmpeg` command line (real media for the tests); panics with its output on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("the ffmpeg command line (installed by scripts/bootstrap.sh)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A program of the tests' Python venv (`$LECTERN_VENV`, else `$LECTERN_CACHE/venv`, else
/// `/var/cache/lectern/venv`), where `scripts/bootstrap.sh` installs schemathesis and
/// openapi-python-client.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("LECTERN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("LECTERN_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/lectern"))
                .join("venv")
        });
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/bootstrap.sh (it installs the tests' Python tools)",
        path.display()
    );
    path
}

/// The token in a mailed link (`...?token=abc`).
pub fn token_from_link(text: &str) -> String {
    let at = text.find("token=").expect("a link with token=") + "token=".len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[derive(Default)]
pub struct Options {
    /// Start without a worker (the test starts its own, or checks the API alone).
    pub no_worker: bool,
    /// Extra or overriding environment variables for both processes.
    pub env: Vec<(String, String)>,
}

/// Lectern as a user runs it: the API and a worker against real services.
pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub s3: TestS3,
    pub smtp: TestSmtp,
    pub prefix: String,
    pub env: HashMap<String, String>,
    pub api: Proc,
    pub worker: Option<Proc>,
    pub dir: PathBuf,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    /// [`TestApp::spawn`] with these environment variables set for both processes.
    pub async fn spawn_with_env(env: &[(&str, &str)]) -> TestApp {
        Self::spawn_with(Options {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        })
        .await
    }

    pub async fn spawn_with(options: Options) -> TestApp {
        let db = TestDb::create().await;
        let s3 = TestS3::start().await;
        let smtp = TestSmtp::start();
        let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        let dir = std::env::temp_dir().join(format!("lectern-{prefix}"));
        std::fs::create_dir_all(dir.join("tmp")).expect("temp dir");
        let port = free_port();
        let mut env: HashMap<String, String> = [
            ("PORT", port.to_string()),
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", redis_url()),
            ("QUEUE_PREFIX", prefix.clone()),
            ("PUBLIC_URL", format!("http://127.0.0.1:{port}")),
            ("STORAGE_BACKEND", "s3".into()),
            ("S3_ENDPOINT", s3.endpoint.clone()),
            ("S3_BUCKET", BUCKET.into()),
            ("S3_ACCESS_KEY_ID", S3_KEY.into()),
            ("S3_SECRET_ACCESS_KEY", S3_SECRET.into()),
            ("SMTP_URL", smtp.url()),
            ("MAIL_FROM", "Lectern <no-reply@lectern.test>".into()),
            ("JWT_SECRET", JWT_SECRET.into()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("SHUTDOWN_TIMEOUT_SECS", "10".into()),
            // Tests run many workers at once; one that wants metrics picks a free port.
            ("WORKER_METRICS_ADDR", "off".into()),
            // The processes' scratch space, so tests can check that nothing is left behind.
            ("TMPDIR", dir.join("tmp").display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(options.env);
        let api = Proc::spawn("lectern-api", &[], &env, dir.join("api.log"));
        let worker = (!options.no_worker)
            .then(|| Proc::spawn("lectern-worker", &[], &env, dir.join("worker.log")));
        let app = TestApp {
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // Below actix's 5 s keep-alive, so a pooled connection is never one the server closed.
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
            db,
            s3,
            smtp,
            prefix,
            env,
            api,
            worker,
            dir,
        };
        app.wait_until_listening().await;
        app
    }

    async fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .http
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("lectern-api did not start:\n{}", self.api.output());
    }

    /// Polls `/readyz` until it answers 200 (the bucket is created in the background).
    pub async fn wait_until_ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let res = self.get("/readyz").await;
            if res.0 == 200 || Instant::now() > deadline {
                assert_eq!(res.0, 200, "never ready: {}", res.1);
                return res.1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Files the test S3 server holds under `prefix` (a key prefix such as `media/{id}/v`).
    pub fn stored_files(&self, prefix: &str) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        count(&self.s3.dir.join(BUCKET).join(prefix))
    }

    /// What the API and worker processes left in their temporary folder.
    pub fn scratch_left(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("tmp"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn spawn_worker(&self, log_name: &str) -> Proc {
        Proc::spawn("lectern-worker", &[], &self.env, self.dir.join(log_name))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body, headers)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (s, b, _) = self
            .send(self.http.get(format!("{}{path}", self.url)))
            .await;
        (s, b)
    }

    pub async fn get_as_admin(&self, path: &str) -> (u16, Value) {
        let (s, b, _) = self
            .send(
                self.http
                    .get(format!("{}{path}", self.url))
                    .bearer_auth(ADMIN_TOKEN),
            )
            .await;
        (s, b)
    }

    pub async fn post_as_admin(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, b, _) = self
            .send(
                self.http
                    .post(format!("{}{path}", self.url))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(body),
            )
            .await;
        (s, b)
    }

    /// Any request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let (s, b, _) = self.send(req).await;
        (s, b)
    }

    /// Registers an account; returns the response body (user and tokens).
    pub async fn register(&self, email: &str, role: &str) -> Value {
        let (status, body) = self
            .call(
                "POST",
                "/api/v1/auth/register",
                None,
                Some(&serde_json::json!({
                    "email": email, "password": "correct horse battery", "full_name": "Test User", "role": role
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Registers an instructor whose email is verified (only they upload videos); returns the
    /// access token and the user id.
    pub async fn verified_instructor(&self, email: &str) -> (String, String) {
        let body = self.register(email, "instructor").await;
        let id = body["user"]["id"].as_str().expect("user id").to_owned();
        sqlx::query("UPDATE users SET email_verified_at = now() WHERE id = $1::uuid")
            .bind(&id)
            .execute(&self.db.pool)
            .await
            .expect("mark the email verified");
        let token = body["access_token"]
            .as_str()
            .expect("access token")
            .to_owned();
        (token, id)
    }

    pub async fn raw(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.send(req).await
    }

    /// Queues the operator's test mail to `to` through the API; returns the job id.
    pub async fn queue_test_mail(&self, to: &str) -> String {
        let (status, body) = self
            .post_as_admin("/api/v1/admin/email/test", &serde_json::json!({ "to": to }))
            .await;
        assert_eq!(status, 202, "{body}");
        body["job"]["id"].as_str().expect("job id").to_owned()
    }

    /// Sends SIGTERM to the worker and asserts it exits 0 within `timeout`.
    pub fn terminate_worker(&mut self, timeout: Duration) {
        let worker = self.worker.as_mut().expect("a worker");
        worker.signal("TERM");
        let status = worker.wait_exit(timeout).expect("the worker exits in time");
        assert_eq!(status.code(), Some(0), "{}", worker.output());
    }

    /// Waits until the job reaches `state` (or a final state), returning its view.
    pub async fn wait_for_job(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, job) = self.get_as_admin(&format!("/api/v1/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            let current = job["state"].as_str().unwrap_or_default().to_owned();
            if current == state || Instant::now() > deadline {
                assert_eq!(
                    current,
                    state,
                    "job {id}: {job}\n--- worker log ---\n{}",
                    self.worker_log()
                );
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Core services of the test's own, configured like the app (its database and Redis prefix).
    pub fn services(&self) -> lectern_core::Services {
        let config = lectern_core::config::Config::from_source(|k| self.env.get(k).cloned())
            .expect("the app's configuration");
        lectern_core::Services::new(config).expect("services")
    }

    pub fn worker_log(&self) -> String {
        self.worker.as_ref().map(Proc::output).unwrap_or_default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- lectern-api log ---\n{}", self.api.output());
            eprintln!("--- lectern-worker log ---\n{}", self.worker_log());
        }
        // Remove this test's Redis keys.
        if let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}-*", self.prefix))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
