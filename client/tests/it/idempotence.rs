//! The idempotent producer against a real broker: producers are idempotent
//! by default, and a newer instance with the same producer name fences the
//! older one.

use std::time::Duration;

use strata_client::{ConsumerConfig, Error, ErrorCode, Message, ProducerConfig, StartFrom, TopicOptions};

use crate::{TestBroker, read};

#[tokio::test]
async fn a_newer_producer_with_the_same_name_fences_the_older_one() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("fenced", 1, TopicOptions::default()).await.unwrap();
    let named = ProducerConfig { producer_name: Some("invoice-writer".into()), ..ProducerConfig::default() };

    let old = client.producer_with_config("fenced", named.clone()).await.unwrap();
    let (old_id, old_epoch) = old.producer_id().expect("idempotent by default");
    old.send(Message::new("old-1")).await.unwrap();

    let new = client.producer_with_config("fenced", named).await.unwrap();
    let (new_id, new_epoch) = new.producer_id().expect("idempotent");
    assert_eq!(new_id, old_id, "a name keeps its producer id");
    assert!(new_epoch > old_epoch, "each start bumps the epoch");
    new.send(Message::new("new-1")).await.unwrap();

    let err = old.send(Message::new("old-2")).await.unwrap_err();
    assert!(matches!(err, Error::ProducerFenced(_)), "{err:?}");
    assert_eq!(err.error_code(), ErrorCode::ProducerFenced);
    assert!(err.to_string().contains("fenced"), "{err}");
    // Fatal for the old producer: every later send fails too.
    let err = old.send(Message::new("old-3")).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::ProducerFenced, "{err}");
    new.send(Message::new("new-2")).await.unwrap();

    let config =
        ConsumerConfig { start: StartFrom::Earliest, max_wait: Duration::from_millis(50), ..ConsumerConfig::default() };
    let mut consumer = client.consumer("fenced", config).await.unwrap();
    let values: Vec<String> =
        read(&mut consumer, 3).await.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
    assert_eq!(values, vec!["old-1", "new-1", "new-2"]);
    broker.stop().await;
}

#[tokio::test]
async fn unnamed_producers_get_distinct_identities() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("ids", 2, TopicOptions::default()).await.unwrap();
    let a = client.producer("ids").await.unwrap();
    let b = client.producer("ids").await.unwrap();
    assert_ne!(a.producer_id().map(|p| p.0), b.producer_id().map(|p| p.0));
    // Both write to the same partitions without fencing each other.
    for i in 0..20 {
        a.send(Message::new(format!("a{i}")).with_partition(i % 2)).await.unwrap();
        b.send(Message::new(format!("b{i}")).with_partition(i % 2)).await.unwrap();
    }
    let plain = ProducerConfig { idempotent: false, ..ProducerConfig::default() };
    let c = client.producer_with_config("ids", plain).await.unwrap();
    assert_eq!(c.producer_id(), None);
    c.send(Message::new("plain")).await.unwrap();
    broker.stop().await;
}
