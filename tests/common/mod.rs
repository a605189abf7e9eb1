//! `spawn_app()`: the real server on port 0 against a fresh database, plus a
//! client with one method per endpoint and a real secp256k1 wallet.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod mock_upstream;
pub mod process;

use std::net::TcpListener;

use k256::ecdsa::SigningKey;
use ledger::store::Backend;
use ledger::testing::TestDb;
use ledger::time::now_ms;
use ledger::{Amount, ChainId, Store, WalletAddress};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tollgate::auth::eth;
use tollgate::auth::siwe::SiweMessage;
use tollgate::settings::Settings;
use tollgate::startup::Application;

pub const CHAIN: u64 = 43113;

/// The RabbitMQ broker every machine here runs (or `TOLLGATE_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("TOLLGATE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A calls queue of the test's own, so tests run in parallel.
pub fn queue_name() -> String {
    format!("test-calls-{}", uuid::Uuid::now_v7().simple())
}

/// Removes a test's calls queue (best effort: its name is unique anyway).
pub async fn delete_queue(name: &str) {
    let queue = workers::queue::Queue::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let _ = queue.delete(name).await;
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// `http.admin_bind`'s port, when the test set one.
    pub admin_port: Option<u16>,
    pub client: reqwest::Client,
    pub store: Store,
    pub db: TestDb,
    pub settings: Settings,
    /// Tells the server to shut down (sent on drop: every test's server stops).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), tollgate::startup::StartupError>>>,
    _dir: TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestApp {
    /// Shuts the server down as a signal would, and waits until it has
    /// drained and stopped; answers how it stopped.
    pub async fn shut_down(&mut self) -> Result<(), tollgate::startup::StartupError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.running.take() {
            Some(running) => running.await.expect("the server task panicked"),
            None => Ok(()),
        }
    }
}

/// A temporary folder removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An Ethereum wallet with a random key.
pub struct Wallet {
    pub key: SigningKey,
    pub address: WalletAddress,
}

impl Wallet {
    pub fn random() -> Wallet {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let address = eth::address_of(key.verifying_key());
        Wallet { key, address }
    }

    pub fn hex(&self) -> String {
        self.address.to_string()
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

/// Starts the server with extra `TOLLGATE__…` settings.
pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let db = TestDb::create(backend).await;
    let dir = TempDir(
        std::env::temp_dir().join(format!("tollgate-app-{}", uuid::Uuid::now_v7().simple())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let key_file = dir.0.join("signing.key").display().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("TOLLGATE__STORE__URL".into(), db.url.clone()),
        ("TOLLGATE__AUTH__SIGNING_KEY_FILE".into(), key_file),
        (
            "TOLLGATE__STUDIO__SECRETS_KEY_FILE".into(),
            dir.0.join("studio.key").display().to_string(),
        ),
        ("TOLLGATE__HTTP__WORKERS".into(), "2".into()),
        ("TOLLGATE__LOG__FILTER".into(), "warn".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::load_with_env(None, env).expect("test settings");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let app = Application::build_on(settings.clone(), listener)
        .await
        .expect("build app");
    let port = app.port();
    let admin_port = app.admin_port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let store = Store::connect(&db.url, 4).await.unwrap();
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        admin_port,
        client: reqwest::Client::new(),
        store,
        db,
        settings,
        stop: Some(stop),
        running: Some(running),
        _dir: dir,
    }
}

pub async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("body is not JSON ({status}): {text}"));
    (status, body)
}

/// Asserts an error answer: status, `error.code`, and the JSON error shape.
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "unexpected status, body: {}", got.1);
    assert_eq!(
        got.1["error"]["code"], code,
        "unexpected code, body: {}",
        got.1
    );
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

impl TestApp {
    /// Runs `tollgate studio bootstrap` (the real binary) against this app's
    /// store and secrets; returns its JSON: `{account, project, apikey}`.
    pub fn bootstrap_studio(&self, account: &str) -> Value {
        self.bootstrap_studio_with(&["--account", account, "--project", "main"])
    }

