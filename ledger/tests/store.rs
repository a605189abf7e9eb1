//! The store test suite. Every case runs against SQLite and PostgreSQL, each
//! on a fresh database, so both stores keep the same promises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ledger::model::{
    AccountRecord, ApiKeyRecord, ApiKeyType, ApiKeyUpdate, ChargeOutcome, ChargeRecord,
    ChargeWrite, Funds, KeyRecord, KeyStatus, NewCharge, NewKey, NewSession, ProjectRecord,
    Purpose, Role,
};
use ledger::store::Backend;
use ledger::testing::TestDb;
use ledger::time::now_ms;
use ledger::{
    AccountId, Amount, ApiKeyId, ChainId, KeyId, LeaseId, ProjectId, RequestId, SessionId, Store,
    StoreError, WalletAddress,
};

const CHAIN: ChainId = ChainId(43113);
const DAY_MS: i64 = 86_400_000;

fn wallet(n: u8) -> WalletAddress {
    WalletAddress::from_bytes([n; 20])
}

fn usdc(n: u64) -> Amount {
    Amount::from_atomic(n * 1_000_000).unwrap()
}

fn new_key(owner: WalletAddress, budget: Amount) -> NewKey {
    let id = KeyId::generate();
    NewKey {
        token_sha256: format!("hash-of-{id}"),
        id,
        wallet: owner,
        chain_id: CHAIN,
        purpose: Purpose::Api,
        session_id: None,
        name: "test".into(),
        budget_limit: budget,
        created_at_ms: now_ms(),
        expires_at_ms: now_ms() + DAY_MS,
        funds: Funds::Prepaid,
    }
}

fn charge(key: &KeyId, amount: Amount) -> NewCharge {
    NewCharge {
        request_id: RequestId::generate(),
        key_id: key.clone(),
        model: "echo".into(),
        price_version: "v1".into(),
        input_tokens: 3,
        cached_input_tokens: 2,
        cache_write_tokens: 1,
        output_tokens: 5,
        amount,
        reported: Some((3, 5)),
        reported_cache: Some((2, 1)),
        created_at_ms: now_ms(),
        lease: None,
        client_request_id: None,
    }
}

/// A key with `budget_atomic`, its wallet credited 1 USDC.
async fn funded_key(store: &Store, owner: WalletAddress, budget_atomic: u64) -> KeyRecord {
    store
        .credit(&owner, CHAIN, usdc(1), "test", now_ms())
        .await
        .unwrap();
    store
        .create_key(
            &new_key(owner, Amount::from_atomic(budget_atomic).unwrap()),
            10,
        )
        .await
        .unwrap()
}

async fn credit_and_key_lifecycle(store: Store) {
    let owner = wallet(1);
    assert_eq!(
        store.balance(&owner, CHAIN).await.unwrap().credited,
        Amount::ZERO
    );
    let balance = store
        .credit(&owner, CHAIN, usdc(5), "test", now_ms())
        .await
        .unwrap();
    assert_eq!(balance.credited, usdc(5));

    let key = store
        .create_key(&new_key(owner, usdc(3)), 10)
        .await
        .unwrap();
    assert_eq!(key.budget_limit, usdc(3));
    assert_eq!(key.budget_used, Amount::ZERO);
    assert_eq!(key.status, KeyStatus::Active);
    assert_eq!(store.key(&key.id).await.unwrap(), Some(key.clone()));

    let funding = store.funding(&owner, CHAIN, now_ms()).await.unwrap();
    assert_eq!(funding.available, usdc(5));
    assert_eq!(funding.committed, usdc(3));

    // 3 committed + 3 requested > 5 available.
    match store.create_key(&new_key(owner, usdc(3)), 10).await {
        Err(StoreError::InsufficientFunds {
            required,
            available,
            committed,
            on_chain: None,
        }) => {
            assert_eq!(
                (required, available, committed),
                (usdc(3), usdc(5), usdc(3))
            );
        }
        other => panic!("expected InsufficientFunds, got {other:?}"),
    }
    // Exactly what is left still fits.
    let second = store
        .create_key(&new_key(owner, usdc(2)), 10)
        .await
        .unwrap();

    let listed = store.keys_for_wallet(&owner, None).await.unwrap();
    assert_eq!(
        listed.iter().map(|k| &k.id).collect::<Vec<_>>(),
        vec![&second.id, &key.id]
    );
    assert!(store
        .keys_for_wallet(&wallet(2), None)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .keys_for_wallet(&owner, Some(ChainId(1)))
        .await
        .unwrap()
        .is_empty());

    // Revoking keeps the budget committed (calls may still run on the key)
    // until the gateway reports it drained; revoking twice changes nothing.
    let committed = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .funding(&owner, CHAIN, now_ms())
                .await
                .unwrap()
                .committed
        }
    };
    let before = committed(&store).await;
    let revoked = store.revoke_key(&key.id, now_ms()).await.unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    let again = store.revoke_key(&key.id, now_ms() + 5).await.unwrap();
    assert_eq!(again.revoked_at_ms, revoked.revoked_at_ms);
    assert_eq!(committed(&store).await, before);
    store.release_key_funds(&key.id, now_ms()).await.unwrap();
    assert_eq!(
        store
            .funding(&owner, CHAIN, now_ms())
            .await
            .unwrap()
            .committed,
        usdc(2)
    );
    assert!(matches!(
        store.revoke_key(&KeyId::generate(), now_ms()).await,
        Err(StoreError::NotFound)
    ));
}

/// An expired key commits its budget until the longest hold made before its
/// expiry could have ended, then nothing.
async fn expired_keys_commit_nothing(store: Store) {
    let store = store.with_hold_max_ms(100);
    let owner = wallet(3);
    store
        .credit(&owner, CHAIN, usdc(1), "test", now_ms())
        .await
        .unwrap();
    let mut key = new_key(owner, usdc(1));
    key.expires_at_ms = now_ms() + 50;
    let key = store.create_key(&key, 10).await.unwrap();
    assert_eq!(key.status_at(key.expires_at_ms), KeyStatus::Expired);
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert_eq!(
        store
            .funding(&owner, CHAIN, now_ms())
            .await
            .unwrap()
            .committed,
        usdc(1),
        "a call that started just before expiry may still be running"
    );
    tokio::time::sleep(std::time::Duration::from_millis(110)).await;
    assert_eq!(
        store
            .funding(&owner, CHAIN, now_ms())
            .await
            .unwrap()
            .committed,
        Amount::ZERO
    );
    store
        .create_key(&new_key(owner, usdc(1)), 10)
        .await
        .unwrap();
}

async fn active_key_count_is_bounded(store: Store) {
    let owner = wallet(4);
    for _ in 0..3 {
        store
            .create_key(&new_key(owner, Amount::ZERO), 3)
            .await
            .unwrap();
    }
    assert!(matches!(
        store.create_key(&new_key(owner, Amount::ZERO), 3).await,
        Err(StoreError::TooManyKeys { max: 3 })
    ));
}

