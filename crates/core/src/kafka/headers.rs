//! A record's headers read as librdkafka holds them: names and values as
//! bytes.
//!
//! rdkafka's own `Headers::try_get` (and so `iter`, `get_as`, ...) turns
//! each name into a `&str` with `unwrap()`, so a record whose header name
//! is not UTF-8, which any producer may write, panics the reader. Kafka
//! header names are bytes on the wire; reading them as such also skips a
//! UTF-8 check per header on the consumer's path.

use std::ffi::CStr;
use std::ptr;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

/// Headers that can be viewed as rdkafka's [`BorrowedHeaders`]: those of a
/// consumed message, and owned ones.
pub trait AsBorrowedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders;
}

impl AsBorrowedHeaders for BorrowedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self
    }
}

impl AsBorrowedHeaders for OwnedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self.as_borrowed()
    }
}

/// One header: its name without the terminating NUL, and its value (`None`
/// for a null value).
pub type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// Every header of `headers`, in order, names and values as bytes.
pub fn raw_headers<H: AsBorrowedHeaders + ?Sized>(headers: &H) -> impl Iterator<Item = RawHeader<'_>> + '_ {
    // A `&BorrowedHeaders` is a view at the native list's own address (how
    // rdkafka makes one from the pointer, and reads the pointer back).
    let list = headers.as_borrowed_headers() as *const BorrowedHeaders as *const rdsys::rd_kafka_headers_t;
    (0..).map_while(move |idx| {
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0usize);
        // SAFETY: `list` is a live header list borrowed for the iterator's
        // lifetime; librdkafka writes the three out-pointers only on
        // success, and a name it returns is NUL-terminated.
        #[allow(unsafe_code)]
        let found = unsafe { rdsys::rd_kafka_header_get_all(list, idx, &mut name, &mut value, &mut size) };
        if found != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: as above; the name and value live as long as the list,
        // which outlives the borrow of `headers`; a null value has no bytes.
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
pub fn raw_header<'a, H: AsBorrowedHeaders + ?Sized>(headers: &'a H, name: &str) -> Option<Option<&'a [u8]>> {
    raw_headers(headers).find(|(key, _)| *key == name.as_bytes()).map(|(_, value)| value)
}

/// Adds a header whose name is any bytes (rdkafka's `insert` takes a `&str`):
/// for copying a record's headers as they were, and for tests of records
/// other producers may write.
pub fn add_raw_header(headers: OwnedHeaders, name: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let list = headers.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
    let (value_ptr, value_len) = value.map_or((ptr::null(), 0), |v| (v.as_ptr(), v.len() as isize));
    // SAFETY: `list` is the owned, writable list of `headers`, which is
    // alive for the call; librdkafka copies name and value (the name by
    // its length, NUL added).
    #[allow(unsafe_code)]
    let err = unsafe {
        rdsys::rd_kafka_header_add(list, name.as_ptr().cast(), name.len() as isize, value_ptr.cast(), value_len)
    };
    // An owned list is never read-only: this fails only for a list taken
    // from a message after it was produced, which an `OwnedHeaders` is not.
    assert_eq!(err, rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "adding a header");
    headers
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, Headers};

    use super::*;

    #[test]
    fn headers_read_as_bytes_whatever_their_names() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ce_id", value: Some("a") })
            .insert(Header::<&str> { key: "empty", value: None });
        let headers = add_raw_header(headers, &[0xff, b'x'], Some(b"\x00\x01"));
        let headers = add_raw_header(headers, b"ce_id", Some(b"second"));
        assert_eq!(
            raw_headers(&headers).collect::<Vec<_>>(),
            [
                (&b"ce_id"[..], Some(&b"a"[..])),
                (b"empty", None),
                (b"\xffx", Some(b"\x00\x01")),
                (b"ce_id", Some(b"second")),
            ]
        );
        assert_eq!(raw_header(&headers, "ce_id"), Some(Some(&b"a"[..])), "the first of a name");
        assert_eq!(raw_header(&headers, "empty"), Some(None));
        assert_eq!(raw_header(&headers, "missing"), None);
        assert_eq!(headers.count(), 4);
        // A copy (as a dead letter takes one) keeps the name's bytes.
        let copy = headers.as_borrowed().detach();
        assert_eq!(raw_headers(&copy).nth(2), Some((&b"\xffx"[..], Some(&b"\x00\x01"[..]))));
        assert_eq!(raw_headers(&OwnedHeaders::new()).count(), 0);
    }
}
