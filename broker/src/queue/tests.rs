//! State-machine tests with injected time: every queue semantic that
//! depends on the clock is checked here without sleeping.

use super::state::*;
use crate::catalog::{QueueSettings, TtlAction};
use crate::log::Durability;

fn settings() -> QueueSettings {
    QueueSettings { visibility_timeout_ms: 1000, ..QueueSettings::defaults(Durability::Fsync) }
}

fn msg(now: i64) -> MessageInfo {
    MessageInfo { expires_at: i64::MAX, enqueued_at: now, ..Default::default() }
}

fn ids(leases: &[Lease]) -> Vec<u64> {
    leases.iter().map(|l| l.id).collect()
}

fn fill(q: &mut QueueState, n: u64, now: i64) {
    for id in 0..n {
        q.enqueue(id, &msg(now), 0, 0, true, now);
    }
}

#[test]
fn a_lease_that_runs_out_makes_the_message_visible_again() {
    let mut q = QueueState::new(settings());
    fill(&mut q, 2, 0);
    let (l, _) = q.receive(10, 1000, 0);
    assert_eq!(ids(&l), [0, 1]);
    assert!(q.receive(10, 1000, 999).0.is_empty(), "invisible during the lease");
    assert_eq!(q.next_due(), Some(1000));
    let (l, _) = q.receive(10, 1000, 1000);
    assert_eq!(ids(&l), [0, 1]);
    assert_eq!(l[0].deliveries, 2);
    // The first receipt is stale now; the second one works.
    assert_eq!(q.ack(0, 1, 1001), Err(ReceiptError::Stale { current: 2 }));
    assert_eq!(q.ack(0, 2, 1001), Ok(false));
    assert_eq!(q.ack(0, 2, 1001), Err(ReceiptError::Gone));
}

#[test]
fn extend_moves_the_deadline() {
    let mut q = QueueState::new(settings());
    fill(&mut q, 1, 0);
    let (l, _) = q.receive(1, 1000, 0);
    assert_eq!(q.extend(0, l[0].deliveries, 5000, 900), Ok(5900));
    assert!(q.receive(1, 1000, 2000).0.is_empty(), "extended lease still holds");
    assert_eq!(ids(&q.receive(1, 1000, 5900).0), [0]);
}

#[test]
fn nack_with_a_delay_and_exponential_backoff() {
    let mut s = settings();
    s.retry_backoff_min_ms = 100;
    s.retry_backoff_max_ms = 350;
    let mut q = QueueState::new(s);
    fill(&mut q, 1, 0);
    // An explicit delay wins.
    let (l, _) = q.receive(1, 1000, 0);
    let out = q.nack(0, l[0].deliveries, Some(50), 10).unwrap();
    assert_eq!(out.retry, [(0, 60)]);
    assert!(q.receive(1, 1000, 59).0.is_empty());
    // Without a delay: min * 2^(failures-1), capped: 100, 200, 350, 350.
    assert_eq!((1..=4).map(|n| q.backoff_ms(n)).collect::<Vec<_>>(), [100, 200, 350, 350]);
    // This message failed once already (the explicit nack above).
    let mut now = 60;
    for want in [200, 350, 350] {
        let (l, _) = q.receive(1, 1000, now);
        assert_eq!(l.len(), 1, "visible at {now}");
        let out = q.nack(0, l[0].deliveries, None, now).unwrap();
        assert_eq!(out.retry, [(0, now + want)]);
        assert!(q.receive(1, 1000, now + want - 1).0.is_empty());
        now += want;
    }
}

#[test]
fn max_deliveries_dead_letters_with_the_reason() {
    let mut s = settings();
    s.max_deliveries = 2;
    s.dead_letter_queue = Some("dlq".into());
    let mut q = QueueState::new(s);
    fill(&mut q, 1, 0);
    let (l, _) = q.receive(1, 1000, 0);
    assert!(q.nack(0, l[0].deliveries, None, 0).unwrap().dead_letter.is_empty());
    let (l, _) = q.receive(1, 1000, 0);
    assert_eq!(l[0].deliveries, 2);
    // The second delivery times out: that was the last allowed one.
    let out = q.tick(1000);
    assert_eq!(out.dead_letter.len(), 1);
    assert_eq!(out.dead_letter[0].id, 0);
    assert_eq!(out.dead_letter[0].deliveries, 2);
    assert!(out.dead_letter[0].reason.contains("max_deliveries 2"), "{}", out.dead_letter[0].reason);
    assert!(q.receive(1, 1000, 5000).0.is_empty(), "moving messages are not delivered");
    q.finish(0, Finish::DeadLettered, 1000);
    assert_eq!(q.stats(1000).counters.dead_lettered, 1);
    assert_eq!(q.len(), 0);
}

#[test]
fn without_a_dead_letter_queue_an_exhausted_message_is_dropped() {
    let mut s = settings();
    s.max_deliveries = 1;
    let mut q = QueueState::new(s);
    fill(&mut q, 1, 0);
    let (l, _) = q.receive(1, 1000, 0);
    let out = q.nack(0, l[0].deliveries, None, 0).unwrap();
    assert_eq!(out.finished, [(0, Finish::Dropped)]);
    assert_eq!(q.len(), 0);
}

#[test]
fn delayed_messages_stay_invisible_until_due() {
    let mut q = QueueState::new(settings());
    q.enqueue(0, &MessageInfo { not_before: 500, ..msg(0) }, 0, 0, true, 0);
    q.enqueue(1, &msg(0), 0, 0, true, 0);
    assert_eq!(ids(&q.receive(10, 1000, 0).0), [1]);
    assert_eq!(q.stats(0).delayed, 1);
    assert_eq!(q.next_due(), Some(500));
    assert!(q.receive(10, 1000, 499).0.is_empty());
    assert_eq!(ids(&q.receive(10, 1000, 500).0), [0]);
}

