//! A record's headers read as librdkafka holds them: names and values as
//! bytes.
//!
//! rdkafka's own `Headers::try_get` (and so `iter`, `get_as`, ...) turns
//! each name into a `&str` with `unwrap()`, so a record whose header name
//! is not UTF-8, which any producer may write, panics the reader. Kafka
//! header names are bytes on the wire; reading them as such also skips a
//! UTF-8 check per header on the consumer's path. librdkafka hands names
//! out as C strings: a name is read up to its first NUL byte.

use std::ffi::CStr;
use std::ptr;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers, Message, OwnedHeaders, OwnedMessage};

mod sealed {
    pub trait Sealed {}
    impl Sealed for rdkafka::message::BorrowedMessage<'_> {}
    impl Sealed for rdkafka::message::OwnedMessage {}
    impl Sealed for rdkafka::message::OwnedHeaders {}
}

/// What has a header list librdkafka made: a consumed message, an owned
/// one, owned headers. Sealed, and not implemented for a bare
/// `&BorrowedHeaders`, which safe code can make without any list behind it.
pub trait RecordHeaders: sealed::Sealed {
    /// The native list, null when there is none.
    #[doc(hidden)]
    fn native_headers(&self) -> *const rdsys::rd_kafka_headers_t;

    /// A copy of every header as it was (names that are not UTF-8
    /// included), for a record written from this one.
    fn headers_copy(&self) -> Option<OwnedHeaders>;

    /// How many headers there are.
    fn header_count(&self) -> usize;
}

/// The native list behind owned headers: a `&BorrowedHeaders` from
/// `as_borrowed` is a view at the list's own address, as rdkafka makes and
/// reads one (`publisher::topic` relies on the same; see the workspace
/// manifest before a bump of rdkafka).
fn owned_list(headers: &OwnedHeaders) -> *mut rdsys::rd_kafka_headers_t {
    headers.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t
}

impl RecordHeaders for BorrowedMessage<'_> {
    fn native_headers(&self) -> *const rdsys::rd_kafka_headers_t {
        let mut list = ptr::null_mut();
        // SAFETY: `ptr()` is this live message; librdkafka parses its
        // headers once, keeps the list with the message and writes `list`
        // only when there is one (else it answers NOENT).
        #[allow(unsafe_code)]
        let err = unsafe { rdsys::rd_kafka_message_headers(self.ptr(), &mut list) };
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            list
        } else {
            ptr::null()
        }
    }

    fn headers_copy(&self) -> Option<OwnedHeaders> {
        self.headers().map(BorrowedHeaders::detach)
    }

    fn header_count(&self) -> usize {
        self.headers().map_or(0, Headers::count)
    }
}

impl RecordHeaders for OwnedMessage {
    fn native_headers(&self) -> *const rdsys::rd_kafka_headers_t {
        self.headers().map_or(ptr::null(), |headers| owned_list(headers).cast_const())
    }

    fn headers_copy(&self) -> Option<OwnedHeaders> {
        self.headers().cloned()
    }

    fn header_count(&self) -> usize {
        self.headers().map_or(0, Headers::count)
    }
}

impl RecordHeaders for OwnedHeaders {
    fn native_headers(&self) -> *const rdsys::rd_kafka_headers_t {
        owned_list(self).cast_const()
    }

    fn headers_copy(&self) -> Option<OwnedHeaders> {
        Some(self.clone())
    }

    fn header_count(&self) -> usize {
        self.count()
    }
}

