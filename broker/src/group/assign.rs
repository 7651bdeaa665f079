//! The partition assignor: a pure function from the group's members, their
//! subscriptions and what they own now to a balanced target assignment that
//! moves as few partitions as possible (sticky).

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub(crate) type Tp = (String, u32);

/// One member's view for the assignor.
#[derive(Debug, Clone)]
pub(crate) struct MemberSpec {
    pub topics: BTreeSet<String>,
    /// Partitions the member owns or is giving up right now.
    pub current: BTreeSet<Tp>,
}

/// Computes the target assignment.
///
/// - Every existing partition of a subscribed topic goes to exactly one
///   member subscribed to that topic.
/// - Counts are balanced: with the same subscriptions, no member has more
///   than one partition above another.
/// - A member keeps what it has unless balance requires giving it up.
pub(crate) fn assign(
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut result: BTreeMap<String, BTreeSet<Tp>> = members.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    if members.is_empty() {
        return result;
    }
    // Every assignable partition.
    let all: BTreeSet<Tp> = partitions
        .iter()
        .filter(|(t, _)| members.values().any(|m| m.topics.contains(*t)))
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
        .collect();
    let total = all.len();
    let k = members.len();
    // Members that own the most get the larger quotas: fewer moves.
    let mut order: Vec<&String> = members.keys().collect();
    order.sort_by_key(|m| {
        (std::cmp::Reverse(members[*m].current.iter().filter(|tp| all.contains(*tp)).count()), (*m).clone())
    });
    let mut quota: BTreeMap<&String, usize> = BTreeMap::new();
    for (i, m) in order.iter().enumerate() {
        quota.insert(m, total / k + usize::from(i < total % k));
    }
    // Keep current ownership up to the quota (first claimant wins).
    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    for m in &order {
        let spec = &members[*m];
        for tp in &spec.current {
            if result[*m].len() >= quota[m] {
                break;
            }
            if all.contains(tp) && spec.topics.contains(&tp.0) && taken.insert(tp.clone()) {
                result.get_mut(*m).map(|s| s.insert(tp.clone()));
            }
        }
    }
    // Hand out the rest to the least loaded eligible member.
    for tp in all.iter().filter(|tp| !taken.contains(*tp)) {
        let best = members
            .iter()
            .filter(|(_, spec)| spec.topics.contains(&tp.0))
            .min_by_key(|(id, _)| {
                let have = result[*id].len();
                (have >= quota[id], have, (*id).clone())
            })
            .map(|(id, _)| id.clone());
        if let Some(id) = best {
            result.get_mut(&id).map(|s| s.insert(tp.clone()));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topics: &[&str], current: &[(&str, u32)]) -> MemberSpec {
        MemberSpec {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            current: current.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        }
    }

    fn parts(n: u32) -> BTreeMap<String, u32> {
        [("t".to_string(), n)].into()
    }

    fn counts(a: &BTreeMap<String, BTreeSet<Tp>>) -> Vec<usize> {
        a.values().map(BTreeSet::len).collect()
    }

    #[test]
    fn three_members_six_partitions_get_two_each() {
        let members: BTreeMap<String, MemberSpec> =
            ["a", "b", "c"].iter().map(|m| (m.to_string(), spec(&["t"], &[]))).collect();
        let a = assign(&members, &parts(6));
        assert_eq!(counts(&a), vec![2, 2, 2]);
        let union: BTreeSet<Tp> = a.values().flatten().cloned().collect();
        assert_eq!(union.len(), 6);
    }

    #[test]
    fn a_new_member_takes_only_what_it_must() {
        // 3 members own 4 partitions each of 12; a 4th joins.
        let mut members = BTreeMap::new();
        for (i, m) in ["a", "b", "c"].iter().enumerate() {
            let owned: Vec<(&str, u32)> = (0..4).map(|p| ("t", i as u32 * 4 + p)).collect();
            members.insert(m.to_string(), spec(&["t"], &owned));
        }
        members.insert("d".to_string(), spec(&["t"], &[]));
        let a = assign(&members, &parts(12));
        assert_eq!(counts(&a), vec![3, 3, 3, 3]);
        for m in ["a", "b", "c"] {
            // Each old member keeps 3 of its 4: exactly 3 partitions move in all.
            assert!(a[m].is_subset(&members[m].current), "{m} keeps only its own");
        }
    }

    #[test]
    fn a_leaving_member_spreads_its_partitions() {
        let mut members = BTreeMap::new();
        members.insert("a".to_string(), spec(&["t"], &[("t", 0), ("t", 1)]));
        members.insert("b".to_string(), spec(&["t"], &[("t", 2), ("t", 3)]));
        // c (owning 4, 5) is gone.
        let a = assign(&members, &parts(6));
        assert_eq!(counts(&a), vec![3, 3]);
        assert!(a["a"].is_superset(&members["a"].current));
        assert!(a["b"].is_superset(&members["b"].current));
    }

    #[test]
    fn only_subscribers_get_a_topics_partitions() {
        let mut members = BTreeMap::new();
        members.insert("a".to_string(), spec(&["x"], &[]));
        members.insert("b".to_string(), spec(&["x", "y"], &[]));
        let partitions: BTreeMap<String, u32> = [("x".to_string(), 2), ("y".to_string(), 2)].into();
        let a = assign(&members, &partitions);
        assert!(a["a"].iter().all(|(t, _)| t == "x"));
        let union: BTreeSet<Tp> = a.values().flatten().cloned().collect();
        assert_eq!(union.len(), 4);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let members: BTreeMap<String, MemberSpec> =
            ["a", "b", "c"].iter().map(|m| (m.to_string(), spec(&["t"], &[]))).collect();
        let a = assign(&members, &parts(2));
        assert_eq!(counts(&a).iter().sum::<usize>(), 2);
        assert!(counts(&a).iter().all(|c| *c <= 1));
    }
}
