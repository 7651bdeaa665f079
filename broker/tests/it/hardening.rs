//! Issue 12: every request answered, producer ids that cannot be forged,
//! malformed messages refused precisely, bounded resources.

use bytes::Bytes;
use strata_proto::v1::{CreateTopicRequest, ErrorCode, ProduceRequest, log_client::LogClient};
use tonic::Code;

use crate::harness::*;

async fn create_topic(b: &TestBroker, name: &str, partitions: u32) {
    b.admin()
        .await
        .create_topic(CreateTopicRequest { name: name.into(), partitions, ..Default::default() })
        .await
        .unwrap();
}

fn assert_status(err: &tonic::Status, code: Code, error_code: ErrorCode, text: &str) {
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(strata_proto::error_code(err), error_code, "{err:?}");
    assert!(err.message().contains(text), "message {:?} should mention {text:?}", err.message());
}

async fn big_client(b: &TestBroker) -> LogClient<tonic::transport::Channel> {
    LogClient::new(channel(b.addr()).await).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20)
}

fn req(topic: &str, batch: Bytes, request_id: u64) -> ProduceRequest {
    ProduceRequest { topic: topic.into(), batch, request_id, ..Default::default() }
}

/// Small, oversized, small on one stream: three answers, the middle one
/// RESOURCE_EXHAUSTED naming the limit, the third stored. Both just over the
/// limit (17 MiB) and far over it (100 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_on_a_stream_is_answered_and_the_stream_goes_on() {
    let b = TestBroker::start().await;
    create_topic(&b, "big", 1).await;
    let mut log = big_client(&b).await;
    let mut expected = Vec::new();
    for (round, mib) in [17usize, 100].into_iter().enumerate() {
        let round = round as u64 * 10;
        let first = format!("before-{mib}");
        let last = format!("after-{mib}");
        let reqs = vec![
            req("big", batch_of(std::slice::from_ref(&first)), round + 1),
            req("big", Bytes::from(vec![0x5a; mib << 20]), round + 2),
            req("big", batch_of(std::slice::from_ref(&last)), round + 3),
        ];
        let mut responses = log.produce_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
        let mut answers = std::collections::BTreeMap::new();
        while let Some(r) = responses.message().await.unwrap() {
            assert!(answers.insert(r.request_id, r).is_none(), "one answer per request");
        }
        assert_eq!(answers.keys().copied().collect::<Vec<_>>(), vec![round + 1, round + 2, round + 3]);
        assert!(answers[&(round + 1)].error.is_none());
        assert!(answers[&(round + 3)].error.is_none(), "{:?}", answers[&(round + 3)].error);
        let e = answers[&(round + 2)].error.clone().expect("the oversized request gets an error");
        assert_eq!(e.status_code, Code::ResourceExhausted as i32, "{e:?}");
        let info = e.info.unwrap();
        assert_eq!(info.code, ErrorCode::BatchTooLarge as i32);
        assert_eq!(info.resource, "default/big/0");
        assert_eq!(info.metadata["limit"], ((16u64 << 20) + (1 << 20)).to_string());
        assert!(e.message.contains("over the 17825792-byte message limit"), "{}", e.message);
        expected.extend([first, last]);
    }
    let stored: Vec<String> = read_partition(&mut log, "big", 0, 0).await.iter().map(value).collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_unary_produce_is_resource_exhausted() {
    let b = TestBroker::start().await;
    create_topic(&b, "big", 1).await;
    let mut log = big_client(&b).await;
    let err = log.produce(req("big", Bytes::from(vec![1; 20 << 20]), 9)).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, ErrorCode::BatchTooLarge, "over the 17825792-byte message limit");
    // The connection is still good.
    log.produce(req("big", batch_of(&["ok".into()]), 10)).await.unwrap();
    // Another service's over-limit request (4 MiB default) is refused the same way.
    let mut admin = strata_proto::v1::admin_client::AdminClient::new(channel(b.addr()).await)
        .max_encoding_message_size(64 << 20);
    let err = admin
        .create_topic(CreateTopicRequest { name: "x".repeat(5 << 20), partitions: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(strata_proto::error_info(&err).unwrap().metadata["limit"], (4u64 << 20).to_string());
}
