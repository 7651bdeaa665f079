//! Administration of consumer groups on [`Client`]: list, describe (members,
//! assignments, committed offsets and lag), reset and delete, plus reading
//! and writing committed offsets outside the group protocol.

use strata_proto::v1::groups_client::GroupsClient;
use strata_proto::v1::{
    CommitOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest, FetchOffsetsRequest, GroupDescription,
    GroupSummary, ListGroupsRequest, PartitionOffset, ResetOffsetsRequest, StartPositionChoice, TopicPartitions,
    reset_offsets_request,
};

use crate::client::{Client, Groups, MAX_MESSAGE_BYTES};
use crate::consumer::StartFrom;
use crate::error::Error;
use crate::routing::Target;

/// A committed offset of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommittedOffset {
    /// The topic.
    pub topic: String,
    /// The partition number.
    pub partition: u32,
    /// The next offset the group reads from this partition.
    pub offset: u64,
}

impl From<PartitionOffset> for CommittedOffset {
    fn from(o: PartitionOffset) -> Self {
        CommittedOffset { topic: o.topic, partition: o.partition, offset: o.offset }
    }
}

/// Groups `(topic, partition)` pairs by topic, keeping first-seen order.
pub(crate) fn topic_partitions<'a>(list: impl IntoIterator<Item = (&'a str, u32)>) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in list {
        match out.iter_mut().find(|tp| tp.topic == topic) {
            Some(tp) => tp.partitions.push(partition),
            None => out.push(TopicPartitions { topic: topic.to_owned(), partitions: vec![partition] }),
        }
    }
    out
}

impl Client {
    pub(crate) fn groups_rpc(&self) -> GroupsClient<crate::client::Transport> {
        GroupsClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Lists the tenant's consumer groups: name, member count and state.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, Error> {
        let req = ListGroupsRequest { tenant: self.tenant().to_owned() };
        Ok(self.groups_rpc().list_groups(self.request(req)).await?.into_inner().groups)
    }

    /// Describes a group: its members with their assignments, and per
    /// partition the committed offset, end offset, lag and owner. Fails
    /// with `NOT_FOUND` (`UNKNOWN_GROUP`) for a group that has neither
    /// members nor committed offsets.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, Error> {
        let req = DescribeGroupRequest { tenant: self.tenant().to_owned(), group: group.to_owned() };
        self.rpc(Target::Group(group), req, |mut c: Groups, r| async move { c.describe_group(r).await }).await
    }

    /// Moves a group's committed offsets of `topic` (of `partitions`, or of
    /// every partition when empty) to `to`. The broker refuses while the
    /// group has members (`FAILED_PRECONDITION`, `GROUP_NOT_EMPTY`) unless
    /// `force`, which removes the members first (they rejoin and read from
    /// the new offsets). Returns the new offsets.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        to: StartFrom,
        partitions: &[u32],
        force: bool,
    ) -> Result<Vec<CommittedOffset>, Error> {
        let to = match to {
            StartFrom::Earliest => reset_offsets_request::To::Position(StartPositionChoice::Earliest as i32),
            StartFrom::Latest => reset_offsets_request::To::Position(StartPositionChoice::Latest as i32),
            StartFrom::Offset(o) => reset_offsets_request::To::Offset(o),
            StartFrom::Timestamp(ts) => reset_offsets_request::To::TimestampMs(ts),
        };
        let req = ResetOffsetsRequest {
            tenant: self.tenant().to_owned(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            to: Some(to),
            force,
            partitions: partitions.to_vec(),
        };
        let offsets = self
            .rpc(Target::Group(group), req, |mut c: Groups, r| async move { c.reset_offsets(r).await })
            .await?
            .offsets;
        Ok(offsets.into_iter().map(CommittedOffset::from).collect())
    }

    /// Deletes a group's committed offsets; refused while it has members.
    pub async fn delete_group(&self, group: &str) -> Result<(), Error> {
        let req = DeleteGroupRequest { tenant: self.tenant().to_owned(), group: group.to_owned() };
        self.rpc(Target::Group(group), req, |mut c: Groups, r| async move { c.delete_group(r).await }).await?;
        Ok(())
    }

    /// [`delete_group`](Self::delete_group) unless the group does not exist;
    /// `true` when it was deleted.
    pub async fn delete_group_if_exists(&self, group: &str) -> Result<bool, Error> {
        crate::error::if_exists(self.delete_group(group).await, crate::ErrorCode::UnknownGroup)
    }

    /// The group's committed offsets: of the given `(topic, partition)`
    /// pairs, or every one when empty. An unknown group has none.
    pub async fn group_offsets(&self, group: &str, partitions: &[(&str, u32)]) -> Result<Vec<CommittedOffset>, Error> {
        let req = FetchOffsetsRequest {
            tenant: self.tenant().to_owned(),
            group: group.to_owned(),
            partitions: topic_partitions(partitions.iter().copied()),
        };
        let offsets = self
            .rpc(Target::Group(group), req, |mut c: Groups, r| async move { c.fetch_offsets(r).await })
            .await?
            .offsets;
        Ok(offsets.into_iter().map(CommittedOffset::from).collect())
    }

    /// Commits offsets for a group from outside the group protocol, e.g. to
    /// seed a group; the broker accepts it only while the group has no
    /// members. Members commit through [`crate::GroupConsumer`].
    pub async fn commit_group_offsets(&self, group: &str, offsets: &[CommittedOffset]) -> Result<(), Error> {
        let req = CommitOffsetsRequest {
            tenant: self.tenant().to_owned(),
            group: group.to_owned(),
            member_id: String::new(),
            generation: 0,
            offsets: offsets
                .iter()
                .map(|o| PartitionOffset {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    offset: o.offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        self.rpc(Target::Group(group), req, |mut c: Groups, r| async move { c.commit_offsets(r).await }).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_grouped_by_topic_in_first_seen_order() {
        let grouped = topic_partitions([("b", 1), ("a", 0), ("b", 0)]);
        assert_eq!(
            grouped,
            vec![
                TopicPartitions { topic: "b".into(), partitions: vec![1, 0] },
                TopicPartitions { topic: "a".into(), partitions: vec![0] },
            ]
        );
    }
}
