//! The idempotent producer against a real broker: producers are idempotent
//! by default, and a newer instance with the same producer name fences the
//! older one.

use std::time::Duration;

use strata_client::{ConsumerConfig, Error, ErrorCode, Message, ProducerConfig, StartFrom, TopicOptions};

use crate::{TestBroker, read};

#[tokio::test]
async fn a_newer_producer_with_the_same_name_fences_the_older_one() {
    let (broker, client) = TestBroker::with_client().await;
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
    let (broker, client) = TestBroker::with_client().await;
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

/// A TCP proxy between the client and the real broker. While `swallow` is
/// on it drops the broker's bytes (the client hears nothing back);
/// `close_all` closes every connection made so far, and later ones pass.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    /// (connection generation, swallow broker bytes)
    mode: tokio::sync::watch::Sender<(u64, bool)>,
}

impl CuttingProxy {
    async fn start(target: std::net::SocketAddr) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = tokio::sync::watch::channel((0u64, false));
        let mode_rx = mode.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut mode = mode_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let generation = mode.borrow_and_update().0;
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        tokio::select! {
                            n = sr.read(&mut buf) => match n {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let swallow = mode.borrow().1;
                                    if !swallow && cw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            },
                            changed = mode.changed() => {
                                if changed.is_err() || mode.borrow().0 != generation {
                                    break;
                                }
                            }
                        }
                    }
                    up.abort();
                });
            }
        });
        CuttingProxy { addr, mode }
    }

    fn swallow(&self) {
        self.mode.send_modify(|m| m.1 = true);
    }

    fn close_all(&self) {
        self.mode.send_modify(|m| *m = (m.0 + 1, false));
    }
}

/// The broker stores a batch but its acknowledgement is lost with the
/// connection; the producer resends the same batch on a new connection and
/// the broker answers with the stored copy: the message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_from_the_real_broker_does_not_store_twice() {
    let broker = TestBroker::start().await;
    let direct = broker.client().await;
    direct.create_topic("lost-ack", 1, TopicOptions::default()).await.unwrap();
    let broker_addr: std::net::SocketAddr = broker.url.trim_start_matches("http://").parse().unwrap();
    let proxy = CuttingProxy::start(broker_addr).await;
    let via_proxy = strata_client::Client::connect(&format!("http://{}", proxy.addr)).await.unwrap();
    let producer = via_proxy.producer_with_config("lost-ack", ProducerConfig::default()).await.unwrap();
    assert_eq!(producer.send(Message::new("first")).await.unwrap().offset, 0);

    let end_offset = || async { direct.describe_topic("lost-ack").await.unwrap().partition_details[0].end_offset };
    // From now on the client hears nothing from the broker.
    proxy.swallow();
    let delivery = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.send(Message::new("second")).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while end_offset().await < 2 {
        assert!(std::time::Instant::now() < deadline, "the broker never stored the second batch");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stored, but the acknowledgement is lost with the connection.
    proxy.close_all();
    let meta = tokio::time::timeout(Duration::from_secs(30), delivery).await.expect("resent in time").unwrap().unwrap();
    assert_eq!(meta.offset, 1, "the retry is answered with the stored copy's offset");
    assert_eq!(end_offset().await, 2, "stored once");
    producer.send(Message::new("third")).await.unwrap();
    assert_eq!(end_offset().await, 3);
}