async fn credits_are_bounded_and_checked(store: Store) {
    let owner = wallet(5);
    let max = ledger::store::balances::CREDIT_MAX;
    assert!(matches!(
        store
            .credit(&owner, CHAIN, Amount::ZERO, "", now_ms())
            .await,
        Err(StoreError::AmountOverflow)
    ));
    let too_much = max.checked_add(Amount::from_atomic(1).unwrap()).unwrap();
    assert!(matches!(
        store.credit(&owner, CHAIN, too_much, "", now_ms()).await,
        Err(StoreError::AmountOverflow)
    ));
    // A balance one maximal credit short of the column's maximum, then one
    // credit too many: refused, and nothing changes.
    let credited = Amount::from_atomic(Amount::MAX.atomic() - max.atomic() + 1).unwrap();
    ledger::testing::set_credited(&store, &owner, CHAIN, credited).await;
    let before = store.balance(&owner, CHAIN).await.unwrap();
    assert_eq!(before.credited, credited);
    assert!(matches!(
        store.credit(&owner, CHAIN, max, "", now_ms()).await,
        Err(StoreError::AmountOverflow)
    ));
    assert_eq!(store.balance(&owner, CHAIN).await.unwrap(), before);
}

/// Many concurrent creations on one wallet never commit more than its funds.
async fn concurrent_key_creation_never_overcommits(store: Store) {
    let owner = wallet(6);
    store
        .credit(&owner, CHAIN, usdc(10), "test", now_ms())
        .await
        .unwrap();
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.create_key(&new_key(owner, usdc(1)), 100).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::InsufficientFunds { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 10, "exactly the funded number of keys is created");
    let funding = store.funding(&owner, CHAIN, now_ms()).await.unwrap();
    assert_eq!(funding.committed, usdc(10));
}

async fn sessions_supersede_and_nonces_are_single_use(store: Store) {
    let owner = wallet(7);
    let now = now_ms();
    let sign_in = |nonce: &str| {
        let id = SessionId::generate();
        let mut key = new_key(owner, Amount::ZERO);
        key.purpose = Purpose::Session;
        key.session_id = Some(id.clone());
        NewSession {
            id,
            nonce: nonce.into(),
            nonce_issued_after_ms: now - 60_000,
            key,
            drained_keys: Vec::new(),
        }
    };
    // Unknown nonce.
    assert!(matches!(
        store.create_session(&sign_in("never-issued"), 10).await,
        Err(StoreError::NonceRejected)
    ));

    store
        .issue_nonce("nonce-one", now, now - 60_000)
        .await
        .unwrap();
    let first_sign_in = store
        .create_session(&sign_in("nonce-one"), 10)
        .await
        .unwrap();
    let (first, first_key) = (first_sign_in.session, first_sign_in.key);
    assert!(first_sign_in.superseded_keys.is_empty());
    assert!(first.active);
    assert_eq!(first_key.session_id.as_ref(), Some(&first.id));
    // Replay of the same nonce.
    assert!(matches!(
        store.create_session(&sign_in("nonce-one"), 10).await,
        Err(StoreError::NonceRejected)
    ));

    store
        .issue_nonce("nonce-two", now, now - 60_000)
        .await
        .unwrap();
    let second_sign_in = store
        .create_session(&sign_in("nonce-two"), 10)
        .await
        .unwrap();
    let second = second_sign_in.session;
    assert_eq!(
        second_sign_in.superseded_keys,
        vec![first_key.id.clone()],
        "the replaced session's keys are named, so their actors can be told"
    );
    assert!(second.active);
    assert!(!store.session(&first.id).await.unwrap().unwrap().active);
    assert_eq!(
        store.key(&first_key.id).await.unwrap().unwrap().status,
        KeyStatus::Superseded
    );

    // A sign-in refused for funds changes nothing: nonce unused, old session active.
    store
        .issue_nonce("nonce-three", now, now - 60_000)
        .await
        .unwrap();
    let mut costly = sign_in("nonce-three");
    costly.key.budget_limit = usdc(1);
    assert!(matches!(
        store.create_session(&costly, 10).await,
        Err(StoreError::InsufficientFunds { .. })
    ));
    assert!(store.session(&second.id).await.unwrap().unwrap().active);
    store
        .create_session(&sign_in("nonce-three"), 10)
        .await
        .unwrap();

    // Expired nonces are refused.
    store
        .issue_nonce("nonce-old", now - 120_000, now - 600_000)
        .await
        .unwrap();
    assert!(matches!(
        store.create_session(&sign_in("nonce-old"), 10).await,
        Err(StoreError::NonceRejected)
    ));
}

/// Concurrent sign-ins of one wallet all succeed and leave exactly one active
/// session, every other session's key superseded.
async fn concurrent_sign_ins_leave_one_active_session(store: Store) {
    let owner = wallet(10);
    let now = now_ms();
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let nonce = format!("concurrent{i}");
        store.issue_nonce(&nonce, now, now - 60_000).await.unwrap();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = SessionId::generate();
            let mut key = new_key(owner, Amount::ZERO);
            key.purpose = Purpose::Session;
            key.session_id = Some(id.clone());
            store
                .create_session(
                    &NewSession {
                        id,
                        nonce,
                        nonce_issued_after_ms: now - 60_000,
                        key,
                        drained_keys: Vec::new(),
                    },
                    100,
                )
                .await
        }));
    }
    let mut sessions = Vec::new();
    for task in tasks {
        sessions.push(task.await.unwrap().expect("every sign-in succeeds"));
    }
    let mut active = 0;
    for sign_in in &sessions {
        let (session, key) = (&sign_in.session, &sign_in.key);
        let session = store.session(&session.id).await.unwrap().unwrap();
        let key = store.key(&key.id).await.unwrap().unwrap();
        if session.active {
            active += 1;
            assert_eq!(key.status, KeyStatus::Active);
        } else {
            assert_eq!(key.status, KeyStatus::Superseded);
        }
    }
    assert_eq!(active, 1);
}

/// The ledger's backstop for invariant 7: a revoked key whose budget was
/// freed (drained) takes no further charge; one still committed (a call may
/// still be running on it) does.
async fn freed_keys_take_no_charge(store: Store) {
    let key = funded_key(&store, wallet(21), 1_000).await;
    let revoked = store
        .revoke_key_draining(&key.id, now_ms(), false)
        .await
        .unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    let in_flight = charge(&key.id, Amount::from_atomic(10).unwrap());
    assert_eq!(
        store.record_charge(&in_flight).await.unwrap(),
        ChargeWrite::Recorded,
        "a call that was running when the key was revoked is charged"
    );
    store.release_key_funds(&key.id, now_ms()).await.unwrap();
    assert!(matches!(
        store
            .record_charge(&charge(&key.id, Amount::from_atomic(10).unwrap()))
            .await,
        Err(StoreError::OverBudget)
    ));
    let other = funded_key(&store, wallet(22), 1_000).await;
    store
        .revoke_key_draining(&other.id, now_ms(), true)
        .await
        .unwrap();
    assert!(matches!(
        store
            .record_charge(&charge(&other.id, Amount::from_atomic(10).unwrap()))
            .await,
        Err(StoreError::OverBudget)
    ));
    assert_eq!(
        store
            .key(&key.id)
            .await
            .unwrap()
            .unwrap()
            .budget_used
            .atomic(),
        10
    );
}

