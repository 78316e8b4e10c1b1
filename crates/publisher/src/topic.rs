//! Records handed to librdkafka with its handle of their topic
//! ([`stream_core::kafka::TopicHandle`]): the send loop writes to one
//! topic, so it takes the handle once instead of naming the topic in every
//! record. The opaque comes back in the delivery report, where rdkafka
//! reads it as a `usize` ([`rdkafka::IntoOpaque`]).

use std::ffi::c_void;
use std::marker::PhantomData;

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use stream_core::kafka::{Produce, TopicHandle};

use crate::delivery::BulkProducer;

/// librdkafka's handle of one topic of a producer, which it borrows.
pub struct Topic<'p> {
    handle: TopicHandle,
    producer: PhantomData<&'p BulkProducer>,
}

impl<'p> Topic<'p> {
    /// The handle of `name` on `producer`, with the producer's default topic
    /// settings (as every record sent by name gets).
    pub fn new(producer: &'p BulkProducer, name: &str) -> Result<Self, RDKafkaErrorCode> {
        // SAFETY: the handle borrows the producer, so the client outlives it.
        #[allow(unsafe_code)]
        let handle = unsafe { TopicHandle::new(producer.client(), name) }?;
        Ok(Self { handle, producer: PhantomData })
    }

    /// Hands one record to librdkafka (partitioned by key, timestamped now).
    /// A refused record gives its headers back with the reason, so that a
    /// full queue can be waited out and the same record sent again.
    pub fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        opaque: usize,
    ) -> Result<(), (RDKafkaErrorCode, Option<OwnedHeaders>)> {
        self.handle.produce(Produce {
            partition: None,
            key,
            payload: Some(payload),
            timestamp: None,
            headers,
            opaque: opaque as *mut c_void,
        })
    }
}
