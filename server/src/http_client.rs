//! A small blocking HTTP/1.1 client for the command-line tools (`meridian
//! demo`, `meridian health`, and the terminal client in `cli.rs`): plain HTTP
//! to Meridian nodes, one connection per request. Std only: the binary needs
//! nothing more for talking to its own nodes, so a client library would only
//! add build time.
//!
//! Three shapes of exchange: [`request`] (text body, for JSON), [`request_bytes`]
//! (binary bodies such as backups, with headers) and [`open_stream`] (a
//! response read as it arrives, for server-sent events). Every read is
//! bounded: whole responses by [`RESPONSE_BYTES_MAX`] (or the caller's limit),
//! streamed lines by [`SSE_LINE_BYTES_MAX`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The body parsed as JSON (Null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A response with its headers and raw body bytes.
#[derive(Debug)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header called `name` (lower-case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The body parsed as JSON (Null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Largest response read (the cluster view of nine regions is far smaller).
pub const RESPONSE_BYTES_MAX: u64 = 8 << 20;
/// Largest response head (status line and headers).
const HEAD_BYTES_MAX: usize = 64 << 10;
/// Longest line of an event stream; a longer one ends the stream with an error.
pub const SSE_LINE_BYTES_MAX: usize = 1 << 20;

/// Sends one request to `addr` (host:port) and reads the whole response.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Response> {
    let raw = request_bytes(addr, method, path, headers, body.map(str::as_bytes), timeout, RESPONSE_BYTES_MAX)?;
    Ok(Response { status: raw.status, body: String::from_utf8_lossy(&raw.body).into_owned() })
}

/// Sends one request and reads the whole response (at most `limit` bytes of
/// it, head included), keeping headers and the body's exact bytes.
pub fn request_bytes(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
    limit: u64,
) -> std::io::Result<RawResponse> {
    let stream = send(addr, method, path, headers, body, timeout)?;
    let mut raw = Vec::new();
    stream.take(limit).read_to_end(&mut raw)?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("the response ended before its headers did (not an HTTP server?)"))?;
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..head_end]))?;
    let rest = &raw[head_end + 4..];
    let body = if is_chunked(&headers) { dechunk_bytes(rest)? } else { rest.to_vec() };
    if let Some(length) = header_value(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        if body.len() < length {
            return Err(invalid(&format!(
                "the response was cut short: {} of {length} bytes arrived (or it exceeds the {limit}-byte limit)",
                body.len()
            )));
        }
    }
    Ok(RawResponse { status, headers, body })
}

/// A response being read as it arrives: status and headers now, the body
/// (de-chunked) through [`Stream::reader`].
pub struct Stream {
    /// HTTP status code.
    pub status: u16,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    reader: Box<dyn BufRead + Send>,
}

impl Stream {
    /// The first header called `name` (lower-case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The body as it arrives.
    pub fn reader(&mut self) -> &mut (dyn BufRead + Send) {
        &mut *self.reader
    }

    /// The rest of the body as text (at most [`RESPONSE_BYTES_MAX`]), for error responses.
    pub fn read_rest(mut self) -> String {
        let mut out = Vec::new();
        let _ = (&mut self.reader).take(RESPONSE_BYTES_MAX).read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Sends a request and returns once the response head has arrived. Reads of
/// the body wait up to `read_timeout` each (`None`: forever, for event streams
/// that a person stops with Ctrl-C).
pub fn open_stream(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
) -> std::io::Result<Stream> {
    let stream = send(addr, "GET", path, headers, None, connect_timeout)?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = (&mut reader).take(HEAD_BYTES_MAX as u64).read_line(&mut line)?;
        if n == 0 {
            return Err(invalid("the connection closed before the response headers ended"));
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push_str(&line);
        if head.len() > HEAD_BYTES_MAX {
            return Err(invalid("the response headers are too large"));
        }
    }
    let (status, headers) = parse_head(&head)?;
    reader.get_ref().set_read_timeout(read_timeout)?;
    let reader: Box<dyn BufRead + Send> =
        if is_chunked(&headers) { Box::new(BufReader::new(Chunked::new(reader))) } else { Box::new(reader) };
    Ok(Stream { status, headers, reader })
}

/// Connects and writes the request.
fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let target: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or(b"");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    Ok(stream)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Status code and headers from a response head.
fn parse_head(head: &str) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("not an HTTP response"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok((status, headers))
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header_value(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// Decodes a complete chunked body; a body cut short is an error, so a
/// truncated download is never taken for a whole one.
fn dechunk_bytes(mut rest: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end =
            rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("the chunked response was cut short"))?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size in the response"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            return Err(invalid("the chunked response was cut short"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
}

/// Decodes a chunked body as it streams in.
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    remaining: usize,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Chunked<R> {
        Chunked { inner, remaining: 0, done: false }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut line = String::new();
            // A chunk-size line is short; bound it so a hostile server cannot grow memory.
            let n = (&mut self.inner).take(1024).read_line(&mut line)?;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk's data.
                line.clear();
                if (&mut self.inner).take(1024).read_line(&mut line)? == 0 {
                    self.done = true;
                    return Ok(0);
                }
            }
            let size_text = line.split(';').next().unwrap_or("").trim();
            self.remaining =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size in the stream"))?;
            if self.remaining == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.remaining);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the stream ended inside a chunk"));
        }
        self.remaining -= n;
        Ok(n)
    }
}

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field (empty means "message").
    pub event: String,
    /// `id:` field, if any.
    pub id: Option<String>,
    /// `data:` lines joined with newlines.
    pub data: String,
}

/// Reads the next event from an event stream; `Ok(None)` when the stream
/// ends. Comments (keep-alives) are skipped.
pub fn next_sse_event(reader: &mut dyn BufRead) -> std::io::Result<Option<SseEvent>> {
    let mut event = SseEvent::default();
    let mut has_fields = false;
    loop {
        let mut line = String::new();
        let n = reader.take(SSE_LINE_BYTES_MAX as u64).read_line(&mut line)?;
        if n == 0 {
            return Ok(has_fields.then_some(event));
        }
        if !line.ends_with('\n') && n >= SSE_LINE_BYTES_MAX {
            return Err(invalid("an event stream line is longer than the limit"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if has_fields {
                return Ok(Some(event));
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        has_fields = true;
        match field {
            "event" => event.event = value.to_string(),
            "id" => event.id = Some(value.to_string()),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk_bytes(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(), b"hello world");
        assert!(dechunk_bytes(b"5\r\nhel").is_err(), "a cut body is an error");
    }

    #[test]
    fn streams_chunked_events() {
        let mut wire = Vec::new();
        for chunk in [": keep-alive\n\n", "id: 7\nevent: change\nda", "ta: {\"a\":1}\ndata: x\n\n"] {
            wire.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut reader = BufReader::new(Chunked::new(&wire[..]));
        let event = next_sse_event(&mut reader).unwrap().unwrap();
        assert_eq!(event, SseEvent { event: "change".into(), id: Some("7".into()), data: "{\"a\":1}\nx".into() });
        assert_eq!(next_sse_event(&mut reader).unwrap(), None);
    }
}