async fn charges_are_written_once_and_sum_to_budget_used(store: Store) {
    let key = funded_key(&store, wallet(8), 1_000).await;
    let first = charge(&key.id, Amount::from_atomic(400).unwrap());
    assert_eq!(
        store.record_charge(&first).await.unwrap(),
        ChargeWrite::Recorded
    );
    assert_eq!(
        store.record_charge(&first).await.unwrap(),
        ChargeWrite::Duplicate
    );
    // An estimate: no usage reported. Both kinds read back as written.
    let second = NewCharge {
        cached_input_tokens: 0,
        cache_write_tokens: 3,
        reported: None,
        reported_cache: None,
        ..charge(&key.id, Amount::from_atomic(600).unwrap())
    };
    assert_eq!(
        store.record_charge(&second).await.unwrap(),
        ChargeWrite::Recorded
    );
    let stored = store.charges_for_key(&key.id).await.unwrap();
    let reported = |id: &RequestId| {
        let charge = stored.iter().find(|c| &c.request_id == id).unwrap();
        (
            charge.input_tokens,
            charge.cached_input_tokens,
            charge.cache_write_tokens,
            charge.output_tokens,
            charge.reported,
            charge.reported_cache,
        )
    };
    assert_eq!(
        reported(&first.request_id),
        (3, 2, 1, 5, Some((3, 5)), Some((2, 1)))
    );
    assert_eq!(reported(&second.request_id), (3, 0, 3, 5, None, None));
    // One more atomic unit would pass the limit.
    assert!(matches!(
        store
            .record_charge(&charge(&key.id, Amount::from_atomic(1).unwrap()))
            .await,
        Err(StoreError::OverBudget)
    ));
    assert!(matches!(
        store
            .record_charge(&charge(&KeyId::generate(), Amount::ZERO))
            .await,
        Err(StoreError::NotFound)
    ));
    let charges = store.charges_for_key(&key.id).await.unwrap();
    assert_eq!(charges.len(), 2);
    let sum = charges
        .iter()
        .fold(Amount::ZERO, |acc, c| acc.checked_add(c.amount).unwrap());
    let key = store.key(&key.id).await.unwrap().unwrap();
    assert_eq!(
        key.budget_used, sum,
        "invariant 3: budget_used equals the sum of charges"
    );
    assert_eq!(key.budget_remaining(), Amount::ZERO);
    // Unsettled charges are owed: they leave the available funds.
    let funding = store.funding(&key.wallet, CHAIN, now_ms()).await.unwrap();
    assert_eq!(
        funding.available,
        Amount::from_atomic(1_000_000 - 1_000).unwrap()
    );
    assert_eq!(funding.committed, Amount::ZERO);
    // One charge by its request id; an unknown id has none.
    let any = store.charges_for_key(&key.id).await.unwrap()[0].clone();
    assert_eq!(store.charge(&any.request_id).await.unwrap(), Some(any));
    assert_eq!(store.charge(&RequestId::generate()).await.unwrap(), None);
    assert_eq!(
        store.sum_of_charges(&key.id).await.unwrap(),
        Amount::from_atomic(1_000).unwrap()
    );
}

/// A batch (group commit) answers each charge on its own: new, duplicate
/// (also within the batch), over the limit, unknown key — and only the new
/// ones reach `budget_used`.
async fn charge_batches_answer_each_charge(store: Store) {
    let key = funded_key(&store, wallet(12), 1_000).await;
    let atomic = |n| Amount::from_atomic(n).unwrap();
    let first = charge(&key.id, atomic(700));
    let batch = vec![
        first.clone(),
        first.clone(),
        charge(&key.id, atomic(301)),
        charge(&key.id, atomic(300)),
        charge(&KeyId::generate(), atomic(1)),
    ];
    assert_eq!(
        store.record_charges(&batch).await.unwrap(),
        vec![
            ChargeOutcome::Recorded,
            ChargeOutcome::Duplicate,
            ChargeOutcome::OverBudget,
            ChargeOutcome::Recorded,
            ChargeOutcome::UnknownKey,
        ]
    );
    let charges = store.charges_for_key(&key.id).await.unwrap();
    let amounts: Vec<u64> = charges.iter().map(|c| c.amount.atomic()).collect();
    assert_eq!(amounts.iter().sum::<u64>(), 1_000, "{amounts:?}");
    // Written charge by charge (the slow path), with every count.
    assert!(charges.iter().all(|c| (
        c.input_tokens,
        c.cached_input_tokens,
        c.cache_write_tokens,
        c.reported_cache
    ) == (3, 2, 1, Some((2, 1)))));
    assert_eq!(
        store.key(&key.id).await.unwrap().unwrap().budget_used,
        atomic(1_000)
    );
    // Replaying the whole batch changes nothing.
    let replay = store.record_charges(&batch).await.unwrap();
    assert!(replay[..2].iter().all(|o| *o == ChargeOutcome::Duplicate));
    assert_eq!(store.charges_for_key(&key.id).await.unwrap().len(), 2);
}

/// A batch of many rows (one statement, its parameters anonymous on SQLite):
/// a duplicate far from its first is still a duplicate, and every key grows
/// by exactly its new charges.
async fn a_batch_over_several_inserts_answers_each_charge_once(store: Store) {
    let (a, b) = (
        funded_key(&store, wallet(40), 10_000).await.id,
        funded_key(&store, wallet(41), 10_000).await.id,
    );
    let mut batch: Vec<NewCharge> = (0..37)
        .map(|i| {
            charge(
                if i % 3 == 0 { &a } else { &b },
                Amount::from_atomic(10 + i).unwrap(),
            )
        })
        .collect();
    let repeated = batch[2].clone();
    batch.insert(30, repeated);
    let outcomes = store.record_charges(&batch).await.unwrap();
    assert_eq!(outcomes.len(), 38);
    assert_eq!(outcomes[30], ChargeOutcome::Duplicate);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ChargeOutcome::Recorded)
            .count(),
        37
    );
    for key in [&a, &b] {
        let used = store.key(key).await.unwrap().unwrap().budget_used;
        assert_eq!(used, store.sum_of_charges(key).await.unwrap());
    }
    let total: u64 = (0..37).map(|i| 10 + i).sum();
    let used_a = store.key(&a).await.unwrap().unwrap().budget_used.atomic();
    let used_b = store.key(&b).await.unwrap().unwrap().budget_used.atomic();
    assert_eq!(used_a + used_b, total);
}

