//! Reading a topic's offsets through [`Topics`]: its end offsets (high
//! watermarks) and the offsets a group committed on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{ADMIN_TIMEOUT, Topics};
use crate::Error;
use crate::blocking::blocking;

impl Topics {
    /// The end offset (high watermark) of each partition of `topic`.
    pub async fn end_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, Error> {
        let partitions = self
            .partitions(topic)
            .await?
            .ok_or_else(|| Error::MissingTopic(topic.to_owned()))?;
        let admin = Arc::clone(&self.admin);
        let name = topic.to_owned();
        blocking(move || {
            (0..partitions)
                .map(|p| {
                    admin
                        .inner()
                        .fetch_watermarks(&name, p, ADMIN_TIMEOUT)
                        .map(|(_, high)| (p, high))
                        .map_err(Error::kafka(format!("reading the end offsets of {name}")))
                })
                .collect()
        })
        .await
    }

    /// The offsets `group` committed on each partition of `topic` (`None`:
    /// nothing committed yet).
    pub async fn committed_offsets(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<BTreeMap<i32, Option<i64>>, Error> {
        let partitions = self
            .partitions(topic)
            .await?
            .ok_or_else(|| Error::MissingTopic(topic.to_owned()))?;
        let mut config = self.config.clone();
        config.group = group.to_owned();
        let reader: BaseConsumer = config
            .offsets_reader_config()
            .create()
            .map_err(Error::Config)?;
        let name = topic.to_owned();
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&name, p);
            }
            let committed = reader
                .committed_offsets(tpl, ADMIN_TIMEOUT)
                .map_err(Error::kafka(format!(
                    "reading the committed offsets of {name}"
                )))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| {
                    let offset = match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    };
                    (e.partition(), offset)
                })
                .collect())
        })
        .await
    }
}
