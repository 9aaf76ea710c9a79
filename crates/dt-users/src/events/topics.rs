//! Creating the topics dt-users uses. Only `dt-users kafka create-topics` does it: partitions,
//! replication and retention are decisions for whoever runs the cluster, and a process that
//! created a missing topic on its own would hide a typo in a topic name behind a new, empty
//! topic with the broker's defaults.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::client::base_config;
use crate::config::KafkaSettings;

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCreation {
    Created(String),
    AlreadyExists(String),
}

/// Creates the events, commands and DLQ topics with `partitions` partitions of `replication`
/// replicas each; a topic that exists already is left as it is.
pub async fn create_topics(
    kafka: &KafkaSettings,
    partitions: i32,
    replication: i32,
) -> Result<Vec<TopicCreation>, String> {
    if partitions < 1 || replication < 1 {
        return Err("partitions and replication must be at least 1".into());
    }
    let admin: AdminClient<DefaultClientContext> = base_config(kafka)?.create()?;
    let names = [
        kafka.events_topic.as_str(),
        kafka.commands_topic.as_str(),
        kafka.dlq_topic.as_str(),
    ];
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(topics.iter(), &options)
        .await
        .map_err(|e| format!("creating topics: {e}"))?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(topic) => Ok(TopicCreation::Created(topic)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok(TopicCreation::AlreadyExists(topic))
            }
            Err((topic, code)) => Err(format!("creating topic {topic}: {code}")),
        })
        .collect()
}