fn studio_key(account: &AccountId, project: &ProjectId, role: Role, hash: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: ApiKeyId::generate(),
        account_id: account.clone(),
        project_id: project.clone(),
        name: format!("{} key", role.as_str()),
        key_type: ApiKeyType::Sk,
        role,
        enabled: true,
        value_hash: hash.into(),
        value_sealed: Some("sealed".into()),
        masked_value: "sk-xxxx".into(),
        created_by: "user:cli".into(),
        updated_by: "user:cli".into(),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        expires_at_ms: None,
        disabled_by_role: None,
        expiry_set_by_role: None,
    }
}

/// Studio keys live inside an account: found by their keyed hash, listed,
/// updated field by field, deleted — and never reached from another account.
async fn studio_keys_stay_within_their_account(store: Store) {
    let account = AccountRecord {
        id: AccountId::generate(),
        name: "acme".into(),
        funding: Some((wallet(13), CHAIN)),
        created_at_ms: now_ms(),
    };
    let project = ProjectRecord {
        id: ProjectId::generate(),
        account_id: account.id.clone(),
        name: "web".into(),
        budget_key_id: None,
        created_at_ms: now_ms(),
    };
    let admin = store
        .bootstrap_studio(
            &account,
            &project,
            &studio_key(&account.id, &project.id, Role::Admin, "h-admin"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.apikey_by_hash("h-admin").await.unwrap(),
        Some(admin.clone())
    );
    assert_eq!(store.apikey_by_hash("h-none").await.unwrap(), None);
    let mut reader = studio_key(&account.id, &project.id, Role::Reader, "h-reader");
    reader.expires_at_ms = Some(now_ms() + 60_000);
    let reader = store.create_apikey(&reader, 10).await.unwrap();
    let listed = store.apikeys(&account.id, &project.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    // A duplicate value hash is refused by the store (its unique index).
    assert!(matches!(
        store
            .create_apikey(
                &studio_key(&account.id, &project.id, Role::Reader, "h-reader"),
                10
            )
            .await,
        Err(StoreError::Database(_))
    ));
    assert_eq!(
        store.apikeys(&account.id, &project.id).await.unwrap().len(),
        2
    );
    // The bound counts unexpired keys only.
    let mut expired = studio_key(&account.id, &project.id, Role::Reader, "h-expired");
    expired.expires_at_ms = Some(now_ms() - 1);
    store.create_apikey(&expired, 10).await.unwrap();
    assert!(matches!(
        store
            .create_apikey(
                &studio_key(&account.id, &project.id, Role::Reader, "h-third"),
                2
            )
            .await,
        Err(StoreError::TooManyApiKeys { max: 2 })
    ));
    store.delete_apikey(&account.id, &expired.id).await.unwrap();

    let updated = store
        .update_apikey(
            &account.id,
            &reader.id,
            &ApiKeyUpdate {
                role: Some(Role::Developer),
                enabled: Some(false),
                expires_at_ms: Some(None),
                ..Default::default()
            },
            "apikey:admin",
            now_ms() + 1,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (updated.role, updated.enabled, updated.expires_at_ms),
        (Role::Developer, false, None)
    );
    assert_eq!(
        (updated.name.as_str(), updated.updated_by.as_str()),
        ("reader key", "apikey:admin")
    );
    assert!(!updated.usable_at(now_ms()));

    // Who restricted a key is stored with it; a refused decision, taken on
    // the row under its lock, changes nothing.
    let restricted = store
        .update_apikey_with(
            &account.id,
            &reader.id,
            "apikey:admin",
            now_ms() + 2,
            |current| {
                assert!(!current.enabled);
                Ok::<_, StoreError>(ApiKeyUpdate {
                    expires_at_ms: Some(Some(now_ms() + 60_000)),
                    disabled_by_role: Some(Some(Role::Admin)),
                    expiry_set_by_role: Some(Some(Role::Developer)),
                    ..Default::default()
                })
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (restricted.disabled_by_role, restricted.expiry_set_by_role),
        (Some(Role::Admin), Some(Role::Developer))
    );
    let refused = store
        .update_apikey_with(&account.id, &reader.id, "apikey:x", now_ms() + 3, |_| {
            Err::<ApiKeyUpdate, _>(StoreError::NotFound)
        })
        .await;
    assert!(matches!(refused, Err(StoreError::NotFound)));
    assert_eq!(
        store.apikey(&account.id, &reader.id).await.unwrap(),
        Some(restricted.clone())
    );
    let lifted = store
        .update_apikey(
            &account.id,
            &reader.id,
            &ApiKeyUpdate {
                disabled_by_role: Some(None),
                ..Default::default()
            },
            "apikey:admin",
            now_ms() + 4,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (lifted.disabled_by_role, lifted.expiry_set_by_role),
        (None, Some(Role::Developer))
    );

    // Another account sees nothing of these keys.
    let other = AccountId::generate();
    assert_eq!(store.apikey(&other, &reader.id).await.unwrap(), None);
    assert!(store
        .update_apikey(&other, &reader.id, &ApiKeyUpdate::default(), "x", 0)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.delete_apikey(&other, &reader.id).await.unwrap(), 0);
    assert_eq!(store.project(&other, &project.id).await.unwrap(), None);
    assert_eq!(
        store.project(&account.id, &project.id).await.unwrap(),
        Some(project.clone())
    );

    assert_eq!(
        store.delete_apikey(&account.id, &reader.id).await.unwrap(),
        1
    );
    assert_eq!(
        store.delete_apikey(&account.id, &reader.id).await.unwrap(),
        0
    );
    assert_eq!(
        store.apikeys(&account.id, &project.id).await.unwrap(),
        vec![admin]
    );
}

/// Replaying one charge concurrently still writes it exactly once.
async fn concurrent_duplicate_charges_write_once(store: Store) {
    let owner = wallet(9);
    store
        .credit(&owner, CHAIN, usdc(1), "test", now_ms())
        .await
        .unwrap();
    let key = store
        .create_key(&new_key(owner, usdc(1)), 10)
        .await
        .unwrap();
    let one = charge(&key.id, Amount::from_atomic(7).unwrap());
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (store, one) = (store.clone(), one.clone());
        tasks.push(tokio::spawn(async move { store.record_charge(&one).await }));
    }
    let mut recorded = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(ChargeWrite::Recorded) => recorded += 1,
            Ok(ChargeWrite::Duplicate) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(recorded, 1);
    assert_eq!(
        store.key(&key.id).await.unwrap().unwrap().budget_used,
        Amount::from_atomic(7).unwrap()
    );
}

fn atomic(n: u64) -> Amount {
    Amount::from_atomic(n).unwrap()
}

/// A charge of `amount` spent from `lease`.
fn leased_charge(key: &KeyId, lease: &LeaseId, amount: u64) -> NewCharge {
    NewCharge {
        lease: Some(lease.clone()),
        client_request_id: None,
        ..charge(key, atomic(amount))
    }
}

/// `budget_used + leased ≤ limit`, and `budget_used` is the sum of charges.
async fn assert_key_books(store: &Store, key: &KeyId) -> (u64, u64) {
    let record = store.key(key).await.unwrap().unwrap();
    let leased = store.key_leased(key).await.unwrap();
    let charged: u64 = store
        .charges_for_key(key)
        .await
        .unwrap()
        .iter()
        .map(|c| c.amount.atomic())
        .sum();
    assert_eq!(record.budget_used.atomic(), charged, "used = Σ charges");
    assert!(
        record.budget_used.atomic() + leased.atomic() <= record.budget_limit.atomic(),
        "used {} + leased {} past the limit {}",
        record.budget_used,
        leased,
        record.budget_limit
    );
    (record.budget_used.atomic(), leased.atomic())
}

/// A key smaller than a few chunks is shared: a take grants a quarter of
/// what no lease covers (at least what the asking call needs), so a second
/// node finds budget left instead of a key leased whole by the first.
async fn a_take_shares_a_small_key_instead_of_leasing_it_whole(store: Store) {
    let key = funded_key(&store, wallet(32), 1_000).await.id;
    let (a, b) = (LeaseId::generate(), LeaseId::generate());
    let now = now_ms();
    let take = |lease: LeaseId, node: &'static str, need: u64| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            store
                .take_lease(&lease, &key, node, atomic(600), atomic(need), now)
                .await
                .unwrap()
                .unwrap()
                .granted
        }
    };
    // A background top-up (needs nothing): ⌈1000 ÷ 4⌉, not the chunk.
    assert_eq!(take(a.clone(), "node-a", 0).await, atomic(250));
    // The other node: a quarter of the 750 left (rounded up).
    assert_eq!(take(b.clone(), "node-b", 0).await, atomic(188));
    // A call short of 300 gets 300 (a quarter of 562 would not do).
    assert_eq!(take(b.clone(), "node-b", 300).await, atomic(300));
    // Never past what is left, nor past the chunk.
    assert_eq!(take(a.clone(), "node-a", 900).await, atomic(262));
    assert_eq!(take(a, "node-a", 0).await, Amount::ZERO);
    assert_eq!(assert_key_books(&store, &key).await, (0, 1_000));
    // A key of many chunks still gives a whole chunk in one statement.
    let big = funded_key(&store, wallet(33), 10_000).await.id;
    let granted = store
        .take_lease(&b, &big, "node-b", atomic(600), Amount::ZERO, now)
        .await
        .unwrap();
    assert!(granted.is_none(), "b is a lease of another key");
    let c = LeaseId::generate();
    let granted = store
        .take_lease(&c, &big, "node-c", atomic(600), Amount::ZERO, now)
        .await
        .unwrap()
        .unwrap()
        .granted;
    assert_eq!(granted, atomic(600));
}

