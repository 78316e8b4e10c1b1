//! The load loop's HTTP/1.1 client: one keep-alive connection per stream,
//! each request one `write` and its response usually one `read`.
//!
//! `bench api` measures the gateway, so its own CPU per request must stay
//! small beside it: a pooled general-purpose client (reqwest over hyper)
//! cost the load generator 55–75 µs of CPU per request on this workload, as
//! much as the gateway itself. Requests are formatted here (a fixed head
//! and the body) and responses parsed with `httparse`, the parser hyper
//! itself uses; only `Content-Length` framing is read, which is what the
//! gateway sends. A poster can also open a new connection for each request
//! and close it after the response, as a client without a connection pool
//! (or with a full one) does.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most response headers parsed.
const MAX_HEADERS: usize = 32;

/// A connection that POSTs bodies of one content type to one path.
pub struct Poster {
    /// `host:port` to connect to.
    addr: String,
    /// `POST {path} HTTP/1.1` and the fixed headers, up to `Content-Length: `.
    head: Vec<u8>,
    stream: Option<TcpStream>,
    /// The request being written; reused.
    request: Vec<u8>,
    /// Bytes read; reused. The first `consumed` are the last response.
    read: Vec<u8>,
    consumed: usize,
    timeout: Duration,
    /// Keep the connection for the next request; otherwise close it after
    /// each response (the client closes first, as a pool-less client does).
    keep_alive: bool,
}

