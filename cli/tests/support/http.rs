//! Plain HTTP for tests that read the dashboard and `/metrics` endpoints without a client
//! library.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

/// One HTTP/1.0 GET (so the reply is never chunked) with the cluster token: the status
/// and body.
pub fn http_get(address: &str, path: &str, token: &str) -> Result<(u16, String), String> {
    let mut stream =
        std::net::TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| e.to_string())?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}