async fn leases_take_spend_return_and_reclaim(store: Store) {
    let key = funded_key(&store, wallet(31), 1_000).await.id;
    let (a, b) = (LeaseId::generate(), LeaseId::generate());
    let now = now_ms();
    // A whole chunk, then only what is left, then nothing.
    let grant = store
        .take_lease(&a, &key, "node-a", atomic(600), atomic(600), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (grant.granted, grant.limit, grant.used),
        (atomic(600), atomic(1_000), Amount::ZERO)
    );
    let grant = store
        .take_lease(&b, &key, "node-b", atomic(600), atomic(600), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.granted, atomic(400), "the rest, not a chunk");
    let grant = store
        .take_lease(&b, &key, "node-b", atomic(600), atomic(600), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.granted, Amount::ZERO);
    assert_eq!(assert_key_books(&store, &key).await, (0, 1_000));
    // Unleased charges no longer fit: every unit is leased.
    assert_eq!(
        store
            .record_charges(&[charge(&key, atomic(1))])
            .await
            .unwrap(),
        vec![ChargeOutcome::OverBudget]
    );
    // Charges move their amount from leased to used, within their lease.
    let spent = store
        .record_charges(&[leased_charge(&key, &a, 100), leased_charge(&key, &b, 50)])
        .await
        .unwrap();
    assert_eq!(spent, vec![ChargeOutcome::Recorded; 2]);
    assert_eq!(assert_key_books(&store, &key).await, (150, 850));
    // A charge past its lease's cover is refused (nothing unleased is left).
    assert_eq!(
        store
            .record_charges(&[leased_charge(&key, &b, 351)])
            .await
            .unwrap(),
        vec![ChargeOutcome::OverBudget]
    );
    // Node a returns what it did not spend; its lease then takes no more.
    assert_eq!(
        store
            .return_lease(&a, &key, atomic(500), now)
            .await
            .unwrap(),
        Some(atomic(500))
    );
    assert_eq!(
        store.return_lease(&a, &key, atomic(1), now).await.unwrap(),
        None,
        "closed"
    );
    assert!(store
        .take_lease(&a, &key, "node-a", atomic(10), atomic(10), now)
        .await
        .unwrap()
        .is_none());
    assert_eq!(assert_key_books(&store, &key).await, (150, 350));
    // Node b goes silent (node a keeps its heartbeat): after the grace b's
    // cover (350) comes back to the key.
    store.renew_leases("node-a", now + 10).await.unwrap();
    assert_eq!(
        store.reclaim_leases(now - 1).await.unwrap(),
        0,
        "not stale yet"
    );
    assert_eq!(store.reclaim_leases(now + 1).await.unwrap(), 1);
    assert_eq!(assert_key_books(&store, &key).await, (150, 0));
    let leases = store.leases_for_key(&key).await.unwrap();
    assert_eq!(leases.len(), 1, "a's lease, fully settled, is forgotten");
    assert_eq!(
        leases[0].takes, 2,
        "b took twice (the second granted nothing)"
    );
    assert_eq!(
        (leases[0].id.clone(), leases[0].state.as_str()),
        (b.clone(), "reclaimed")
    );
    // A charge of the crashed node that lands late is taken from what no
    // lease covers, when it fits.
    assert_eq!(
        store
            .record_charges(&[leased_charge(&key, &b, 40)])
            .await
            .unwrap(),
        vec![ChargeOutcome::Recorded]
    );
    assert_eq!(assert_key_books(&store, &key).await, (190, 0));
    // A return larger than the lease still covers gives back what it covers.
    let d = LeaseId::generate();
    store
        .take_lease(&d, &key, "node-d", atomic(20), atomic(20), now)
        .await
        .unwrap()
        .unwrap();
    store
        .record_charges(&[leased_charge(&key, &d, 15)])
        .await
        .unwrap();
    assert_eq!(
        store.return_lease(&d, &key, atomic(20), now).await.unwrap(),
        Some(atomic(5))
    );
    assert_eq!(assert_key_books(&store, &key).await, (205, 0));
    // A live node's open lease stays however old its last grant; a
    // returned lease whose cover no charge claims comes back a grace after
    // its return, though its node lives.
    let (e, f) = (LeaseId::generate(), LeaseId::generate());
    store
        .take_lease(&e, &key, "node-e", atomic(10), atomic(10), now)
        .await
        .unwrap()
        .unwrap();
    store
        .take_lease(&f, &key, "node-e", atomic(10), atomic(10), now)
        .await
        .unwrap()
        .unwrap();
    store
        .record_charges(&[leased_charge(&key, &f, 4)])
        .await
        .unwrap();
    // f's node spent 6 more that never land (a publish that failed late).
    assert_eq!(
        store.return_lease(&f, &key, atomic(0), now).await.unwrap(),
        Some(Amount::ZERO)
    );
    store.renew_leases("node-e", now + 1_000).await.unwrap();
    assert_eq!(store.reclaim_leases(now + 500).await.unwrap(), 1, "f only");
    let states: Vec<(LeaseId, String)> = store
        .leases_for_key(&key)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.id, l.state))
        .collect();
    assert!(states.contains(&(e.clone(), "open".to_owned())));
    assert!(states.contains(&(f.clone(), "reclaimed".to_owned())));
    assert_eq!(assert_key_books(&store, &key).await, (209, 10));
    assert_eq!(
        store.return_lease(&e, &key, atomic(10), now).await.unwrap(),
        Some(atomic(10))
    );
    // A stopped key takes no lease; its open leases are reported.
    let c = LeaseId::generate();
    store
        .take_lease(&c, &key, "node-c", atomic(10), atomic(10), now)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .stopped_leased_keys("node-c")
        .await
        .unwrap()
        .is_empty());
    store.revoke_key(&key, now_ms()).await.unwrap();
    let stopped = store.stopped_leased_keys("node-c").await.unwrap();
    assert_eq!(stopped.len(), 1);
    assert_eq!(
        (stopped[0].lease_id.clone(), stopped[0].status.as_str()),
        (c.clone(), "revoked")
    );
    assert!(store
        .take_lease(&c, &key, "node-c", atomic(10), atomic(10), now)
        .await
        .unwrap()
        .is_none());
}