/// A response: its status and body.
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl Poster {
    /// A poster to `path` on the server of `base` (`http://host:port`),
    /// sending `api_key` as `X-API-Key` and bodies of `content_type`.
    /// Connects on [`connect`](Self::connect) or the first request.
    pub fn new(
        base: &reqwest::Url,
        path: &str,
        api_key: &str,
        content_type: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let host = base.host_str().ok_or_else(|| anyhow::anyhow!("{base} has no host"))?;
        let port = base.port_or_known_default().ok_or_else(|| anyhow::anyhow!("{base} has no port"))?;
        anyhow::ensure!(base.scheme() == "http", "bench api sends over plain http, not {}", base.scheme());
        let addr = format!("{host}:{port}");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {api_key}\r\nContent-Type: {content_type}\r\nContent-Length: "
        )
        .into_bytes();
        Ok(Self {
            addr,
            head,
            stream: None,
            request: Vec::new(),
            read: Vec::with_capacity(1024),
            consumed: 0,
            timeout,
            keep_alive: true,
        })
    }

    /// Opens a new connection for every request and closes it after the
    /// response, instead of keeping one.
    pub fn connection_per_request(mut self) -> Self {
        self.keep_alive = false;
        self
    }

    /// POSTs `body` and reads the response. A failed exchange drops the
    /// connection (the next request opens a new one); it is not retried,
    /// since the server may have acted on it.
    pub async fn post(&mut self, body: &[u8]) -> Result<Response<'_>, String> {
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(Ok((status, start, end))) => Ok(Response { status, body: &self.read[start..end] }),
            Ok(Err(error)) => {
                self.stream = None;
                Err(error)
            }
            Err(_) => {
                self.stream = None;
                Err(format!("no response within {:?}", self.timeout))
            }
        }
    }

    /// Opens the connection now rather than on the first request (a no-op
    /// when it is open).
    pub async fn connect(&mut self) -> Result<(), String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            self.stream = Some(stream);
            self.read.clear();
            self.consumed = 0;
        }
        Ok(())
    }

    /// Writes the request and reads one response; returns its status and
    /// where its body lies in `self.read`.
    async fn exchange(&mut self, body: &[u8]) -> Result<(u16, usize, usize), String> {
        self.connect().await?;
        let stream = self.stream.as_mut().expect("connected above");
        self.request.clear();
        self.request.extend_from_slice(&self.head);
        self.request.extend_from_slice(body.len().to_string().as_bytes());
        self.request.extend_from_slice(b"\r\n\r\n");
        self.request.extend_from_slice(body);
        stream.write_all(&self.request).await.map_err(|e| format!("write: {e}"))?;

        self.read.drain(..self.consumed);
        self.consumed = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.read).map_err(|e| format!("bad response: {e}"))? {
                httparse::Status::Complete(head_len) => {
                    let status = response.code.unwrap_or(0);
                    let mut length = None;
                    let mut close = false;
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok());
                        } else if header.name.eq_ignore_ascii_case("connection") {
                            close = header.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    let length: usize = length.ok_or("response without Content-Length")?;
                    let end = head_len + length;
                    while self.read.len() < end {
                        read_some(stream, &mut self.read).await?;
                    }
                    if close || !self.keep_alive {
                        self.stream = None;
                    }
                    self.consumed = end;
                    return Ok((status, head_len, end));
                }
                httparse::Status::Partial => read_some(stream, &mut self.read).await?,
            }
        }
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.reserve(1024);
    let n = stream.read_buf(buf).await.map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers each request with the given raw responses in
    /// turn, and returns the requests it read.
    async fn serve(responses: Vec<&'static [u8]>) -> (reqwest::Url, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for response in responses {
                // Read one request: headers, then the body by Content-Length.
                let start = seen.len();
                loop {
                    let mut headers = [httparse::EMPTY_HEADER; 16];
                    let mut request = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(n)) = request.parse(&seen[start..]) {
                        let length: usize = request
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                            .unwrap();
                        if seen.len() - start >= n + length {
                            break;
                        }
                    }
                    let mut chunk = [0u8; 256];
                    let got = socket.read(&mut chunk).await.unwrap();
                    seen.extend_from_slice(&chunk[..got]);
                }
                // Split writes: the client must reassemble.
                let (a, b) = response.split_at(response.len() / 2);
                socket.write_all(a).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                socket.write_all(b).await.unwrap();
            }
            seen
        });
        (url, task)
    }

    #[tokio::test]
    async fn posts_on_one_connection_and_reads_split_responses() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"a\"}\n",
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}",
        ])
        .await;
        let mut poster =
            Poster::new(&url, "/stream/s1/send", "k1", "application/json", Duration::from_secs(5)).unwrap();
        let first = poster.post(br#"{"data":1}"#).await.unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(first.body, b"{\"id\":\"a\"}\n");
        let second = poster.post(br#"{"data":22}"#).await.unwrap();
        assert_eq!(second.status, 503);
        assert_eq!(second.body, b"{}");
        let seen = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(seen.starts_with("POST /stream/s1/send HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.contains("X-API-Key: k1\r\n") && seen.contains("Content-Length: 10\r\n\r\n{\"data\":1}"),
            "{seen}"
        );
        assert!(seen.contains("Content-Length: 11\r\n\r\n{\"data\":22}"), "{seen}");
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_error_and_the_next_request_reconnects() {
        let (url, server) = serve(vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"]).await;
        let mut poster = Poster::new(&url, "/x", "k", "application/json", Duration::from_secs(5)).unwrap();
        assert_eq!(poster.post(b"1").await.unwrap().status, 200);
        server.await.unwrap();
        // The server is gone: connecting fails, clearly.
        let error = poster.post(b"2").await.err().expect("no server left");
        assert!(error.contains("connect") || error.contains("closed"), "{error}");
    }

    #[tokio::test]
    async fn per_request_opens_a_connection_for_each_request_and_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut seen = Vec::new();
                while !seen.ends_with(b"\r\n\r\nk=v") {
                    let mut chunk = [0u8; 256];
                    let got = socket.read(&mut chunk).await.unwrap();
                    assert!(got > 0, "the client closed before its request was whole");
                    seen.extend_from_slice(&chunk[..got]);
                }
                socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await.unwrap();
                // Keep-alive from the server's side: the client is the one that closes.
                let mut rest = Vec::new();
                socket.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "a second request on a per-request connection");
                requests.push(String::from_utf8(seen).unwrap());
            }
            requests
        });
        let mut poster = Poster::new(&url, "/f", "k", "application/x-www-form-urlencoded", Duration::from_secs(5))
            .unwrap()
            .connection_per_request();
        assert_eq!(poster.post(b"k=v").await.unwrap().status, 200);
        assert_eq!(poster.post(b"k=v").await.unwrap().status, 200);
        let requests = server.await.unwrap();
        assert_eq!(requests.len(), 2);
        assert!(requests[0].contains("Content-Type: application/x-www-form-urlencoded\r\n"), "{}", requests[0]);
    }
}
