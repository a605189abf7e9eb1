//! The shared queue suite: the in-process queue and RabbitMQ (the real
//! broker at 127.0.0.1:5672, or `TOLLGATE_TEST_AMQP_URL`) keep one contract —
//! confirmed publishes, acks, redelivery after a consumer dies, and
//! dead-lettering after the delivery limit. Each test uses its own queue
//! names, so tests run in parallel; a test that needs the broker fails
//! (never skips) when it is not there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use workers::queue::{Consumer, Delivery, Queue, QueueOptions};

enum Kind {
    Memory,
    Rabbit,
}

fn options() -> QueueOptions {
    QueueOptions {
        prefetch: 50,
        delivery_limit: 3,
        publish_timeout: Duration::from_secs(5),
    }
}

async fn queue(kind: Kind) -> (Queue, String) {
    let url = match kind {
        Kind::Memory => "memory://".to_owned(),
        Kind::Rabbit => std::env::var("TOLLGATE_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
    };
    let queue = Queue::connect(&url, options())
        .await
        .unwrap_or_else(|e| panic!("the queue at {url} is needed for this test: {e}"));
    let name = format!("test-{}", uuid::Uuid::now_v7().simple());
    queue.declare(&name).await.unwrap();
    // Declaring again changes nothing.
    queue.declare(&name).await.unwrap();
    (queue, name)
}

/// Removes the test's queues. Best effort: the tests assert the queue's
/// behaviour, not the clean-up (a leftover queue has a unique name).
async fn cleanup(queue: &Queue, name: &str, consumers: Vec<Consumer>) {
    for consumer in consumers {
        let _ = consumer.close().await;
    }
    if let Err(error) = queue.delete(name).await {
        eprintln!("cleaning up {name}: {error}");
    }
}

/// The next delivery, within a deadline.
async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no delivery in time")
        .expect("the consumer ended")
        .unwrap()
}

/// Nothing arrives for a while.
async fn quiet(consumer: &mut Consumer) {
    let got = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(got.is_err(), "nothing more may arrive");
}

async fn confirmed_messages_are_delivered_once_acked(kind: Kind) {
    let (queue, name) = queue(kind).await;
    for i in 0..20 {
        queue
            .publish(&name, &format!("m{i}"), Bytes::from(format!("body {i}")))
            .await
            .unwrap();
    }
    let mut consumer = queue.consume(&name).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.deliveries, 1);
        assert_eq!(
            delivery.body,
            Bytes::from(format!("body {}", &delivery.message_id[1..]))
        );
        seen.push(delivery.message_id.clone());
        delivery.ack().await.unwrap();
    }
    seen.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected, "each message once");
    quiet(&mut consumer).await;
    cleanup(&queue, &name, vec![consumer]).await;
}

async fn many_publishes_are_confirmed_concurrently(kind: Kind) {
    let (queue, name) = queue(kind).await;
    let publishes = (0..200).map(|i| {
        let (queue, name) = (queue.clone(), name.clone());
        async move {
            queue
                .publish(&name, &format!("c{i}"), Bytes::from_static(b"x"))
                .await
        }
    });
    for result in futures_util::future::join_all(publishes).await {
        result.unwrap();
    }
    let mut consumer = queue.consume(&name).await.unwrap();
    for _ in 0..200 {
        next(&mut consumer).await.ack().await.unwrap();
    }
    quiet(&mut consumer).await;
    cleanup(&queue, &name, vec![consumer]).await;
}

async fn a_dead_consumers_messages_are_redelivered(kind: Kind) {
    let (queue, name) = queue(kind).await;
    queue
        .publish(&name, "only", Bytes::from_static(b"work"))
        .await
        .unwrap();
    let mut first = queue.consume(&name).await.unwrap();
    let delivery = next(&mut first).await;
    assert_eq!(delivery.deliveries, 1);
    // The consumer dies holding it, unacknowledged.
    drop(delivery);
    drop(first);
    let mut second = queue.consume(&name).await.unwrap();
    let again = next(&mut second).await;
    assert_eq!(again.message_id, "only");
    assert_eq!(again.deliveries, 2, "a redelivery is counted");
    again.ack().await.unwrap();
    quiet(&mut second).await;
    cleanup(&queue, &name, vec![second]).await;
}

