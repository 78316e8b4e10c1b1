//! Records handed to librdkafka with its handle of their topic.
//!
//! rdkafka's `BaseProducer::send` names the topic of every record: it
//! allocates a C string of the name, and librdkafka finds the topic object
//! under its client's write lock, which the broker thread also takes, and
//! lets it go again. The send loop writes to one topic, so it takes the
//! handle once and passes it with each record (`RD_KAFKA_VTYPE_RKT`), which
//! rdkafka's API does not offer; hence this call of our own. The rest is as
//! `BaseProducer::send` does it: librdkafka copies key and payload, owns
//! the headers once it took the record, and hands the opaque back in the
//! delivery report, where rdkafka reads it as a `usize`
//! ([`rdkafka::IntoOpaque`]).

use std::ffi::{c_void, CString};
use std::mem;
use std::ptr::{self, NonNull};

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;

use crate::delivery::BulkProducer;

/// librdkafka's handle of one topic of a producer.
pub struct Topic<'p> {
    producer: &'p BulkProducer,
    rkt: NonNull<rdsys::rd_kafka_topic_t>,
}

// SAFETY: librdkafka's topic handles may be used and released from any
// thread (their reference count is atomic, their state behind their own
// lock), as may the producer that sends with them.
#[allow(unsafe_code)]
unsafe impl Send for Topic<'_> {}
#[allow(unsafe_code)]
unsafe impl Sync for Topic<'_> {}

impl<'p> Topic<'p> {
    /// The handle of `name` on `producer`, with the producer's default topic
    /// settings (as every record sent by name gets).
    pub fn new(producer: &'p BulkProducer, name: &str) -> Result<Self, RDKafkaErrorCode> {
        let name = CString::new(name).map_err(|_| RDKafkaErrorCode::InvalidArgument)?;
        // SAFETY: the client outlives `'p`; a null configuration means the
        // client's default topic configuration, which librdkafka copies.
        #[allow(unsafe_code)]
        let rkt = unsafe { rdsys::rd_kafka_topic_new(producer.client().native_ptr(), name.as_ptr(), ptr::null_mut()) };
        match NonNull::new(rkt) {
            Some(rkt) => Ok(Self { producer, rkt }),
            // SAFETY: reads this thread's last librdkafka error.
            None => Err(
                #[allow(unsafe_code)]
                unsafe { rdsys::rd_kafka_last_error() }.into(),
            ),
        }
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
        use rdsys::rd_kafka_vtype_t::*;
        let (key_ptr, key_len) = key.map_or((ptr::null_mut(), 0), |key| (key.as_ptr() as *mut c_void, key.len()));
        // `as_borrowed` is a view at the native list's own address.
        let headers_ptr = headers.as_ref().map_or(ptr::null_mut(), |headers| {
            headers.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t
        });
        // SAFETY: every pointer is valid for the call; librdkafka copies key
        // and payload (F_COPY) and keeps the topic with a reference of its
        // own; the argument list is typed and ended as librdkafka reads it.
        #[allow(unsafe_code)]
        let err = unsafe {
            rdsys::rd_kafka_producev(
                self.producer.client().native_ptr(),
                RD_KAFKA_VTYPE_RKT,
                self.rkt.as_ptr(),
                RD_KAFKA_VTYPE_PARTITION,
                // RD_KAFKA_PARTITION_UA: the partitioner picks.
                -1i32,
                RD_KAFKA_VTYPE_MSGFLAGS,
                rdsys::RD_KAFKA_MSG_F_COPY,
                RD_KAFKA_VTYPE_VALUE,
                payload.as_ptr() as *mut c_void,
                payload.len(),
                RD_KAFKA_VTYPE_KEY,
                key_ptr,
                key_len,
                RD_KAFKA_VTYPE_OPAQUE,
                opaque as *mut c_void,
                RD_KAFKA_VTYPE_HEADERS,
                headers_ptr,
                RD_KAFKA_VTYPE_END,
            )
        };
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            // librdkafka owns the headers now.
            mem::forget(headers);
            Ok(())
        } else {
            Err((err.into(), headers))
        }
    }
}

impl Drop for Topic<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle is ours; records in flight hold references of
        // their own.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_topic_destroy(self.rkt.as_ptr())
        }
    }
}
