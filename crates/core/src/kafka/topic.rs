//! librdkafka's handle of a topic, for producing without naming it.
//!
//! rdkafka's `BaseProducer::send` names the topic of every record: it
//! allocates a C string of the name, and librdkafka finds the topic object
//! under its client's write lock (`rd_kafka_topic_new0`), which its broker
//! threads take too, and lets it go again. A handle taken once and passed
//! with each record (`RD_KAFKA_VTYPE_RKT`) does neither; rdkafka's API has
//! no such call, hence this one of our own. The rest is as
//! `BaseProducer::send` does it: librdkafka copies key and payload, owns the
//! headers once it took the record, and hands the opaque back in the
//! delivery report.

use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};

use rdkafka::bindings as rdsys;
use rdkafka::client::Client;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// librdkafka's handle of one topic of a client.
pub struct TopicHandle {
    client: NonNull<rdsys::rd_kafka_t>,
    rkt: NonNull<rdsys::rd_kafka_topic_t>,
}

// SAFETY: librdkafka's topic handles may be used and released from any
// thread (their reference count is atomic, their state behind their own
// lock), as may the client that produces with them.
#[allow(unsafe_code)]
unsafe impl Send for TopicHandle {}
#[allow(unsafe_code)]
unsafe impl Sync for TopicHandle {}

/// One record for [`TopicHandle::produce`].
pub struct Produce<'a> {
    /// The partition, or `None` for the partitioner's choice (by key).
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Milliseconds since the epoch, or `None` for now.
    pub timestamp: Option<i64>,
    /// Owned by librdkafka once the record is taken; given back if it is
    /// refused.
    pub headers: Option<OwnedHeaders>,
    /// Handed back with the record's delivery report.
    pub opaque: *mut c_void,
}

impl TopicHandle {
    /// The handle of `name` on `client`, with the client's default topic
    /// settings (as every record sent by name gets).
    ///
    /// # Safety
    ///
    /// The handle must be dropped before `client` is: it is released on
    /// the client it was made on.
    #[allow(unsafe_code)]
    pub unsafe fn new<C: ClientContext>(client: &Client<C>, name: &str) -> Result<Self, RDKafkaErrorCode> {
        let name = CString::new(name).map_err(|_| RDKafkaErrorCode::InvalidArgument)?;
        let client = NonNull::new(client.native_ptr()).ok_or(RDKafkaErrorCode::InvalidArgument)?;
        // SAFETY: the client is live; a null configuration means the
        // client's default topic configuration, which librdkafka copies.
        let rkt = unsafe { rdsys::rd_kafka_topic_new(client.as_ptr(), name.as_ptr(), ptr::null_mut()) };
        match NonNull::new(rkt) {
            Some(rkt) => Ok(Self { client, rkt }),
            // SAFETY: reads this thread's last librdkafka error.
            None => Err(unsafe { rdsys::rd_kafka_last_error() }.into()),
        }
    }

    /// Hands one record to librdkafka, which will hand `opaque` back in
    /// the delivery report. A refused record gives its headers back with
    /// the reason, and `opaque` is still the caller's.
    pub fn produce(&self, record: Produce<'_>) -> Result<(), (RDKafkaErrorCode, Option<OwnedHeaders>)> {
        use rdsys::rd_kafka_vtype_t::*;
        fn parts(bytes: Option<&[u8]>) -> (*mut c_void, usize) {
            bytes.map_or((ptr::null_mut(), 0), |b| (b.as_ptr() as *mut c_void, b.len()))
        }
        let (payload_ptr, payload_len) = parts(record.payload);
        let (key_ptr, key_len) = parts(record.key);
        // `as_borrowed` is a view at the native list's own address.
        let headers_ptr = record.headers.as_ref().map_or(ptr::null_mut(), |headers| {
            headers.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t
        });
        // SAFETY: the client outlives the handle (`new`'s contract); every
        // pointer is valid for the call; librdkafka copies key and payload
        // (F_COPY) and keeps the topic with a reference of its own; the
        // argument list is typed and ended as librdkafka reads it.
        #[allow(unsafe_code)]
        let err = unsafe {
            rdsys::rd_kafka_producev(
                self.client.as_ptr(),
                RD_KAFKA_VTYPE_RKT,
                self.rkt.as_ptr(),
                RD_KAFKA_VTYPE_PARTITION,
                // RD_KAFKA_PARTITION_UA: the partitioner picks.
                record.partition.unwrap_or(-1),
                RD_KAFKA_VTYPE_MSGFLAGS,
                rdsys::RD_KAFKA_MSG_F_COPY,
                RD_KAFKA_VTYPE_VALUE,
                payload_ptr,
                payload_len,
                RD_KAFKA_VTYPE_KEY,
                key_ptr,
                key_len,
                RD_KAFKA_VTYPE_OPAQUE,
                record.opaque,
                RD_KAFKA_VTYPE_TIMESTAMP,
                // 0: now.
                record.timestamp.unwrap_or(0),
                RD_KAFKA_VTYPE_HEADERS,
                headers_ptr,
                RD_KAFKA_VTYPE_END,
            )
        };
        match err {
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {
                // librdkafka owns the headers now.
                std::mem::forget(record.headers);
                Ok(())
            }
            err => Err((err.into(), record.headers)),
        }
    }
}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and the client still alive (`new`'s
        // contract); records in flight hold references of their own.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_topic_destroy(self.rkt.as_ptr())
        }
    }
}