async fn concurrent_lease_takes_never_pass_the_limit(store: Store) {
    let key = funded_key(&store, wallet(32), 10_000).await.id;
    let mut tasks = Vec::new();
    for node in 0..8 {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let lease = LeaseId::generate();
            let node = format!("node-{node}");
            let mut granted = 0;
            for _ in 0..20 {
                let grant = store
                    .take_lease(&lease, &key, &node, atomic(97), atomic(97), now_ms())
                    .await
                    .unwrap()
                    .unwrap();
                granted += grant.granted.atomic();
                // Spend a part of each grant as charges.
                if grant.granted.atomic() >= 7 {
                    let outcome = store
                        .record_charges(&[leased_charge(&key, &lease, 7)])
                        .await
                        .unwrap();
                    assert_eq!(outcome, vec![ChargeOutcome::Recorded]);
                }
            }
            granted
        }));
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap();
    }
    assert_eq!(
        granted, 10_000,
        "8 × 20 × 97 asked: exactly the limit granted"
    );
    let (used, leased) = assert_key_books(&store, &key).await;
    assert_eq!(used + leased, 10_000);
    assert_eq!(
        store.reconcile_ledger(None).await.unwrap(),
        vec![],
        "the books agree"
    );
}

async fn ledger_batches_debit_each_charge_once(store: Store) {
    let owner = wallet(41);
    let key = funded_key(&store, owner, 10_000).await.id;
    let other = funded_key(&store, wallet(42), 10_000).await.id;
    let before = store.funding(&owner, CHAIN, now_ms()).await.unwrap();
    let mut charges = Vec::new();
    for i in 0..30u64 {
        let on = if i % 3 == 0 { &other } else { &key };
        charges.push(charge(on, atomic(10 + i)));
    }
    store.record_charges(&charges).await.unwrap();
    let recorded_total: u64 = charges
        .iter()
        .filter(|c| c.key_id == key)
        .map(|c| c.amount.atomic())
        .sum();
    // Recording moves funds from available to unsettled; settling moves them
    // from unsettled to debited: `available` stays put.
    let recorded = store.funding(&owner, CHAIN, now_ms()).await.unwrap();
    assert_eq!(
        recorded.available.atomic(),
        before.available.atomic() - recorded_total
    );
    // Two settlers at once, batches of 7: every charge settles exactly once.
    let mut settlers = Vec::new();
    for s in 0..2 {
        let store = store.clone();
        settlers.push(tokio::spawn(async move {
            let mut batches = Vec::new();
            let mut n = 0;
            while let Some(batch) = store
                .settle_ledger_batch(&format!("batch-{s}-{n}"), CHAIN, 7, now_ms(), &[], now_ms())
                .await
                .unwrap()
            {
                n += 1;
                batches.push(batch);
            }
            batches
        }));
    }
    let mut settled_charges = 0;
    let mut settled_total = 0;
    for settler in settlers {
        for batch in settler.await.unwrap() {
            assert!(batch.charges <= 7 && batch.held_back.is_empty());
            settled_charges += batch.charges;
            settled_total += batch.total.atomic();
        }
    }
    assert_eq!(settled_charges, 30);
    let all: u64 = charges.iter().map(|c| c.amount.atomic()).sum();
    assert_eq!(settled_total, all, "debited exactly the charges, once");
    assert_eq!(
        store.balance(&owner, CHAIN).await.unwrap().debited.atomic(),
        recorded_total
    );
    let after = store.funding(&owner, CHAIN, now_ms()).await.unwrap();
    assert_eq!(
        after.available, recorded.available,
        "settling leaves available as it was"
    );
    for record in store.charges_for_key(&key).await.unwrap() {
        assert_eq!(record.status, "settled");
        assert!(record.batch_id.is_some());
    }
    assert_eq!(
        store
            .settle_ledger_batch("batch-none", CHAIN, 7, now_ms(), &[], now_ms())
            .await
            .unwrap(),
        None,
        "nothing left to settle"
    );
    assert_eq!(
        store.reconcile_ledger(Some(CHAIN)).await.unwrap(),
        vec![],
        "the books agree"
    );
}