#[test]
fn ttl_drops_or_dead_letters() {
    let mut q = QueueState::new(settings());
    q.enqueue(0, &MessageInfo { expires_at: 100, ..msg(0) }, 0, 0, true, 0);
    q.enqueue(1, &msg(0), 0, 0, true, 0);
    let out = q.tick(100);
    assert_eq!(out.finished, [(0, Finish::Expired)]);
    assert_eq!(ids(&q.receive(10, 1000, 100).0), [1]);
    assert_eq!(q.stats(100).counters.expired, 1);

    let mut s = settings();
    s.ttl_action = TtlAction::DeadLetter;
    s.dead_letter_queue = Some("dlq".into());
    let mut q = QueueState::new(s);
    q.enqueue(0, &MessageInfo { expires_at: 100, ..msg(0) }, 0, 0, true, 0);
    let out = q.tick(150);
    assert_eq!(out.dead_letter.len(), 1);
    assert!(out.dead_letter[0].reason.contains("expired"));
    // A leased message finishes its lease before it expires.
    let mut q = QueueState::new(settings());
    q.enqueue(0, &MessageInfo { expires_at: 100, ..msg(0) }, 0, 0, true, 0);
    let (l, _) = q.receive(1, 1000, 50);
    assert!(q.tick(200).finished.is_empty());
    assert_eq!(q.ack(0, l[0].deliveries, 300), Ok(false));
}

#[test]
fn higher_priorities_are_received_first() {
    let mut s = settings();
    s.priorities = 10;
    let mut q = QueueState::new(s);
    for (id, p) in [(0, 1u8), (1, 9), (2, 5), (3, 9), (4, 0)] {
        q.enqueue(id, &MessageInfo { priority: p, ..msg(0) }, 0, 0, true, 0);
    }
    assert_eq!(q.peek(10).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 3, 2, 0, 4]);
    assert_eq!(ids(&q.receive(10, 1000, 0).0), [1, 3, 2, 0, 4]);
}

#[test]
fn fifo_keeps_one_in_flight_per_group_in_order_and_other_groups_flow() {
    let mut s = settings();
    s.fifo = true;
    let mut q = QueueState::new(s);
    for (id, g) in [(0, "a"), (1, "a"), (2, "b"), (3, "a"), (4, "b")] {
        q.enqueue(id, &MessageInfo { group: g.into(), ..msg(0) }, 0, 0, true, 0);
    }
    // One head per group.
    let (l, _) = q.receive(10, 1000, 0);
    assert_eq!(ids(&l), [0, 2]);
    assert!(q.receive(10, 1000, 1).0.is_empty(), "no second message of a busy group");
    // Group b moves on while a's head is still leased.
    assert_eq!(q.ack(2, 1, 2), Ok(true));
    assert_eq!(ids(&q.receive(10, 1000, 2).0), [4]);
    // A nacked head stays the head: order within the group holds.
    q.nack(0, 1, Some(0), 3).unwrap();
    assert_eq!(ids(&q.receive(10, 1000, 3).0), [0]);
    q.ack(0, 2, 4).unwrap();
    assert_eq!(ids(&q.receive(10, 1000, 4).0), [1]);
    q.ack(1, 1, 5).unwrap();
    assert_eq!(ids(&q.receive(10, 1000, 5).0), [3]);
}

#[test]
fn dedup_ids_are_remembered_for_the_window() {
    let mut s = settings();
    s.dedup_window_ms = 1000;
    let mut q = QueueState::new(s);
    assert_eq!(q.dedup_lookup("x", 0), None);
    q.dedup_remember("x", 7, 0);
    assert_eq!(q.dedup_lookup("x", 999), Some(7));
    assert_eq!(q.dedup_lookup("x", 1000), None, "forgotten after the window");
}

#[test]
fn unsynced_messages_are_not_delivered() {
    let mut q = QueueState::new(settings());
    q.enqueue(0, &msg(0), 0, 0, false, 0);
    assert!(q.receive(1, 1000, 0).0.is_empty());
    assert!(q.mark_synced(0, 0));
    assert_eq!(ids(&q.receive(1, 1000, 0).0), [0]);
}

#[test]
fn a_poison_message_does_not_hold_back_the_others() {
    let mut q = QueueState::new(settings());
    fill(&mut q, 100, 0);
    let mut done = 0;
    let mut now = 0;
    while done < 99 {
        let (l, _) = q.receive(10, 1000, now);
        for lease in l {
            if lease.id == 0 {
                q.nack(0, lease.deliveries, Some(0), now).unwrap();
            } else {
                q.ack(lease.id, lease.deliveries, now).unwrap();
                done += 1;
            }
        }
        now += 1;
        assert!(now < 50, "the others must get through quickly");
    }
    assert_eq!(q.len(), 1);
    assert!(q.deliveries(0).unwrap() >= 1);
}

#[test]
fn snapshot_ranges_describe_finished_ids() {
    let mut q = QueueState::new(settings());
    fill(&mut q, 6, 0);
    let (l, _) = q.receive(6, 1000, 0);
    for lease in &l {
        if [1, 2, 4].contains(&lease.id) {
            q.ack(lease.id, lease.deliveries, 0).unwrap();
        }
    }
    assert_eq!(q.low_watermark(6), 0);
    assert_eq!(q.finished_ranges(8), [(1, 3), (4, 5), (6, 8)]);
    q.ack(0, 1, 0).unwrap();
    assert_eq!(q.low_watermark(6), 3);
}
