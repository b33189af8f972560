//! A handler's Kafka outputs recorded in its inbox row, so a redelivery
//! the inbox skips can hand them to the source's transaction again (see
//! [`backstop::transaction`]).
//!
//! In a source's transaction (Kafka exactly-once mode), the handler's
//! publishes go into the Kafka transaction that also commits the message's
//! offset. The inbox commits first: if the process dies between the inbox's
//! commit and Kafka's, the message is redelivered, the inbox finds its row
//! and skips the handler, and without a record its outputs would be gone.
//! So the attempt's publishes are written into the row's `outputs` column
//! in the inbox transaction, and a skipped redelivery re-emits them into the
//! current Kafka transaction (the same message ids: readers that saw an
//! earlier copy drop this one).

use backstop::Message;
use backstop::message::Headers;
use backstop::outgoing::PublishFailed;
use serde::{Deserialize, Serialize};

/// One recorded output.
#[derive(Serialize, Deserialize)]
struct Output {
    destination: String,
    message_id: String,
    /// Hex.
    key: Option<String>,
    /// Hex.
    payload: String,
    headers: Headers,
}

/// The outputs as the `outputs` column keeps them (JSON text).
pub(crate) fn encode(outputs: &[(String, Message)]) -> Result<String, PublishFailed> {
    let rows: Vec<Output> = outputs
        .iter()
        .map(|(destination, message)| Output {
            destination: destination.clone(),
            message_id: message.meta.message_id.clone(),
            key: message.key.as_ref().map(hex::encode),
            payload: hex::encode(&message.payload),
            headers: message.headers.clone(),
        })
        .collect();
    serde_json::to_string(&rows).map_err(|e| {
        backstop::outgoing::write_failed(
            outputs.first().map_or("", |(d, _)| d.as_str()),
            true,
            format!("the outputs cannot be recorded in the inbox row: {e}"),
        )
    })
}

/// The outputs of a recorded column; an unreadable record is an error.
pub(crate) fn decode(column: &str) -> Result<Vec<(String, Message)>, String> {
    let rows: Vec<Output> =
        serde_json::from_str(column).map_err(|e| format!("recorded outputs: {e}"))?;
    rows.into_iter()
        .map(|row| {
            let payload = hex::decode(&row.payload).map_err(|e| format!("payload: {e}"))?;
            let mut message = Message::new(payload).with_message_id(row.message_id);
            if let Some(key) = row.key {
                message = message.with_key(hex::decode(&key).map_err(|e| format!("key: {e}"))?);
            }
            message.headers = row.headers;
            Ok((row.destination, message))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_come_back_as_they_were_recorded() {
        let message = Message::new(vec![0u8, 159, 255])
            .with_message_id("orders:m-1:out:0")
            .with_key(b"k\x001".to_vec())
            .with_header("x-backstop-caused-by", "m-1")
            .with_header("seq", "2");
        let record = encode(&[("events".to_owned(), message.clone())]).expect("encoded");
        let back = decode(&record).expect("decoded");
        assert_eq!(back.len(), 1);
        let (destination, again) = &back[0];
        assert_eq!(destination, "events");
        assert_eq!(again.payload, message.payload);
        assert_eq!(again.key, message.key);
        assert_eq!(again.meta.message_id, "orders:m-1:out:0");
        assert_eq!(again.headers, message.headers);
        assert!(decode("not json").is_err());
    }
}