/// One header: its name (up to its first NUL byte) and its value (`None`
/// for a null value).
pub type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// Every header of `record`, in order, names and values as bytes.
pub fn raw_headers<R: RecordHeaders + ?Sized>(record: &R) -> impl Iterator<Item = RawHeader<'_>> + '_ {
    let list = record.native_headers();
    (0..).map_while(move |idx| {
        if list.is_null() {
            return None;
        }
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0usize);
        // SAFETY: `list` is the live header list of `record`, borrowed for
        // the iterator's lifetime (the sealed implementations hand out only
        // lists librdkafka made); librdkafka writes the three out-pointers
        // only on success, and a name it returns is NUL-terminated.
        #[allow(unsafe_code)]
        let found = unsafe { rdsys::rd_kafka_header_get_all(list, idx, &mut name, &mut value, &mut size) };
        if found != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: as above; the name and value live as long as the list,
        // which outlives the borrow of `record`; a null value has no bytes.
        #[allow(unsafe_code)]
        let header = unsafe {
            let name = CStr::from_ptr(name).to_bytes();
            let value = (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
            (name, value)
        };
        Some(header)
    })
}

/// The value of the first header named `name`: `None` when there is none,
/// `Some(None)` when its value is null.
pub fn raw_header<'a, R: RecordHeaders + ?Sized>(record: &'a R, name: &str) -> Option<Option<&'a [u8]>> {
    raw_headers(record).find(|(key, _)| *key == name.as_bytes()).map(|(_, value)| value)
}

/// Adds a header whose name is any bytes (rdkafka's `insert` takes a `&str`):
/// for tests of records other producers may write.
pub fn add_raw_header(headers: OwnedHeaders, name: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let list = owned_list(&headers);
    let (value_ptr, value_len) = value.map_or((ptr::null(), 0), |v| (v.as_ptr(), v.len() as isize));
    // SAFETY: `list` is the list `headers` owns (librdkafka's memory, not
    // Rust's), alive for the call and not borrowed elsewhere, since
    // `headers` was moved in; librdkafka copies name and value by length.
    #[allow(unsafe_code)]
    let err = unsafe {
        rdsys::rd_kafka_header_add(list, name.as_ptr().cast(), name.len() as isize, value_ptr.cast(), value_len)
    };
    // librdkafka 2.12 answers every add with NO_ERROR.
    debug_assert_eq!(err, rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "adding a header");
    headers
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Header;
    use rdkafka::Timestamp;

    use super::*;

    #[test]
    fn headers_read_as_bytes_whatever_their_names() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ce_id", value: Some("a") })
            .insert(Header::<&str> { key: "empty", value: None });
        let headers = add_raw_header(headers, &[0xff, b'x'], Some(b"\x00\x01"));
        let headers = add_raw_header(headers, b"ce_id", Some(b"second"));
        let expected: [RawHeader<'_>; 4] =
            [(b"ce_id", Some(b"a")), (b"empty", None), (b"\xffx", Some(b"\x00\x01")), (b"ce_id", Some(b"second"))];
        assert_eq!(raw_headers(&headers).collect::<Vec<_>>(), expected);
        assert_eq!(raw_header(&headers, "ce_id"), Some(Some(&b"a"[..])), "the first of a name");
        assert_eq!(raw_header(&headers, "empty"), Some(None));
        assert_eq!(raw_header(&headers, "missing"), None);
        assert_eq!(headers.header_count(), 4);
        // A copy (as a dead letter takes one) keeps the name's bytes.
        let copy = headers.headers_copy().unwrap();
        assert_eq!(raw_headers(&copy).nth(2), Some((&b"\xffx"[..], Some(&b"\x00\x01"[..]))));
        assert_eq!(raw_headers(&OwnedHeaders::new()).count(), 0);
        // A name is read up to its first NUL, as librdkafka hands it out.
        let nul = add_raw_header(OwnedHeaders::new(), b"ce_id\0x", Some(b"v"));
        assert_eq!(raw_headers(&nul).next(), Some((&b"ce_id"[..], Some(&b"v"[..]))));

        // An owned message: its headers, or none.
        let message = |headers| OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, headers);
        let with = message(Some(headers));
        assert_eq!(raw_headers(&with).collect::<Vec<_>>(), expected);
        assert_eq!((with.header_count(), with.headers_copy().map(|h| h.count())), (4, Some(4)));
        let without = message(None);
        assert_eq!((raw_headers(&without).count(), without.header_count()), (0, 0));
        assert!(without.headers_copy().is_none());
    }
}
