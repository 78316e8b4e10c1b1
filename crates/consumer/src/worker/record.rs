//! A consumed record, handed from the poll thread to its partition task
//! without copying it.

use std::ops::Deref;
use std::sync::Arc;

use rdkafka::message::BorrowedMessage;

/// A record as librdkafka delivered it: payload, key and headers stay in
/// librdkafka's fetch buffer until the record is dropped.
///
/// `BorrowedMessage::detach` would copy the payload, key, topic name and
/// every header (one allocation each, and as many frees later): about a
/// sixth of the consumer's CPU per event in a bulk run. A record instead
/// keeps the consumer it came from alive, which is what the message's
/// lifetime stands for.
pub(crate) struct Record {
    // Fields drop in declaration order: the message goes before the
    // consumer it borrows from.
    message: BorrowedMessage<'static>,
    // The consumer, whatever its context: only its lifetime matters here.
    _consumer: Arc<dyn Send + Sync>,
}

impl Record {
    #[allow(unsafe_code)]
    pub(crate) fn new<C: Send + Sync + 'static>(message: BorrowedMessage<'_>, consumer: &Arc<C>) -> Self {
        // SAFETY: the lifetime ties the message to its consumer (it is freed
        // with the consumer's fetch buffers); `consumer` must be the one
        // that polled it (the one call site, the poll loop, passes its
        // own), the record owns a reference to it and drops the message
        // first, so the message never outlives it. `BorrowedMessage` is `Send` and `Sync`, and
        // librdkafka lets a message be destroyed from any thread.
        let message = unsafe { std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(message) };
        Self { message, _consumer: consumer.clone() }
    }
}

impl Deref for Record {
    type Target = BorrowedMessage<'static>;

    fn deref(&self) -> &Self::Target {
        &self.message
    }
}