async fn a_payer_that_cannot_pay_waits_without_blocking_others(store: Store) {
    let (poor, rich) = (wallet(43), wallet(44));
    let poor_key = funded_key(&store, poor, 1_000).await.id;
    let rich_key = funded_key(&store, rich, 1_000).await.id;
    // The poor payer's charges are the oldest; then its credit is cut below
    // them (as only a broken funding check could leave it).
    let mut old = charge(&poor_key, atomic(50));
    old.created_at_ms -= 1_000;
    store.record_charges(&[old]).await.unwrap();
    store
        .record_charges(&[charge(&rich_key, atomic(30)), charge(&rich_key, atomic(20))])
        .await
        .unwrap();
    ledger::testing::set_credited(&store, &poor, CHAIN, atomic(10)).await;
    let settler = |skip: Vec<String>| {
        let store = store.clone();
        async move {
            store
                .settle_ledger_batch(
                    &format!("b-{}", RequestId::generate()),
                    CHAIN,
                    1,
                    now_ms(),
                    &skip,
                    now_ms(),
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
    let first = settler(Vec::new()).await;
    assert_eq!(
        (first.charges, first.held_back.clone()),
        (0, vec![poor.to_lower_hex()])
    );
    let second = settler(first.held_back.clone()).await;
    assert_eq!(
        (second.charges, second.total),
        (1, atomic(30)),
        "the next payer settles"
    );
    assert_eq!(
        store.balance(&poor, CHAIN).await.unwrap().debited,
        Amount::ZERO
    );
    let poor_charges = store.charges_for_key(&poor_key).await.unwrap();
    assert_eq!(poor_charges[0].status, "pending", "held back, not failed");
}

async fn migrations_are_idempotent(store: Store) {
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
}

/// A database migrated before a migration's comments were revised starts on
/// the revised files, as does one migrated since; a migration whose recorded
/// checksum matches no known text of its file still stops the start.
async fn comment_revisions_of_applied_migrations_start_any_other_change_stops(store: Store) {
    ledger::testing::record_earlier_migration_texts(&store).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    ledger::testing::set_migration_checksum(&store, 6, &[7; 48]).await;
    let refused = store.migrate().await.unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Migrate(sqlx::migrate::MigrateError::VersionMismatch(6))
        ),
        "{refused:?}"
    );
}

/// The group-commit writer's own SQLite connection writes a batch whole when
/// every charge is new and fits, and otherwise writes nothing at all (the
/// pool's `record_charges` then decides charge by charge). PostgreSQL has
/// no such connection.
async fn the_charge_connection_writes_a_batch_whole_or_not_at_all(store: Store) {
    let Some(mut connection) = store.charge_connection().unwrap() else {
        assert_eq!(store.backend(), Backend::Postgres);
        return;
    };
    let key = funded_key(&store, wallet(41), 1_000).await.id;
    let lease = LeaseId::generate();
    store
        .take_lease(&lease, &key, "node-a", atomic(600), atomic(600), now_ms())
        .await
        .unwrap()
        .unwrap();
    let first = charge(&key, atomic(100));
    let batch = [first.clone(), leased_charge(&key, &lease, 50)];
    assert_eq!(
        connection.record_new_charges(&batch).unwrap(),
        Some(vec![ChargeOutcome::Recorded; 2])
    );
    assert_eq!(assert_key_books(&store, &key).await, (150, 550));
    let written = store.charge(&first.request_id).await.unwrap().unwrap();
    let expected = ChargeRecord {
        request_id: first.request_id.clone(),
        key_id: first.key_id.clone(),
        model: first.model.clone(),
        price_version: first.price_version.clone(),
        input_tokens: first.input_tokens,
        cached_input_tokens: 2,
        cache_write_tokens: 1,
        output_tokens: first.output_tokens,
        amount: first.amount,
        reported: first.reported,
        reported_cache: Some((2, 1)),
        status: "pending".into(),
        batch_id: None,
        tx_hash: None,
        created_at_ms: first.created_at_ms,
        client_request_id: None,
    };
    assert_eq!(written, expected);

    // Each batch below holds one charge that cannot be written as new, after
    // one that could: the whole batch is left undecided, nothing written.
    let unknown = KeyId::generate();
    let undecided = [
        ("a request id seen before", first.clone()),
        ("an unknown key", charge(&unknown, atomic(1))),
        ("past what no lease covers (300)", charge(&key, atomic(301))),
        (
            "past the lease's cover (550)",
            leased_charge(&key, &lease, 551),
        ),
        (
            "a lease the key does not have",
            leased_charge(&key, &LeaseId::generate(), 1),
        ),
    ];
    for (why, refused) in undecided {
        let fine = charge(&key, atomic(1));
        let outcome = connection
            .record_new_charges(&[fine.clone(), refused])
            .unwrap();
        assert_eq!(outcome, None, "{why}");
        assert_eq!(store.charge(&fine.request_id).await.unwrap(), None, "{why}");
        assert_eq!(assert_key_books(&store, &key).await, (150, 550), "{why}");
    }
    // What the pool makes of such a batch: the fine charge, and the other refused.
    let fine = charge(&key, atomic(1));
    assert_eq!(
        store
            .record_charges(&[fine, charge(&key, atomic(301))])
            .await
            .unwrap(),
        vec![ChargeOutcome::Recorded, ChargeOutcome::OverBudget]
    );
    assert_eq!(assert_key_books(&store, &key).await, (151, 550));
}

/// The writer's own connection waits out another connection's write lock
/// (its busy handler retries every 250 µs) instead of giving the batch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charge_connection_waits_out_another_writer() {
    let db = TestDb::create(Backend::Sqlite).await;
    let store = db.store().await;
    let key = funded_key(&store, wallet(42), 1_000).await.id;
    let mut connection = store.charge_connection().unwrap().unwrap();
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let (locked, lock_taken) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut other = rusqlite::Connection::open(path).unwrap();
        let transaction = other
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        locked.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        transaction.commit().unwrap();
    });
    lock_taken.recv().unwrap();
    let started = std::time::Instant::now();
    let written = connection.record_new_charges(&[charge(&key, atomic(10))]);
    assert_eq!(written.unwrap(), Some(vec![ChargeOutcome::Recorded]));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "it waited for the other writer"
    );
    holder.join().unwrap();
    assert_eq!(assert_key_books(&store, &key).await, (10, 0));
}

