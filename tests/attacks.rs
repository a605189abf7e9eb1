//! The server attacked as an attacker would, end to end over real sockets
//! against the real store (SQLite and PostgreSQL): each test reproduces one
//! finding of the security review and asserts what must hold instead
//! (ARCHITECTURE.md "Invariants", 7–9).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_error, eventually, header_amount, json_of, spawn_app_with, spawn_paid_app_with, TestApp,
    Wallet, CHAIN,
};
use ledger::store::Backend;
use ledger::time::now_ms;
use ledger::{ChainId, KeyId};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn echo_slow(prompt_words: usize, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "echo_slow",
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": words(prompt_words)}],
    })
}

impl TestApp {
    async fn key_for(&self, session: &str, wallet: &Wallet, budget: u64) -> (StatusCode, Value) {
        self.create_key(
            session,
            &wallet.hex(),
            &CHAIN.to_string(),
            &json!({ "budgetLimit": budget }),
        )
        .await
    }

    /// What the wallet has been charged in all, from the store.
    async fn wallet_charged(&self, wallet: &Wallet) -> u64 {
        let mut total = 0;
        for key in self
            .store
            .keys_for_wallet(&wallet.address, None)
            .await
            .unwrap()
        {
            total += self.spent(key.id.as_str()).await.1;
        }
        total
    }

    /// Invariant 7 as the store sees it: what the wallet's keys may still
    /// spend fits what it has left.
    async fn assert_funded(&self, wallet: &Wallet) {
        let funding = self
            .store
            .funding(&wallet.address, ChainId(CHAIN), now_ms())
            .await
            .unwrap();
        assert!(
            funding.committed <= funding.available,
            "committed {} > available {}",
            funding.committed,
            funding.available
        );
    }
}

/// Finding 1 (Compose): a call still running on a revoked key keeps that
/// key's budget committed; it returns to the wallet once the call ends, and
/// at once for a key with nothing in flight.
async fn revoked_keys_stay_committed_while_their_calls_run(backend: Backend) {
    let (app, _mock) = spawn_paid_app_with(backend, &[]).await;
    let (wallet, session) = app.funded_wallet(20_000).await;

    // Nothing in flight: revoking frees the budget before the answer.
    let (_, idle) = app.key_for(&session, &wallet, 20_000).await;
    let idle_id = idle["keyId"].as_str().unwrap();
    assert_eq!(app.revoke_key(&session, idle_id).await.0, 200);
    let (status, a) = app.key_for(&session, &wallet, 12_000).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");

    // A slow stream on A (150 words at 20 ms each), then A is revoked.
    let a_token = a["token"].as_str().unwrap().to_owned();
    let a_id = a["keyId"].as_str().unwrap().to_owned();
    let running = app.chat(&a_token, &echo_slow(150, 150, true)).await;
    assert_eq!(running.status(), StatusCode::OK);
    assert_eq!(app.revoke_key(&session, &a_id).await.0, 200);
    // A's 12,000 still count: 20,000 more is refused, 8,000 fits.
    assert_error(
        &app.key_for(&session, &wallet, 20_000).await,
        402,
        "insufficient_funds",
    );
    assert_eq!(app.key_for(&session, &wallet, 8_000).await.0, 201);
    app.assert_funded(&wallet).await;

    // The stream ends and is charged: 150 in + 2 × 150 out = 450.
    let text = running.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(app.spent(&a_id).await, (450, 450));
    // Then A's remainder is free again: 20,000 − 450 charged − 8,000 = 11,550.
    assert_error(
        &app.key_for(&session, &wallet, 11_551).await,
        402,
        "insufficient_funds",
    );
    let freed = eventually(Duration::from_secs(3), || async {
        app.key_for(&session, &wallet, 11_550).await.0 == StatusCode::CREATED
    })
    .await;
    assert!(freed, "a drained key's budget must return to the wallet");
    app.assert_funded(&wallet).await;
    assert!(app.wallet_charged(&wallet).await <= 20_000);
}

