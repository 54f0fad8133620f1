//! The little HTTP/1.1 the server needs: one request per connection, a JSON body read by its
//! `Content-Length`, and replies that are either one JSON body or a stream of server-sent
//! events.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A request's body may not exceed this.
pub const MAX_BODY: usize = 8 << 20;

/// A request as the handlers see it.
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without a query.
    pub path: String,
    /// The body's bytes.
    pub body: Vec<u8>,
}

/// Why a request could not be read: the status and message to answer with.
pub struct Unreadable(pub &'static str, pub String);

/// Read one request from `stream`.
pub fn read_request(stream: &TcpStream) -> std::io::Result<Result<Request, Unreadable>> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.by_ref().take(8192).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("").to_string();
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut seen = 0usize;
    loop {
        let mut header = String::new();
        let n = reader.by_ref().take(8192).read_line(&mut header)?;
        seen += n;
        if n == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if seen > 64 << 10 {
            return Ok(Err(Unreadable("431 Request Header Fields Too Large", "the headers exceed 64 KiB".into())));
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                match value.parse() {
                    Ok(n) => length = Some(n),
                    Err(_) => {
                        return Ok(Err(Unreadable(
                            "400 Bad Request",
                            format!("Content-Length `{value}` is not a number"),
                        )));
                    }
                }
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    if chunked {
        return Ok(Err(Unreadable("411 Length Required", "send the body with a Content-Length".into())));
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Ok(Err(Unreadable(
            "413 Payload Too Large",
            format!("the body is {length} bytes; at most {MAX_BODY} are accepted"),
        )));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Ok(Request { method, path, body }))
}

/// Answer with one JSON body.
pub fn respond_json(stream: &mut TcpStream, status: &str, body: &serde_json::Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Start a stream of server-sent events.
pub fn start_events(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
    )?;
    stream.flush()
}

/// Send one event's data.
pub fn event(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    stream.write_all(format!("data: {data}\n\n").as_bytes())?;
    stream.flush()
}

/// Whether the client has closed its end: a read returns end-of-file, or the connection was
/// reset. Only one request is read per connection, so whatever else the client sends is read
/// and dropped on the way to that end-of-file.
pub fn client_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 4096];
    let gone = loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    gone || stream.set_nonblocking(false).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_closes_is_seen_gone_and_one_that_writes_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!client_gone(&server), "an idle open connection");
        client.write_all(b"x").unwrap();
        assert!(!client_gone(&server), "a connection with bytes waiting");
        client.write_all(b"more").unwrap();
        drop(client);
        // The FIN crosses loopback at once; wait for it without a bound on how long it takes.
        let mut polls = 0;
        while !client_gone(&server) {
            polls += 1;
            assert!(polls < 10_000, "a closed connection is never seen gone");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A client that is still there leaves the stream blocking, as the handler expects.
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!client_gone(&server));
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.write_all(b"y").unwrap();
        let mut byte = [0u8; 1];
        (&server).read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"y", "a blocking read waits for the byte");
    }
}
