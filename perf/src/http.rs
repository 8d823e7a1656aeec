//! HTTP/1.1 and HTTP/2 payloads: the server side (an echo: the response body is as long as
//! the request body) and the client side of one request. The HTTP/1.1 side is a few lines by
//! hand (one request at a time per connection, keep-alive); HTTP/2 is the `h2` crate, one
//! stream per request, many in flight on a connection.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest header block either side accepts.
const MAX_HEAD: usize = 16 << 10;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one message head (up to the blank line) into `buf`, which may already hold bytes;
/// returns the head's length and its content-length. `Ok(None)` on a clean EOF before any
/// byte.
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(usize, usize)>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head is not UTF-8"))?;
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse::<usize>())
                .transpose()
                .map_err(|_| bad("bad content-length"))?
                .unwrap_or(0);
            return Ok(Some((end + 4, len)));
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("header block too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one whole message (head and body); `Ok(None)` on a clean EOF between messages.
/// Bytes after the message stay in `buf` for the next one.
async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(String, usize)>> {
    let Some((head_len, body_len)) = read_head(r, buf).await? else {
        return Ok(None);
    };
    let first = String::from_utf8_lossy(&buf[..head_len])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let total = head_len + body_len;
    while buf.len() < total {
        let mut chunk = vec![0u8; (total - buf.len()).min(64 << 10)];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..total);
    Ok(Some((first, body_len)))
}

/// Serves HTTP/1.1 requests until the client closes: each answered with 200 and a body as
/// long as the request's.
pub async fn serve_http1(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some((_, len)) = read_message(&mut conn, &mut buf).await? {
        let mut resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes();
        resp.resize(resp.len() + len, b'r');
        conn.write_all(&resp).await?;
    }
    Ok(())
}

/// One HTTP/1.1 client connection, one request at a time.
pub struct Http1Client<S> {
    conn: S,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Http1Client<S> {
    pub fn new(conn: S, size: usize) -> Self {
        let mut request =
            format!("POST /echo HTTP/1.1\r\nhost: server\r\ncontent-length: {size}\r\n\r\n")
                .into_bytes();
        request.resize(request.len() + size, b'q');
        Http1Client {
            conn,
            buf: Vec::new(),
            request,
        }
    }

    /// Sends the request and reads the whole response; an error unless it is a 200.
    pub async fn request(&mut self) -> io::Result<()> {
        self.conn.write_all(&self.request).await?;
        let (status, _) = read_message(&mut self.conn, &mut self.buf)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(bad(format!("response {status:?}")));
        }
        Ok(())
    }
}

/// Serves HTTP/2 until the client goes away: every stream's body is read and answered with
/// a body of the same length.
pub async fn serve_http2(conn: TcpStream) -> io::Result<()> {
    let mut h2 = h2::server::handshake(conn)
        .await
        .map_err(io::Error::other)?;
    while let Some(req) = h2.accept().await {
        let (req, respond) = req.map_err(io::Error::other)?;
        tokio::spawn(async move {
            // A reset stream is the client's doing; it sees its own error.
            let _ = answer_h2(req, respond).await;
        });
    }
    Ok(())
}

async fn answer_h2(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let len = drain_body(req.into_body()).await?;
    let resp = http::Response::new(());
    let mut send = respond.send_response(resp, len == 0)?;
    if len > 0 {
        send.send_data(Bytes::from(vec![b'r'; len]), true)?;
    }
    Ok(())
}

/// Reads a body to its end, returning flow-control credit as it goes; its length.
async fn drain_body(mut body: h2::RecvStream) -> Result<usize, h2::Error> {
    let mut len = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        len += chunk.len();
        body.flow_control().release_capacity(chunk.len())?;
    }
    Ok(len)
}

/// An HTTP/2 client connection; requests share it as concurrent streams.
#[derive(Clone)]
pub struct Http2Client {
    send: h2::client::SendRequest<Bytes>,
    body: Bytes,
}

impl Http2Client {
    /// Handshakes on `conn` and drives the connection on a task of the current runtime.
    pub async fn new(conn: TcpStream, size: usize) -> io::Result<Http2Client> {
        let (send, driver) = h2::client::handshake(conn)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            // Its end shows up as errors on the requests in flight.
            let _ = driver.await;
        });
        Ok(Http2Client {
            send,
            body: Bytes::from(vec![b'q'; size]),
        })
    }

    /// One POST with the payload, its response read to the end; an error unless a 200.
    pub async fn request(&self) -> io::Result<()> {
        let mut send = self.send.clone().ready().await.map_err(io::Error::other)?;
        let req = http::Request::post("http://server/echo")
            .body(())
            .map_err(io::Error::other)?;
        let (resp, mut stream) = send.send_request(req, false).map_err(io::Error::other)?;
        stream
            .send_data(self.body.clone(), true)
            .map_err(io::Error::other)?;
        let resp = resp.await.map_err(io::Error::other)?;
        if resp.status() != http::StatusCode::OK {
            return Err(bad(format!("status {}", resp.status())));
        }
        drain_body(resp.into_body())
            .await
            .map_err(io::Error::other)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http1_messages_are_split_by_content_length() {
        let wire = b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        let mut r = &wire[..];
        let mut buf = Vec::new();
        let (first, len) = read_message(&mut r, &mut buf)
            .await
            .expect("read")
            .expect("message");
        assert_eq!((first.as_str(), len), ("POST / HTTP/1.1", 3));
        let (first, len) = read_message(&mut r, &mut buf)
            .await
            .expect("read")
            .expect("message");
        assert_eq!((first.as_str(), len), ("GET / HTTP/1.1", 0));
        assert!(read_message(&mut r, &mut buf).await.expect("eof").is_none());
    }
}