/// Finding 1 (Studio): replacing a project's budget while an executor's
/// call runs on the old one never lets the wallet spend past its credit, and
/// the owner can still sign in afterwards.
async fn replacing_a_project_budget_never_overspends(backend: Backend) {
    let (app, _mock) = spawn_paid_app_with(backend, &[]).await;
    let wallet = Wallet::random();
    let boot = app.bootstrap_studio_with(&[
        "--account",
        "acme",
        "--project",
        "main",
        "--wallet",
        &wallet.hex(),
    ]);
    app.credit(&wallet, 12_288).await;
    let admin = boot["apikey"]["value"].as_str().unwrap().to_owned();
    let project = boot["project"]["id"].as_str().unwrap().to_owned();
    let path = format!("/projects/{project}/budget");
    let set = |budget: u64| {
        let (app, admin, path) = (&app, admin.clone(), path.clone());
        async move {
            app.studio(
                Method::PUT,
                &path,
                &admin,
                Some(&json!({ "budgetLimit": budget })),
            )
            .await
        }
    };
    let first = set(12_000).await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    // Nothing in flight: replacing it with the same amount works at once.
    let again = set(12_000).await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.1);
    let (status, executor) = app
        .studio(
            Method::POST,
            "/apikeys",
            &admin,
            Some(&json!({"name": "runner", "type": "sk", "role": "executor"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{executor}");
    let executor = executor["value"].as_str().unwrap().to_owned();

    let running = app.chat(&executor, &echo_slow(150, 150, true)).await;
    assert_eq!(running.status(), StatusCode::OK);
    for _ in 0..3 {
        // The old budget's 12,000 is committed while its call runs.
        assert_error(&set(12_000).await, 402, "insufficient_funds");
    }
    app.assert_funded(&wallet).await;
    let text = running.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let replaced = eventually(Duration::from_secs(3), || async {
        set(12_288 - 450).await.0 == StatusCode::OK
    })
    .await;
    assert!(
        replaced,
        "the drained budget must be free for its replacement"
    );
    assert!(app.wallet_charged(&wallet).await <= 12_288);
    app.assert_funded(&wallet).await;
    // The owner is not locked out.
    assert!(!app.sign_in(&wallet).await.is_empty());
}

/// Invariant 7 under random interleavings: sign-ins (superseding a session
/// key with a budget), key creation and revocation, project budget
/// replacement and paid calls in flight, on one wallet. After every step the
/// store's funding holds; at the end, the wallet was charged at most its
/// credit.
async fn random_interleavings_never_spend_past_the_credit(backend: Backend) {
    use rand::{Rng, SeedableRng};
    let (app, _mock) = spawn_paid_app_with(backend, &[]).await;
    let wallet = Wallet::random();
    let boot = app.bootstrap_studio_with(&[
        "--account",
        "rnd",
        "--project",
        "main",
        "--wallet",
        &wallet.hex(),
    ]);
    let admin = boot["apikey"]["value"].as_str().unwrap().to_owned();
    let project = boot["project"]["id"].as_str().unwrap().to_owned();
    let credit = 5_000;
    let mut session = app.sign_in(&wallet).await;
    app.credit(&wallet, credit).await;
    let (_, executor) = app
        .studio(
            Method::POST,
            "/apikeys",
            &admin,
            Some(&json!({"name": "runner", "type": "sk", "role": "executor"})),
        )
        .await;
    let executor = executor["value"].as_str().unwrap().to_owned();
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tokens: Vec<(String, String)> = Vec::new(); // (key id, token)
    let mut calls = Vec::new();
    for _ in 0..40 {
        match rng.gen_range(0..6) {
            0 => {
                let budget = rng.gen_range(0..2_000);
                let message = app.siwe_message(&wallet).await;
                let (status, body) = app
                    .sign_in_with(&wallet, &message, json!({ "budgetLimit": budget }))
                    .await;
                if status == StatusCode::CREATED {
                    session = body["token"].as_str().unwrap().to_owned();
                    tokens.push((body["keyId"].as_str().unwrap().into(), session.clone()));
                }
            }
            1 | 2 => {
                let (status, body) = app
                    .key_for(&session, &wallet, rng.gen_range(100..3_000))
                    .await;
                if status == StatusCode::CREATED {
                    tokens.push((
                        body["keyId"].as_str().unwrap().into(),
                        body["token"].as_str().unwrap().into(),
                    ));
                }
            }
            3 if !tokens.is_empty() => {
                let (id, _) = &tokens[rng.gen_range(0..tokens.len())];
                app.revoke_key(&session, id).await;
            }
            4 => {
                app.studio(
                    Method::PUT,
                    &format!("/projects/{project}/budget"),
                    &admin,
                    Some(&json!({ "budgetLimit": rng.gen_range(100..3_000) })),
                )
                .await;
            }
            _ => {
                // A call in flight on a random key, or on the project.
                let token = if tokens.is_empty() || rng.gen_bool(0.3) {
                    executor.clone()
                } else {
                    tokens[rng.gen_range(0..tokens.len())].1.clone()
                };
                let body = echo_slow(rng.gen_range(1..30), rng.gen_range(1..40), rng.gen());
                let client = app.client.clone();
                let url = app.url("/external/v1/chat/completions");
                calls.push(tokio::spawn(async move {
                    if let Ok(r) = client.post(url).bearer_auth(token).json(&body).send().await {
                        let _ = r.bytes().await;
                    }
                }));
            }
        }
        app.assert_funded(&wallet).await;
    }
    for call in calls {
        call.await.unwrap();
    }
    app.assert_funded(&wallet).await;
    let charged = app.wallet_charged(&wallet).await;
    assert!(
        charged <= credit,
        "seed {seed}: charged {charged} > credit {credit}"
    );
}

/// Finding 2: the SIWE domain is the server's own, never the request's
/// `Host`; the URI must be on it too.
async fn siwe_domain_is_never_taken_from_the_host(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let wallet = Wallet::random();
    let mut message = app.siwe_message(&wallet).await;
    message.domain = "evil.example".into();
    message.uri = "https://evil.example/login".into();
    let text = message.render();
    let signature = tollgate::auth::eth::sign_personal(&wallet.key, text.as_bytes()).unwrap();
    let phished = app
        .client
        .post(app.url("/api/sessions"))
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .json(&json!({ "message": text, "signature": signature }))
        .send()
        .await
        .unwrap();
    assert_error(&json_of(phished).await, 401, "domain_mismatch");
    // Our domain, someone else's URI.
    let mut message = app.siwe_message(&wallet).await;
    message.uri = "https://evil.example/login".into();
    assert_error(
        &app.sign_in_with(&wallet, &message, json!({})).await,
        401,
        "uri_mismatch",
    );
    // Loopback names of the bound address work by default.
    let mut message = app.siwe_message(&wallet).await;
    message.domain = format!("localhost:{}", app.port);
    message.uri = format!("http://localhost:{}/", app.port);
    assert_eq!(app.sign_in_with(&wallet, &message, json!({})).await.0, 201);
    assert_eq!(app.key_count(&wallet).await, 1, "only the honest sign-in");
}

/// Finding 3: a client that stops reading a stream is cut off at the call's
/// bound and charged then — before the hold could expire — for what the
/// upstream produced; it never receives more than was charged.
async fn stalled_stream_clients_are_cut_off_and_charged_in_time(backend: Backend) {
    let (app, _mock) = spawn_paid_app_with(
        backend,
        &[
            ("TOLLGATE__GATEWAY__STREAM_MAX_MS", "1500"),
            ("TOLLGATE__GATEWAY__HOLD_SLACK_MS", "2000"),
        ],
    )
    .await;
    let key = app.paid_key(1_000_000).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(format!("127.0.0.1:{}", app.port).parse().unwrap())
        .await
        .unwrap();
    let body = json!({"model": "mock_flood", "stream": true, "max_tokens": 1000,
                      "messages": [{"role": "user", "content": "flood"}]})
    .to_string();
    let request = format!(
        "POST /external/v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         authorization: Bearer {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        key.token,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    // The client reads nothing. By the bound (1.5 s) plus a margin, and well
    // before the hold expires (3.5 s), the charge is in the ledger.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let charges = app
        .store
        .charges_for_key(&KeyId::parse(&key.key_id).unwrap())
        .await
        .unwrap();
    assert_eq!(charges.len(), 1, "charged by the bound, not after");
    assert!(started.elapsed() < Duration::from_millis(3_500));
    let charged_output = charges[0].output_tokens;
    // Now read whatever reached the client: no more than was charged, and
    // the stream was cut (no [DONE], no clean end).
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 65536];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "a cut-off client's connection must close");
    let text = String::from_utf8_lossy(&received);
    // Raw chunked HTTP: count the content events themselves.
    let delivered = text.matches("\"content\":\"x").count() as u64;
    assert!(delivered > 0, "the stream started");
    assert!(
        delivered <= u64::from(charged_output),
        "delivered {delivered} chunks, charged {charged_output}"
    );
    assert!(
        !text.contains("[DONE]"),
        "a cut stream does not end cleanly"
    );
    assert!(delivered < 1000, "the upstream was stopped early");
    // The flood sent no usage before the cut: the charge is an estimate of
    // what was delivered (its bytes, at most the output bound), marked so.
    assert_eq!(charges[0].reported, None);
    let (used, sum) = app.spent(&key.key_id).await;
    assert_eq!(used, sum);
}

/// Finding 4: a key created with a session's token as that session is
/// superseded is either refused or superseded with it — never left active.
async fn keys_never_outlive_a_superseded_session(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (wallet, mut session) = app.funded_wallet(1_000_000).await;
    for _ in 0..8 {
        let old = session.clone();
        let creations = (0..4).map(|_| {
            let app = &app;
            let (old, wallet) = (old.clone(), wallet.hex());
            async move {
                app.create_key(
                    &old,
                    &wallet,
                    &CHAIN.to_string(),
                    &json!({"budgetLimit": 1, "purpose": "session"}),
                )
                .await
            }
        });
        let sign_in = app.sign_in(&wallet);
        let (new_session, created) =
            tokio::join!(sign_in, futures_util::future::join_all(creations));
        session = new_session;
        for (status, body) in created {
            assert!(
                status == StatusCode::CREATED || status == StatusCode::UNAUTHORIZED,
                "{status} {body}"
            );
            if status == StatusCode::CREATED {
                // Created under the old session: it must have been superseded.
                let (status, _) = app
                    .get_key(
                        body["token"].as_str().unwrap(),
                        body["keyId"].as_str().unwrap(),
                    )
                    .await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "a key outlived its session"
                );
            }
        }
    }
    // At rest: no active key is bound to an inactive session.
    for key in app
        .store
        .keys_for_wallet(&wallet.address, None)
        .await
        .unwrap()
    {
        if let (Some(sid), ledger::model::KeyStatus::Active) = (&key.session_id, key.status) {
            let session = app.store.session(sid).await.unwrap().unwrap();
            assert!(
                session.active,
                "active key {} of a superseded session",
                key.id
            );
        }
    }
}

/// Finding 6: keys that cannot spend take no actor slot, a full registry
/// evicts its least recently used idle actor, and sign-ins are rate-limited
/// per address.
async fn free_keys_cannot_crowd_out_funded_ones(backend: Backend) {
    let (app, _mock) = spawn_paid_app_with(
        backend,
        &[
            ("TOLLGATE__GATEWAY__LOADED_KEYS_MAX", "2"),
            ("TOLLGATE__AUTH__SIGN_IN_BURST", "30"),
        ],
    )
    .await;
    let call = json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..6 {
        let session = app.sign_in(&Wallet::random()).await; // budget 0
        let response = app.chat(&session, &call).await;
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(
            common::header_amount(&response, "x-compose-key-budget-limit"),
            0
        );
    }
    // Three funded keys through two slots: the idle one makes room.
    let keys = [
        app.paid_key(1_000).await,
        app.paid_key(1_000).await,
        app.paid_key(1_000).await,
    ];
    for _ in 0..2 {
        for key in &keys {
            assert_eq!(app.chat(&key.token, &call).await.status(), StatusCode::OK);
        }
    }
    // A flood of nonce requests from one address meets the limit (429).
    let mut limited = None;
    for i in 0..40 {
        let response = app
            .client
            .get(app.url("/api/sessions/nonce"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, json_of(response).await));
            break;
        }
    }
    let (_, (_, refused)) = limited.expect("the sign-in rate limit never answered 429");
    assert_eq!(refused["error"]["code"], "too_many_requests");
}

