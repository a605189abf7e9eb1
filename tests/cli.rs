//! The binary as an operator runs it: `serve` on the embedded defaults from an
//! empty folder, and start-up refusing bad settings by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tollgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    // Only what the test sets: no TOLLGATE__ variable leaks in from outside.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TOLLGATE__")) {
        command.env_remove(key);
    }
    command.env("TOLLGATE__LOG__FILTER", "warn");
    command
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_runs_on_embedded_defaults_from_an_empty_folder() {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _child = Child(
        tollgate()
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{port}/readyz");
    let ready = loop {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer =
            runtime.block_on(async { reqwest::get(&url).await.ok().map(|r| r.status().as_u16()) });
        if answer == Some(200) || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        ready,
        Some(200),
        "server did not become ready on port {port}"
    );
    // The embedded default keeps its SQLite database and signing key under ./data/.
    assert!(dir.join("data/tollgate.db").exists());
    let key = std::fs::read_to_string(dir.join("data/signing.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("data/signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the signing key is private to its owner");
    }
    drop(_child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_stop_startup_naming_the_setting() {
    for (key, value, named) in [
        ("TOLLGATE__HTTP__BIND", "nowhere", "http.bind"),
        ("TOLLGATE__STORE__URL", "mysql://x", "store.url"),
        ("TOLLGATE__SETTLEMENT__MODE", "magic", "settlement.mode"),
        ("TOLLGATE__KEYS__MAX_TTL_MS", "-1", "keys.max_ttl_ms"),
        ("TOLLGATE__HTTP__NO_SUCH_KEY", "1", "no_such_key"),
    ] {
        let output = tollgate()
            .args(["migrate"])
            .env(key, value)
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{key}={value} should stop start-up"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(named),
            "{key}={value}: error should name {named}: {stderr}"
        );
    }
    let output = tollgate()
        .args(["serve", "--bind", "nowhere"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--bind"));
    let output = tollgate()
        .args(["--config", "/does/not/exist.toml", "migrate"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--config"));
}
