//! The `tollgate` binary as a child process: `serve` in a folder of its own,
//! its port read from its log, killed (SIGKILL: a crash) when dropped.

use std::process::Command;
use std::time::{Duration, Instant};

/// The binary, with no `TOLLGATE__` variable leaking in from outside.
pub fn tollgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TOLLGATE__")) {
        command.env_remove(key);
    }
    command.env("TOLLGATE__LOG__FILTER", "warn");
    command
}

/// A running child, killed with SIGKILL (no graceful anything) on drop.
pub struct Child(pub std::process::Child);

impl Child {
    /// SIGKILL, and wait until it is gone: a crash.
    pub fn crash(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Starts `serve` in `dir` bound to `bind` (port 0: the binary picks a free
/// one itself, so no other process can take it between choice and use),
/// logging JSON at `debug` to `dir/LOG`; answers the port it listens on, read
/// from its "tollgate serving" log line. A crashed node's budget leases come
/// back after 3 s (`leases.grace_ms`), not 60.
pub fn spawn_serving(dir: &std::path::Path, bind: &str, log: &str) -> (Child, u16) {
    spawn_serving_with(dir, bind, log, &[])
}

/// As [`spawn_serving`], with extra `TOLLGATE__…` settings.
pub fn spawn_serving_with(
    dir: &std::path::Path,
    bind: &str,
    log: &str,
    env: &[(&str, &str)],
) -> (Child, u16) {
    let mut settings = vec![
        ("TOLLGATE__LOG__FILTER", "debug"),
        ("TOLLGATE__LEASES__GRACE_MS", "3000"),
    ];
    settings.extend_from_slice(env);
    spawn_logging(
        dir,
        &["serve", "--bind", bind],
        log,
        &settings,
        serving_port,
    )
}

/// The port of a "tollgate serving" log line.
fn serving_port(line: &serde_json::Value) -> Option<u16> {
    (line["fields"]["message"] == "tollgate serving")
        .then(|| line["fields"]["port"].as_u64())
        .flatten()
        .map(|port| u16::try_from(port).unwrap())
}

/// `serve` with `--config FILE`, on a free port, in `dir`, logging JSON to
/// `dir/LOG`; the settings' own log filter.
pub fn spawn_serving_with_config(
    dir: &std::path::Path,
    config: &std::path::Path,
    log: &str,
    env: &[(&str, &str)],
) -> (Child, u16) {
    let config = config.display().to_string();
    let args = [
        "--config",
        config.as_str(),
        "serve",
        "--bind",
        "127.0.0.1:0",
    ];
    spawn_logging(dir, &args, log, env, serving_port)
}

/// Runs the binary with `args` in `dir`, logging JSON to `dir/LOG`, until
/// `ready` finds what it waits for in a log line (30 s at most).
fn spawn_logging<T>(
    dir: &std::path::Path,
    args: &[&str],
    log: &str,
    env: &[(&str, &str)],
    ready: impl Fn(&serde_json::Value) -> Option<T>,
) -> (Child, T) {
    let log_path = dir.join(log);
    let file = std::fs::File::create(&log_path).unwrap();
    let child = Child(
        tollgate()
            .args(args)
            .env("TOLLGATE__LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|line| ready(&line));
        if let Some(found) = found {
            return (child, found);
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never became ready: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `GET {base}/readyz` answers 200.
pub async fn wait_ready(base: &str) {
    let url = format!("{base}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(&url).await.ok().map(|r| r.status().as_u16()) != Some(200) {
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `tollgate worker` in `dir` with `env`, logging JSON to `dir/LOG`,
/// and waits for its "tollgate worker running" line.
pub fn spawn_worker(dir: &std::path::Path, log: &str, env: &[(&str, &str)]) -> Child {
    let mut settings = vec![("TOLLGATE__LOG__FILTER", "info")];
    settings.extend_from_slice(env);
    spawn_logging(dir, &["worker"], log, &settings, |line| {
        (line["fields"]["message"] == "tollgate worker running").then_some(())
    })
    .0
}