/// One settled batch names more keys than a page holds, and a second batch
/// settles at the same instant: read page by page from each page's last
/// row (the cursor is settled at, batch id, key id), every key of both is
/// reached with its own transaction, in as many pages as the rows need —
/// paged by the time alone, the first page was read again forever.
async fn settled_transactions_page_past_a_batch_larger_than_a_page(store: Store) {
    use ledger::store::chain::SettledCursor;
    let at = now_ms();
    store.chain_account(CHAIN, "0xoperator", at).await.unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for (owner, keys, batch, hash) in [(61, 7, "batch-a", "0xaa"), (62, 2, "batch-b", "0xbb")] {
        for _ in 0..keys {
            let key = funded_key(&store, wallet(owner), 1_000).await;
            let one = [charge(&key.id, Amount::from_atomic(10).unwrap())];
            store.record_charges(&one).await.unwrap();
            expected.insert(key.id.to_string(), hash.to_owned());
        }
        let payers: Vec<String> = store
            .pending_payers(CHAIN, now_ms(), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|payer| payer.wallet)
            .collect();
        assert_eq!(payers.len(), 1);
        let opened = store
            .open_evm_batch(batch, CHAIN, &payers, now_ms(), at)
            .await
            .unwrap();
        assert!(opened.is_some(), "{batch} opened");
        store
            .finish_evm_batch(batch, hash, &payers, &[], at)
            .await
            .unwrap();
    }
    let (mut after, mut seen, mut pages) = (SettledCursor::default(), Default::default(), 0);
    loop {
        let rows = store.settled_txs_after(&after, 3).await.unwrap();
        let Some(last) = rows.last() else { break };
        pages += 1;
        assert!(pages <= 3, "each page reads past the one before");
        after = last.cursor();
        for row in rows {
            assert_eq!(row.settled_at_ms, at);
            std::collections::BTreeMap::insert(&mut seen, row.key_id, row.tx_hash);
        }
    }
    assert_eq!(seen, expected, "every key, with its batch's transaction");
    assert_eq!(pages, 3);
}

/// An answered call's charge (from the queue) that its key's limit cannot
/// take is recorded flagged `overdrawn`, counted apart from `budget_used`,
/// and reported by the ledger's reconcile; the same charge again is a
/// duplicate. The ledger writer's path still refuses it.
async fn an_answered_charge_past_the_limit_is_recorded_overdrawn_not_dropped(store: Store) {
    let key = funded_key(&store, wallet(40), 100).await.id;
    let first = charge(&key, atomic(80));
    assert_eq!(
        store.record_answered_charges(&[first]).await.unwrap(),
        [ChargeOutcome::Recorded]
    );
    let refused = charge(&key, atomic(30));
    assert_eq!(
        store
            .record_charges(std::slice::from_ref(&refused))
            .await
            .unwrap(),
        [ChargeOutcome::OverBudget],
        "an unanswered call's charge is still refused"
    );
    assert!(store.charge(&refused.request_id).await.unwrap().is_none());
    let late = charge(&key, atomic(30));
    assert_eq!(
        store
            .record_answered_charges(std::slice::from_ref(&late))
            .await
            .unwrap(),
        [ChargeOutcome::Overdrawn]
    );
    assert_eq!(
        store
            .record_answered_charges(std::slice::from_ref(&late))
            .await
            .unwrap(),
        [ChargeOutcome::Duplicate]
    );
    let record = store.key(&key).await.unwrap().unwrap();
    assert_eq!(record.budget_used, atomic(80), "the limit still holds");
    assert_eq!(
        store
            .charge(&late.request_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "pending",
        "owed, and settled like any other"
    );
    let differences = store.reconcile_ledger(None).await.unwrap();
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert!(
        differences[0].check.contains("overdrawn"),
        "{differences:?}"
    );
    assert_eq!(differences[0].found, 30);
}

/// Takes capped by a payer's funds: across its keys, concurrently, what the
/// leases cover plus what it owes never passes what it can pay; nothing is
/// granted while it is held back.
async fn funded_takes_never_pass_what_the_payer_can_pay(store: Store) {
    let owner = wallet(41);
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(funded_key(&store, owner, 10_000).await.id);
    }
    store
        .record_charge(&charge(&keys[0], atomic(1_000)))
        .await
        .unwrap();
    // It can pay 5,000 now: 1,000 owed, so 4,000 of new cover at most.
    let spendable = atomic(5_000);
    let mut tasks = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let lease = LeaseId::generate();
            let mut granted = 0;
            for _ in 0..10 {
                let grant = store
                    .take_lease_funded(
                        &lease,
                        &key,
                        &format!("node-{n}"),
                        (atomic(700), atomic(700)),
                        (&owner, CHAIN, spendable),
                        now_ms(),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                granted += grant.granted.atomic();
            }
            granted
        }));
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap();
    }
    assert_eq!(
        granted, 4_000,
        "every take together: exactly what it can pay"
    );
    // Held back: nothing more, whatever its funds.
    let short = ledger::store::payers::ShortPayer {
        wallet: &owner.to_lower_hex(),
        owed: atomic(1_000),
        balance: atomic(0),
        allowance: atomic(0),
    };
    assert!(store
        .hold_back_payer(CHAIN, short, |_| 1_000, now_ms())
        .await
        .unwrap());
    assert!(!store
        .hold_back_payer(CHAIN, short, |_| 1_000, now_ms())
        .await
        .unwrap());
    let grant = store
        .take_lease_funded(
            &LeaseId::generate(),
            &keys[1],
            "node-x",
            (atomic(700), atomic(700)),
            (&owner, CHAIN, atomic(1_000_000)),
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.granted, Amount::ZERO, "a held-back payer is fenced");
    let held = store.held_back_payer(&owner, CHAIN).await.unwrap().unwrap();
    assert_eq!((held.checks, held.short()), (2, "balance"));
    assert_eq!(
        store
            .release_payers(CHAIN, &[owner.to_lower_hex()])
            .await
            .unwrap(),
        1
    );
    assert!(store
        .held_back_payer(&owner, CHAIN)
        .await
        .unwrap()
        .is_none());
}

macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        store_suite!(@on sqlite, Sqlite, $($case),*);
        store_suite!(@on postgres, Postgres, $($case),*);
    };
    (@on $module:ident, $backend:ident, $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::create(super::Backend::$backend).await;
                    super::$case(db.store().await).await;
                }
            )*
        }
    };
}

store_suite!(
    credit_and_key_lifecycle,
    expired_keys_commit_nothing,
    active_key_count_is_bounded,
    credits_are_bounded_and_checked,
    concurrent_key_creation_never_overcommits,
    sessions_supersede_and_nonces_are_single_use,
    concurrent_sign_ins_leave_one_active_session,
    charges_are_written_once_and_sum_to_budget_used,
    freed_keys_take_no_charge,
    charge_batches_answer_each_charge,
    a_batch_over_several_inserts_answers_each_charge_once,
    studio_keys_stay_within_their_account,
    concurrent_duplicate_charges_write_once,
    leases_take_spend_return_and_reclaim,
    a_take_shares_a_small_key_instead_of_leasing_it_whole,
    concurrent_lease_takes_never_pass_the_limit,
    ledger_batches_debit_each_charge_once,
    a_payer_that_cannot_pay_waits_without_blocking_others,
    migrations_are_idempotent,
    comment_revisions_of_applied_migrations_start_any_other_change_stops,
    the_charge_connection_writes_a_batch_whole_or_not_at_all,
    settled_transactions_page_past_a_batch_larger_than_a_page,
    an_answered_charge_past_the_limit_is_recorded_overdrawn_not_dropped,
    funded_takes_never_pass_what_the_payer_can_pay,
);