    /// The settings a process of the binary needs to run beside this app:
    /// its store, its token signing key and its Studio secrets key.
    pub fn shared_env(&self) -> Vec<(&'static str, String)> {
        let file = |name: &str| self.file(name).display().to_string();
        vec![
            ("TOLLGATE__STORE__URL", self.db.url.clone()),
            ("TOLLGATE__AUTH__SIGNING_KEY_FILE", file("signing.key")),
            ("TOLLGATE__STUDIO__SECRETS_KEY_FILE", file("studio.key")),
        ]
    }

    /// `tollgate studio bootstrap` with these arguments.
    pub fn bootstrap_studio_with(&self, args: &[&str]) -> Value {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["studio", "bootstrap"])
            .args(args)
            .envs(self.shared_env())
            .env("TOLLGATE__LOG__FILTER", "warn")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "bootstrap: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// A file of this app's own folder (its signing key: `signing.key`,
    /// its Studio secrets key: `studio.key`).
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self._dir.0.join(name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn domain(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn nonce(&self) -> String {
        let (status, body) = json_of(
            self.client
                .get(self.url("/api/sessions/nonce"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        body["nonce"].as_str().unwrap().to_owned()
    }

    /// A SIWE message for `wallet` with a fresh nonce.
    pub async fn siwe_message(&self, wallet: &Wallet) -> SiweMessage {
        SiweMessage {
            domain: self.domain(),
            address: wallet.address,
            statement: Some("Sign in to Tollgate.".into()),
            uri: self.address.clone(),
            version: "1".into(),
            chain_id: ChainId(CHAIN),
            nonce: self.nonce().await,
            issued_at_ms: now_ms(),
            expiration_time_ms: Some(now_ms() + 3_600_000),
            not_before_ms: None,
        }
    }

    pub async fn post_session(&self, body: &Value) -> (StatusCode, Value) {
        json_of(
            self.client
                .post(self.url("/api/sessions"))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Signs `message` with `wallet` and posts it.
    pub async fn sign_in_with(
        &self,
        wallet: &Wallet,
        message: &SiweMessage,
        extra: Value,
    ) -> (StatusCode, Value) {
        let text = message.render();
        let signature = eth::sign_personal(&wallet.key, text.as_bytes()).unwrap();
        let mut body = json!({ "message": text, "signature": signature });
        if let Value::Object(extra) = extra {
            body.as_object_mut().unwrap().extend(extra);
        }
        self.post_session(&body).await
    }

    /// Signs in and returns the session key's token.
    pub async fn sign_in(&self, wallet: &Wallet) -> String {
        let message = self.siwe_message(wallet).await;
        let (status, body) = self.sign_in_with(wallet, &message, json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// A new wallet, signed in, with `atomic` credited: (wallet, session token).
    pub async fn funded_wallet(&self, atomic: u64) -> (Wallet, String) {
        let wallet = Wallet::random();
        let session = self.sign_in(&wallet).await;
        self.credit(&wallet, atomic).await;
        (wallet, session)
    }

    pub async fn credit(&self, wallet: &Wallet, atomic: u64) {
        self.store
            .credit(
                &wallet.address,
                ChainId(CHAIN),
                Amount::from_atomic(atomic).unwrap(),
                "test",
                now_ms(),
            )
            .await
            .unwrap();
    }

    pub async fn create_key(
        &self,
        token: &str,
        wallet: &str,
        chain: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let request = self
            .client
            .post(self.url("/api/keys"))
            .bearer_auth(token)
            .header("x-session-user-address", wallet)
            .header("x-chain-id", chain)
            .json(body);
        json_of(request.send().await.unwrap()).await
    }

    pub async fn list_keys(&self, token: &str, wallet: &str) -> (StatusCode, Value) {
        let request = self
            .client
            .get(self.url("/api/keys"))
            .bearer_auth(token)
            .header("x-session-user-address", wallet);
        json_of(request.send().await.unwrap()).await
    }

    pub async fn get_key(&self, token: &str, key_id: &str) -> (StatusCode, Value) {
        json_of(
            self.client
                .get(self.url(&format!("/api/keys/{key_id}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn revoke_key(&self, token: &str, key_id: &str) -> (StatusCode, Value) {
        json_of(
            self.client
                .delete(self.url(&format!("/api/keys/{key_id}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A Studio call: `method` on `/api/v1{path}` with `bearer`.
    pub async fn studio(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, self.url(&format!("/api/v1{path}")))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(body);
        }
        json_of(request.send().await.unwrap()).await
    }

    /// How many keys the wallet has, straight from the store.
    pub async fn key_count(&self, wallet: &Wallet) -> usize {
        self.store
            .keys_for_wallet(&wallet.address, None)
            .await
            .unwrap()
            .len()
    }
}

/// The upstream API key the paid tests configure (the mock sees it).
pub const UPSTREAM_KEY: &str = "sk-upstream-test";

/// The server with the mock upstream's models configured beside `echo`:
/// `mock_ok`, `mock_500`, `mock_slow`, `mock_broken_stream` (1 s upstream
/// timeout), `mock_flood`, and `echo_slow` (echo with 20 ms between
/// streamed words).
pub async fn spawn_paid_app(backend: Backend) -> (TestApp, mock_upstream::MockUpstream) {
    spawn_paid_app_with(backend, &[]).await
}

/// As [`spawn_paid_app`], with extra `TOLLGATE__…` settings.
pub async fn spawn_paid_app_with(
    backend: Backend,
    extra: &[(&str, &str)],
) -> (TestApp, mock_upstream::MockUpstream) {
    let mock = mock_upstream::start(TcpListener::bind("127.0.0.1:0").unwrap(), 1, true);
    let mut env: Vec<(String, String)> = vec![
        (
            "TOLLGATE__GATEWAY__UPSTREAM_TIMEOUT_MS".into(),
            "1000".into(),
        ),
        (
            "TOLLGATE__GATEWAY__STREAM_IDLE_TIMEOUT_MS".into(),
            "1000".into(),
        ),
    ];
    let models = [
        ("MOCK_OK", mock.base_url.as_str()),
        ("MOCK_500", mock.base_url.as_str()),
        ("MOCK_SLOW", mock.base_url.as_str()),
        ("MOCK_DELAYED", mock.base_url.as_str()),
        ("MOCK_BROKEN_STREAM", mock.base_url.as_str()),
        ("MOCK_FLOOD", mock.base_url.as_str()),
        ("ECHO_SLOW", "echo"),
    ];
    for (name, upstream) in models {
        let key = |field: &str| format!("TOLLGATE__MODELS__{name}__{field}");
        env.extend([
            (key("UPSTREAM"), upstream.to_owned()),
            (key("PRICE_VERSION"), "test-1".to_owned()),
            (key("INPUT_ATOMIC_PER_MILLION"), "1000000".to_owned()),
            (key("OUTPUT_ATOMIC_PER_MILLION"), "2000000".to_owned()),
            (key("MAX_OUTPUT_TOKENS"), "1000".to_owned()),
        ]);
        if upstream == "echo" {
            env.push((key("ECHO_WORD_DELAY_MS"), "20".to_owned()));
        } else {
            env.push((key("API_KEY"), UPSTREAM_KEY.to_owned()));
        }
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (spawn_app_with(backend, &env).await, mock)
}

/// An `api` key with `budget` atomic units, on a freshly funded wallet.
pub struct PaidKey {
    pub wallet: Wallet,
    pub session: String,
    pub key_id: String,
    pub token: String,
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.trim().strip_prefix("data: ").map(str::to_owned))
        .collect()
}

/// The atomic amount in header `name`.
pub fn header_amount(response: &Response, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

impl TestApp {
    pub async fn paid_key(&self, budget: u64) -> PaidKey {
        let (wallet, session) = self.funded_wallet(budget + 1_000_000).await;
        let (status, body) = self
            .create_key(
                &session,
                &wallet.hex(),
                &CHAIN.to_string(),
                &json!({ "budgetLimit": budget, "name": "paid" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        PaidKey {
            key_id: body["keyId"].as_str().unwrap().to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
            wallet,
            session,
        }
    }

    /// How many of `reported` (request id → final amount a client was
    /// told) have no charge of exactly that amount in the ledger.
    pub async fn charges_missing(
        &self,
        reported: &std::collections::HashMap<String, u64>,
    ) -> usize {
        let mut missing = 0;
        for (id, amount) in reported {
            let request = ledger::RequestId::parse(id).unwrap();
            let charge = self.store.charge(&request).await.unwrap();
            if charge.map(|c| c.amount.atomic()) != Some(*amount) {
                missing += 1;
            }
        }
        missing
    }

    /// `GET /metrics` (no token), as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `POST /external/v1/chat/completions` with `token`.
    pub async fn chat(&self, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url("/external/v1/chat/completions"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The key's `budgetUsed` and the sum of its charges, from the store.
    pub async fn spent(&self, key_id: &str) -> (u64, u64) {
        let id = ledger::KeyId::parse(key_id).unwrap();
        let key = self.store.key(&id).await.unwrap().unwrap();
        let charged = self.store.sum_of_charges(&id).await.unwrap();
        (key.budget_used.atomic(), charged.atomic())
    }
}

/// 10 words in and at most 10 out on `echo`: 10 + 20 = 30 per call.
pub fn thirty() -> Value {
    let words: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    json!({"model": "echo", "max_tokens": 10,
           "messages": [{"role": "user", "content": words.join(" ")}]})
}

/// One paid call of [`thirty`] with `token` on the node at `base`:
/// (status, final amount, error code).
pub async fn call_thirty(client: &reqwest::Client, base: &str, token: &str) -> (u16, u64, String) {
    let response = client
        .post(format!("{base}/external/v1/chat/completions"))
        .bearer_auth(token)
        .json(&thirty())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let amount = if status == 200 {
        header_amount(&response, "x-compose-key-final-amount-wei")
    } else {
        0
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, amount, code)
}

/// Named cases of one table: every case runs, and the test fails at the end
/// listing each case that answered otherwise — the first failure does not
/// hide the rest.
#[derive(Default)]
pub struct Cases {
    failures: Vec<String>,
}

impl Cases {
    /// An error answer: its status, `error.code`, and `error.param` when given.
    pub fn error(
        &mut self,
        case: &str,
        got: &(StatusCode, Value),
        status: u16,
        code: &str,
        param: Option<&str>,
    ) {
        let param_ok = param.is_none_or(|p| got.1["error"]["param"] == p);
        let message_ok = got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty());
        if got.0.as_u16() != status || got.1["error"]["code"] != code || !param_ok || !message_ok {
            self.failures.push(format!(
                "{case}: expected {status} {code}{}, got {} {}",
                param.map(|p| format!(" (param {p})")).unwrap_or_default(),
                got.0,
                got.1
            ));
        }
    }

    /// Fails the test with every case that went wrong.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// Retries `attempt` every 50 ms until it returns true, for at most
/// `within`: awaits a condition instead of sleeping for a guessed time.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if attempt().await {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs each named async test fn against SQLite and PostgreSQL.
#[macro_export]
macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        both_stores!(@on sqlite, Sqlite, $($case),*);
        both_stores!(@on postgres, Postgres, $($case),*);
    };
    (@on $module:ident, $backend:ident, $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(ledger::store::Backend::$backend).await;
                }
            )*
        }
    };
}

/// Runs `tests/<script>` (a client on an official Python SDK) with `args`;
/// its one JSON report. Python and the SDKs must be installed (scripts/test
/// installs tests/requirements.txt): without them the test fails.
pub async fn python(script: &str, args: &[&str]) -> Value {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = format!("{script} {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(path)
            .args(args)
            .output()
            .expect("python3 must be installed (scripts/test installs the SDKs)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{shown} failed (are tests/requirements.txt installed?): {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{shown} printed no JSON ({e}): {stdout}"))
}
