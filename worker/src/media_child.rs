//! Media jobs run in `lectern-media`, one child process per attempt (see
//! `lectern_core::media::child`): this process never loads FFmpeg.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;

use lectern_core::Services;
use lectern_core::config::Config;
use lectern_core::jobs::{self, Job, JobError};
use lectern_core::media::child::{self, Outcome, Request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The most of the child's standard output read: its outcome is one short line.
const MAX_STDOUT: u64 = 1024 * 1024;

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Finds `lectern-media` (`LECTERN_MEDIA_BIN`, else next to this executable) and remembers it;
/// an error names what is missing, for the start-up check.
pub fn locate(config: &Config) -> Result<PathBuf, String> {
    let path = match &config.media.process_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot tell where this executable is: {e}"))?
            .with_file_name(child::PROGRAM),
    };
    if !path.is_file() {
        return Err(format!(
            "{} is missing: media jobs run in it; install it next to lectern-worker or set LECTERN_MEDIA_BIN",
            path.display()
        ));
    }
    let _ = PROGRAM.set(path.clone());
    Ok(path)
}

fn program() -> Result<&'static Path, JobError> {
    PROGRAM.get().map(PathBuf::as_path).ok_or_else(|| {
        JobError::Retryable(format!("the {} program was not located", child::PROGRAM))
    })
}

/// Runs `job` (one that [`child::runs_in_child`]) in a `lectern-media` process, as attempt
/// [`jobs::current_job`]. Dropping the future kills the process (time limit, lost lease,
/// shutdown). When the child recorded the job's success itself, tells the attempt so.
pub async fn run(services: &Services, job: Job) -> Result<(), JobError> {
    let context = jobs::current_job()
        .ok_or_else(|| JobError::Permanent("a media job ran outside a job attempt".into()))?;
    let mut line = serde_json::to_string(&Request {
        context,
        job: job.clone(),
    })
    .map_err(|e| JobError::Permanent(format!("the job cannot be handed over: {e}")))?;
    line.push('\n');
    let program = program()?;
    let mut process = tokio::process::Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            JobError::Retryable(format!(
                "could not start the media process {}: {e}",
                program.display()
            ))
        })?;
    tracing::debug!(pid = process.id(), "started the media process");
    // Kept open until the child has exited: its end of file tells the child the worker is gone.
    let mut stdin = process.stdin.take();
    let stdout_pipe = process.stdout.take();
    let mut running = Running(Some(process));
    if let Some(pipe) = stdin.as_mut() {
        // A child that died at once shows in its exit status below.
        let _ = pipe.write_all(line.as_bytes()).await;
        let _ = pipe.flush().await;
    }
    let mut stdout = String::new();
    if let Some(pipe) = stdout_pipe {
        let _ = pipe.take(MAX_STDOUT).read_to_string(&mut stdout).await;
    }
    let status = running
        .wait()
        .await
        .map_err(|e| JobError::Retryable(format!("could not wait for the media process: {e}")))?;
    drop(stdin);
    match Outcome::find_in(&stdout) {
        Some(outcome) => {
            let (result, completed) = outcome.into_result();
            if completed {
                jobs::attempt::note_completed_elsewhere();
            }
            result
        }
        None => {
            let error = JobError::Retryable(lost(status));
            tracing::warn!(error = %error, "the media process ended without an outcome");
            // Its working folder is unlocked now: remove it rather than wait for the sweep.
            lectern_core::media::workdir::sweep().await;
            Err(child::record_lost_attempt(services, &job, error).await)
        }
    }
}

/// A child process that is killed, and its working folder swept, when the attempt is abandoned
/// (this future dropped) before the child has exited.
struct Running(Option<tokio::process::Child>);

impl Running {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = match self.0.as_mut() {
            Some(process) => process.wait().await?,
            None => {
                return Err(std::io::Error::other(
                    "the media process was already reaped",
                ));
            }
        };
        self.0 = None;
        Ok(status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut process) = self.0.take() else {
            return;
        };
        let _ = process.start_kill();
        tracing::info!(
            pid = process.id(),
            "abandoned the attempt; killed its media process"
        );
        // The folder it worked in is unlocked once it is gone.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = process.wait().await;
                lectern_core::media::workdir::sweep().await;
            });
        }
    }
}

/// Why a child that wrote no outcome ended.
fn lost(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(signal), _) => format!(
            "the media process was killed by signal {signal}{}",
            signal_name(signal).map_or_else(String::new, |n| format!(" ({n})"))
        ),
        (None, Some(code)) => {
            format!("the media process exited with status {code} without reporting an outcome")
        }
        (None, None) => "the media process ended without reporting an outcome".to_owned(),
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_child_is_described_by_its_signal_or_status() {
        assert_eq!(
            lost(ExitStatus::from_raw(9)),
            "the media process was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            lost(ExitStatus::from_raw(11)),
            "the media process was killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(
            lost(ExitStatus::from_raw(101 << 8)),
            "the media process exited with status 101 without reporting an outcome"
        );
    }
}
