//! The binary as an operator runs it: `serve` on the embedded defaults from an
//! empty folder, and start-up refusing bad settings by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::process::{spawn_serving, tollgate, Child};

#[test]
fn serve_runs_on_embedded_defaults_from_an_empty_folder() {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_child, port) = spawn_serving(&dir, "127.0.0.1:0", "serve.log");
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

/// Starts `serve` in `dir` (see [`spawn_serving`]) and waits until it is
/// ready; answers the port.
async fn start_serving(dir: &std::path::Path, bind: &str, log: &str) -> (Child, u16) {
    let (child, port) = spawn_serving(dir, bind, log);
    common::process::wait_ready(&format!("http://127.0.0.1:{port}")).await;
    (child, port)
}

/// Runs the binary to completion in `dir` and returns its standard output.
fn run_in(dir: &std::path::Path, args: &[&str]) -> String {
    let output = tollgate().args(args).current_dir(dir).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Paid calls against the real binary on its embedded defaults (SQLite, key
/// actors on actix-web's worker arbiters), then a crash (SIGKILL) and a
/// restart: every reported charge survives; the dead node's budget lease
/// keeps the rest of the key until `leases.grace_ms`, then comes back; and
/// the restarted key actor never regains budget — spending stops exactly at
/// the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_calls_survive_a_crash_and_restart_within_budget() {
    let dir =
        std::env::temp_dir().join(format!("tollgate-crash-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut server, port) = start_serving(&dir, "127.0.0.1:0", "first.log").await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // The README's walk-through: sign in with the dev key, credit, create a key.
    let wallet = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
    let nonce: serde_json::Value = client
        .get(format!("{base}/api/sessions/nonce"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let domain = format!("127.0.0.1:{port}");
    let signed = run_in(
        &dir,
        &[
            "siwe-sign",
            "--nonce",
            nonce["nonce"].as_str().unwrap(),
            "--domain",
            &domain,
        ],
    );
    let session: serde_json::Value = client
        .post(format!("{base}/api/sessions"))
        .header("content-type", "application/json")
        .body(signed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    run_in(&dir, &["credit", wallet, "1000000"]);
    // Each call: 10 words in (10) + 10 out (20) = 30; the budget covers 10 such.
    const BUDGET: u64 = 300;
    let key: serde_json::Value = client
        .post(format!("{base}/api/keys"))
        .bearer_auth(&session)
        .header("x-session-user-address", wallet)
        .header("x-chain-id", "43113")
        .json(&serde_json::json!({"budgetLimit": BUDGET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (key_id, token) = (
        key["keyId"].as_str().unwrap().to_owned(),
        key["token"].as_str().unwrap().to_owned(),
    );
    let words: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let body = serde_json::json!({"model": "echo", "max_tokens": 10,
        "messages": [{"role": "user", "content": words.join(" ")}]});
    let call = || async {
        let response = client
            .post(format!("{base}/external/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let amount = response
            .headers()
            .get("x-compose-key-final-amount-wei")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
            .unwrap_or(0);
        (status, amount)
    };
    let mut charged = 0;
    for _ in 0..4 {
        let (status, amount) = call().await;
        assert_eq!(status, 200);
        charged += amount;
    }
    assert_eq!(charged, 120);

    // The key's `budgetUsed`, as GET /api/keys/{keyId} reports it.
    let budget_used = || async {
        let view: serde_json::Value = client
            .get(format!("{base}/api/keys/{key_id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        view["budgetUsed"].as_str().unwrap().to_owned()
    };

    // Crash: no graceful shutdown, no flush.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    // The same port again: the client's URLs and the SIWE domain stay valid.
    let (server, _) = start_serving(&dir, &format!("127.0.0.1:{port}"), "second.log").await;

    let view = budget_used().await;
    assert_eq!(view, "120", "every reported charge survived the crash");
    // The dead node's budget lease still covers part of the key (its takes
    // were shares of it): until its grace (3 s) passes, the restarted node
    // spends only what no lease covers, then is refused — stricter, never
    // looser.
    let spend = || async {
        let mut spent = 0;
        loop {
            match call().await {
                (200, amount) => spent += amount,
                (402, _) => return spent,
                (status, _) => panic!("unexpected {status}"),
            }
        }
    };
    let before_grace = spend().await;
    assert!(
        before_grace < BUDGET - 120,
        "the crashed node's lease is not spent twice ({before_grace} spent of {})",
        BUDGET - 120
    );
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    // Taken back: the restarted node spends the rest from the ledger's
    // figure (within one smallest call: the tail may be clamped).
    let after_grace = spend().await;
    charged += before_grace + after_grace;
    assert!(
        charged <= BUDGET && charged + 12 > BUDGET,
        "charged {charged} of {BUDGET}"
    );
    let view = budget_used().await;
    assert_eq!(view, charged.to_string());
    drop(server);
    // No secret reaches the logs, even at debug: not the keys' tokens (nor
    // their signatures), not the signing key.
    let signing_key = std::fs::read_to_string(dir.join("data/signing.key")).unwrap();
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for log in ["first.log", "second.log"] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap();
        assert!(text.contains("HTTP request"), "{log} has the request log");
        for secret in [
            token.clone(),
            session.clone(),
            signature(&token),
            signature(&session),
            signing_key.trim().to_owned(),
        ] {
            assert!(!text.contains(&secret), "{log} leaks a secret");
        }
        assert!(!text.contains("compose-"), "{log} holds token material");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