async fn poison_messages_are_dead_lettered_after_the_limit(kind: Kind) {
    let (queue, name) = queue(kind).await;
    queue
        .publish(&name, "poison", Bytes::from_static(b"bad"))
        .await
        .unwrap();
    queue
        .publish(&name, "rejected", Bytes::from_static(b"worse"))
        .await
        .unwrap();
    let mut consumer = queue.consume(&name).await.unwrap();
    let mut poison_deliveries = 0;
    let mut rejected = false;
    while poison_deliveries < options().delivery_limit || !rejected {
        let delivery = next(&mut consumer).await;
        match delivery.message_id.as_str() {
            "poison" => {
                poison_deliveries += 1;
                assert_eq!(delivery.deliveries, poison_deliveries);
                delivery.retry().await.unwrap();
            }
            "rejected" => {
                rejected = true;
                delivery.reject().await.unwrap();
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Past the limit it is not delivered again; both are dead letters, with
    // the reason the broker gives. Looking changes nothing.
    quiet(&mut consumer).await;
    let dead_letters = || async {
        let mut seen: Vec<(String, String)> = queue
            .sweep_dead(&name, 100, &mut |_| false)
            .await
            .unwrap()
            .into_iter()
            .map(|(letter, moved)| {
                assert!(!moved);
                (letter.message_id, letter.reason)
            })
            .collect();
        seen.sort();
        seen
    };
    let expected = vec![
        ("poison".to_owned(), "delivery_limit".to_owned()),
        ("rejected".to_owned(), "rejected".to_owned()),
    ];
    assert_eq!(dead_letters().await, expected);
    assert_eq!(dead_letters().await, expected, "a listing moves nothing");
    // Retried by id: it is delivered again, the other stays dead.
    let swept = queue
        .sweep_dead(&name, 100, &mut |letter| letter.message_id == "rejected")
        .await
        .unwrap();
    assert_eq!(swept.iter().filter(|(_, moved)| *moved).count(), 1);
    let again = next(&mut consumer).await;
    assert_eq!(
        (again.message_id.as_str(), &again.body[..]),
        ("rejected", &b"worse"[..])
    );
    again.ack().await.unwrap();
    assert_eq!(dead_letters().await, expected[..1]);
    cleanup(&queue, &name, vec![consumer]).await;
}

/// The broker closes the connection (as a restart or a network cut would):
/// the next publish waits for the recovery and is confirmed, and a consumer
/// gets what was published before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_publishes_survive_a_lost_connection() {
    let (queue, name) = queue(Kind::Rabbit).await;
    let Queue::Rabbit(rabbit) = &queue else {
        unreachable!()
    };
    queue
        .publish(&name, "before", Bytes::from_static(b"1"))
        .await
        .unwrap();
    // rabbitmqctl: the broker's own tool, on this machine with the broker.
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl (RabbitMQ's own CLI) must be installed with the broker");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let pid = listed
        .lines()
        .find(|line| line.contains(rabbit.connection_name()))
        .and_then(|line| line.split_whitespace().next())
        .expect("the broker lists our connection")
        .to_owned();
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "test: connection lost"])
        .status()
        .unwrap();
    assert!(closed.success());
    queue
        .publish(&name, "after", Bytes::from_static(b"2"))
        .await
        .expect("a publish after the loss is confirmed once the connection recovers");
    let mut consumer = queue.consume(&name).await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let delivery = next(&mut consumer).await;
        ids.push(delivery.message_id.clone());
        delivery.ack().await.unwrap();
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["after", "before"], "nothing confirmed was lost");
    cleanup(&queue, &name, vec![consumer]).await;
}

/// `rabbitmqctl ARGS` (RabbitMQ's own CLI, on this machine with the
/// broker); asserts it succeeded.
fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl (RabbitMQ's own CLI) must be installed with the broker");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// A broker policy, cleared when dropped (a failed test clears it too).
struct Policy(String);

impl Policy {
    fn set(name: &str, pattern: &str, definition: &str) -> Policy {
        rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            name,
            pattern,
            definition,
        ]);
        Policy(name.to_owned())
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        rabbitmqctl(&["clear_policy", &self.0]);
    }
}

/// Dead letters of `name`, listed (nothing moved): their message ids, sorted.
async fn listed(queue: &Queue, name: &str) -> Vec<String> {
    let mut ids: Vec<String> = queue
        .sweep_dead(name, 1_000, &mut |_| false)
        .await
        .unwrap()
        .into_iter()
        .map(|(letter, moved)| {
            assert!(!moved);
            assert_eq!(letter.reason, "rejected");
            letter.message_id
        })
        .collect();
    ids.sort();
    ids
}