/// Finding 8: a forged token for a key whose actor runs is refused before
/// the body is read (401, not 415/404).
async fn forged_tokens_are_refused_before_the_body(backend: Backend) {
    let (app, _mock) = spawn_paid_app_with(backend, &[]).await;
    let key = app.paid_key(1_000).await;
    let call = json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(app.chat(&key.token, &call).await.status(), StatusCode::OK);
    // Same claims, another signature: decodes, but is not the token issued.
    let (claims, _) = key.token.rsplit_once('.').unwrap();
    let forged = format!("{claims}.{}", "A".repeat(86));
    let response = app
        .client
        .post(app.url("/external/v1/chat/completions"))
        .bearer_auth(&forged)
        .header("content-type", "text/plain")
        .body("not json at all")
        .send()
        .await
        .unwrap();
    assert_error(&json_of(response).await, 401, "invalid_token");
}

/// Finding 9: a body that never arrives whole gets 408 within the timeout.
async fn slow_bodies_get_408(backend: Backend) {
    let app = spawn_app_with(backend, &[("TOLLGATE__HTTP__BODY_TIMEOUT_MS", "800")]).await;
    let mut stream = TcpStream::connect(format!("127.0.0.1:{}", app.port))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /api/sessions HTTP/1.1\r\nhost: 127.0.0.1\r\n\
              content-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("no answer to a slow body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Finding 10: issuing a nonce prunes a bounded number of expired ones by
/// the age index, so its cost does not grow with the table.
async fn nonce_pruning_is_bounded(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let now = now_ms();
    for i in 0..50 {
        app.store
            .issue_nonce(&format!("old{i}"), now - 1_000_000, 0)
            .await
            .unwrap();
    }
    for i in 0..5 {
        app.store
            .issue_nonce(&format!("new{i}"), now, now - 600_000)
            .await
            .unwrap();
    }
    // Each of the 5 issues removed a few expired nonces, oldest first —
    // not all 50 at once, and not none.
    let left = app.store.nonce_count().await.unwrap();
    assert!((55 - 5 * 4..55).contains(&left), "{left} nonces left");
}

/// Finding 11: no call is free, so a budget bounds the rows it can write.
async fn zero_cost_calls_are_not_free(backend: Backend) {
    let (app, _mock) = spawn_paid_app_with(backend, &[]).await;
    // An empty prompt's hold is one output token (2); each call costs 1.
    let key = app.paid_key(3).await;
    let empty = json!({"model": "echo", "messages": [{"role": "user", "content": ""}]});
    let mut paid = 0;
    for _ in 0..10 {
        if app.chat(&key.token, &empty).await.status() == StatusCode::OK {
            paid += 1;
        }
    }
    assert_eq!(paid, 2, "each empty call costs the minimum of 1; then 402");
    let charges = app
        .store
        .charges_for_key(&KeyId::parse(&key.key_id).unwrap())
        .await
        .unwrap();
    assert_eq!(charges.len(), 2);
    assert_eq!(app.spent(&key.key_id).await, (2, 2));
}

/// Finding 12: names refuse bidi controls; the SQLite ledger is private.
async fn bidi_names_are_refused_and_the_ledger_is_private(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (wallet, session) = app.funded_wallet(100).await;
    let got = app
        .create_key(
            &session,
            &wallet.hex(),
            &CHAIN.to_string(),
            &json!({"budgetLimit": 1, "name": "gpt\u{202E}live"}),
        )
        .await;
    assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", got.1);
    assert_eq!(got.1["error"]["param"], "name");
    assert_eq!(app.key_count(&wallet).await, 1, "only the session key");
    #[cfg(unix)]
    if backend == Backend::Sqlite {
        use std::os::unix::fs::PermissionsExt;
        let path = app.db.url.trim_start_matches("sqlite://");
        let path = path.split('?').next().unwrap();
        for file in [path.to_owned(), format!("{path}-wal")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
        }
    }
}

/// A stalled store under a charge (invariant 8): the charge write waits on
/// a row lock held past the hold's own deadline (1 s bound + 0.5 s slack),
/// and all the while the hold keeps the budget it covers — a second call
/// finds nothing left instead of spending it again. Once the store answers,
/// the call is charged exactly once. PostgreSQL only: its row locks wait
/// without a timeout, where SQLite's busy timeout would fail the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_cannot_free_the_hold_under_its_charge() {
    use sqlx::Connection;
    let (app, _mock) = spawn_paid_app_with(
        Backend::Postgres,
        &[
            ("TOLLGATE__GATEWAY__UPSTREAM_TIMEOUT_MS", "1000"),
            ("TOLLGATE__GATEWAY__HOLD_SLACK_MS", "500"),
        ],
    )
    .await;
    let key = app.paid_key(40).await;
    // A first small call that asks for far more than the key takes the
    // node's budget lease — the whole key: a take gives at least what the
    // call is short of — before the store stalls: what stalls below is the
    // charge itself. It is charged for its one word in and one out.
    let warm_up = app
        .chat(
            &key.token,
            &json!({"model": "echo", "max_tokens": 1000,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(warm_up.status(), StatusCode::OK);
    let warm_up = header_amount(&warm_up, "x-compose-key-final-amount-wei");
    // 10 words in (10) and at most 10 out (20): the hold is all that is left.
    let words: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let body = json!({"model": "echo", "max_tokens": 1000,
                      "messages": [{"role": "user", "content": words.join(" ")}]});
    let mut stall = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut lock = stall.begin().await.unwrap();
    sqlx::query("SELECT id FROM keys WHERE id = $1 FOR UPDATE")
        .bind(&key.key_id)
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    let first = {
        let (client, url, token, body) = (
            app.client.clone(),
            app.url("/external/v1/chat/completions"),
            key.token.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    // Well past the first hold's deadline, its charge still waiting.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(
        !first.is_finished(),
        "the charge waits on the stalled store"
    );
    let second = tokio::time::timeout(Duration::from_secs(10), app.chat(&key.token, &body))
        .await
        .expect("a call on a fully held key is refused at once");
    assert_eq!(second.status(), StatusCode::PAYMENT_REQUIRED);
    lock.rollback().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the charge lands once the store answers")
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header_amount(&first, "x-compose-key-final-amount-wei"), 30);
    assert_eq!(app.spent(&key.key_id).await, (warm_up + 30, warm_up + 30));
}

both_stores!(
    revoked_keys_stay_committed_while_their_calls_run,
    replacing_a_project_budget_never_overspends,
    random_interleavings_never_spend_past_the_credit,
    siwe_domain_is_never_taken_from_the_host,
    stalled_stream_clients_are_cut_off_and_charged_in_time,
    keys_never_outlive_a_superseded_session,
    free_keys_cannot_crowd_out_funded_ones,
    forged_tokens_are_refused_before_the_body,
    slow_bodies_get_408,
    nonce_pruning_is_bounded,
    zero_cost_calls_are_not_free,
    bidi_names_are_refused_and_the_ledger_is_private,
);