/// Listing dead letters never spends them: with a delivery limit of 2 on
/// the dead-letter queue (a policy, as an operator may set one), 10 dead
/// letters listed 22 times are still the same 10; retried, each is
/// delivered on the calls queue once and is a dead letter no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_listing_dead_letters_many_times_keeps_them() {
    let (queue, name) = queue(Kind::Rabbit).await;
    let _policy = Policy::set(
        &format!("{name}-dead-limit"),
        &format!("^{name}\\.dead"),
        r#"{"delivery-limit":2}"#,
    );
    let ids: Vec<String> = (0..10).map(|i| format!("letter-{i:02}")).collect();
    for id in &ids {
        queue
            .publish(&name, id, Bytes::from(id.clone()))
            .await
            .unwrap();
    }
    let mut consumer = queue.consume(&name).await.unwrap();
    for _ in &ids {
        next(&mut consumer).await.reject().await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listed(&queue, &name).await.len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for listing in 0..22 {
        assert_eq!(listed(&queue, &name).await, ids, "listing {listing}");
    }
    let swept = queue.sweep_dead(&name, 1_000, &mut |_| true).await.unwrap();
    assert_eq!(swept.iter().filter(|(_, moved)| *moved).count(), ids.len());
    let mut back = Vec::new();
    for _ in &ids {
        let delivery = next(&mut consumer).await;
        back.push(delivery.message_id.clone());
        delivery.ack().await.unwrap();
    }
    back.sort();
    assert_eq!(back, ids, "each retried letter is delivered again");
    quiet(&mut consumer).await;
    assert!(
        listed(&queue, &name).await.is_empty(),
        "retried: dead no more"
    );
    let again = queue.sweep_dead(&name, 1_000, &mut |_| true).await.unwrap();
    assert!(again.is_empty(), "a second retry moves nothing");
    quiet(&mut consumer).await;
    cleanup(&queue, &name, vec![consumer]).await;
}

/// What an earlier version left: the quorum queue `NAME.dead` bound to
/// `NAME.dlx`, holding a dead letter of each of `ids` (reason `rejected`).
/// Answers the connection it used.
async fn earlier_dead_letter_queue(url: &str, name: &str, ids: &[&str]) -> lapin::Connection {
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let (legacy, dlx) = (format!("{name}.dead"), format!("{name}.dlx"));
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            dlx.as_str().into(),
            lapin::ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(legacy.as_str().into(), durable, quorum)
        .await
        .unwrap();
    channel
        .queue_bind(
            legacy.as_str().into(),
            dlx.as_str().into(),
            name.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for id in ids {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("rejected".into()),
        );
        let properties = lapin::BasicProperties::default()
            .with_message_id((*id).into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                legacy.as_str().into(),
                BasicPublishOptions::default(),
                id.as_bytes(),
                properties,
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }
    connection
}

/// A deployment of an earlier version has the quorum queue `NAME.dead`
/// bound to `NAME.dlx` (a queue's type cannot change on redeclare): the
/// first declare moves its letters, reasons and all, into the stream and
/// deletes it; later dead letters go to the stream alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_adopts_the_dead_letters_of_an_earlier_version() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    let url = std::env::var("TOLLGATE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let name = format!("test-{}", uuid::Uuid::now_v7().simple());
    let legacy = format!("{name}.dead");
    let ids = ["old-0", "old-1", "old-2"];
    let connection = earlier_dead_letter_queue(&url, &name, &ids).await;
    let queue = Queue::connect(&url, options()).await.unwrap();
    queue.declare(&name).await.unwrap();
    queue.declare(&name).await.unwrap();
    assert_eq!(
        listed(&queue, &name).await,
        ids,
        "the old letters are adopted"
    );
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let gone = connection.create_channel().await.unwrap();
    assert!(
        gone.queue_declare(legacy.as_str().into(), passive, FieldTable::default())
            .await
            .is_err(),
        "the old dead-letter queue is deleted"
    );
    queue
        .publish(&name, "new", Bytes::from_static(b"new"))
        .await
        .unwrap();
    let mut consumer = queue.consume(&name).await.unwrap();
    next(&mut consumer).await.reject().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listed(&queue, &name).await.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        listed(&queue, &name).await,
        ["new", "old-0", "old-1", "old-2"]
    );
    let _ = connection.close(200, "done".into()).await;
    cleanup(&queue, &name, vec![consumer]).await;
}

macro_rules! both_queues {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Memory).await;
                }
            )*
        }
        mod rabbit {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Rabbit).await;
                }
            )*
        }
    };
}

both_queues!(
    confirmed_messages_are_delivered_once_acked,
    many_publishes_are_confirmed_concurrently,
    a_dead_consumers_messages_are_redelivered,
    poison_messages_are_dead_lettered_after_the_limit,
);
