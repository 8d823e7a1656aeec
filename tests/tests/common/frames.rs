//! Raw HTTP/2 frames (RFC 9113) for requests `h2` refuses to send: malformed `:authority`
//! values and floods. Headers are HPACK literals without indexing and without Huffman, which
//! every decoder must accept; responses are read only as far as a test needs (frame types,
//! GOAWAY codes, and `:status` when the server sent it as a static-table index).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: 9-byte header then payload.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS frame with (id, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// "Literal header field without indexing — new name", no Huffman.
pub fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A header block for a request with the given pseudo and regular headers, in order.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        hpack_literal(&mut b, n, v);
    }
    b
}

/// HEADERS (END_HEADERS) opening `stream` as a CONNECT to `authority`.
pub fn connect_headers(stream: u32, authority: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS,
        stream,
        &header_block(&[(":method", "CONNECT"), (":authority", authority)]),
    )
}

/// A received frame.
#[derive(Debug)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.ty {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `:status` of a response HEADERS frame when it is the first field and a static-table
    /// index (200, 204, 206, 304, 400, 404, 500 are; others need a full HPACK decoder).
    pub fn static_status(&self) -> Option<u16> {
        let mut p = &self.payload[..];
        if self.flags & 0x8 != 0 {
            let pad = *p.first()? as usize;
            p = p.get(1..p.len().checked_sub(pad)?)?;
        }
        if self.flags & 0x20 != 0 {
            p = p.get(5..)?;
        }
        // Skip dynamic table size updates (001xxxxx) that may lead a block.
        while p.first().is_some_and(|b| b & 0xe0 == 0x20) {
            p = &p[1..];
        }
        match p.first()? {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            _ => None,
        }
    }
}

/// The (id, value) pairs of a SETTINGS payload.
pub fn settings_pairs(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// The whole frames in `bytes` (what a client sent: the preface is skipped).
pub fn parse(bytes: &[u8]) -> Vec<Frame> {
    let mut rest = bytes.strip_prefix(PREFACE).unwrap_or(bytes);
    let mut out = Vec::new();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push(Frame {
            ty: rest[3],
            flags: rest[4],
            stream,
            payload: payload.to_vec(),
        });
        rest = &rest[9 + len..];
    }
    out
}

/// What an endpoint announced when the connection started: its SETTINGS and the increment of
/// its first connection-level WINDOW_UPDATE (0 when none was seen).
#[derive(Debug, Default)]
pub struct Announced {
    pub settings: Vec<(u16, u32)>,
    pub connection_window_increment: u32,
}

impl Announced {
    pub fn from_frames<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Announced {
        let mut a = Announced::default();
        for f in frames {
            if f.ty == SETTINGS && f.flags & ACK == 0 && a.settings.is_empty() {
                a.settings = settings_pairs(&f.payload);
            }
            if f.ty == WINDOW_UPDATE
                && f.stream == 0
                && a.connection_window_increment == 0
                && f.payload.len() == 4
            {
                a.connection_window_increment =
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
                        & 0x7fff_ffff;
            }
        }
        a
    }

    /// The value of setting `id`, if announced.
    pub fn get(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| *v)
    }
}

pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Reads one frame; `None` on a clean EOF.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Ok(Some(Frame {
        ty: head[3],
        flags: head[4],
        stream,
        payload,
    }))
}

/// Writes the client preface and an empty SETTINGS frame.
pub async fn start<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    let mut out = PREFACE.to_vec();
    out.extend(settings(&[]));
    w.write_all(&out).await?;
    w.flush().await
}

/// How the server answered a stream, or ended the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Response HEADERS; the status when it could be read.
    Headers(Option<u16>),
    /// RST_STREAM with this code.
    Reset(u32),
    /// GOAWAY with this code.
    GoAway(u32),
    /// The connection closed (EOF or error).
    Closed,
}

/// Reads frames until the server answers `stream` (or ends the connection), acknowledging the
/// server's SETTINGS on the way.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, stream: u32) -> Answer {
    loop {
        let f = match read_frame(s).await {
            Ok(Some(f)) => f,
            _ => return Answer::Closed,
        };
        match f.ty {
            SETTINGS
                if f.flags & ACK == 0
                    && s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.is_err() =>
            {
                return Answer::Closed;
            }
            HEADERS if f.stream == stream => return Answer::Headers(f.static_status()),
            RST_STREAM if f.stream == stream => return Answer::Reset(f.error_code().unwrap_or(0)),
            GOAWAY => return Answer::GoAway(f.error_code().unwrap_or(0)),
            _ => {}
        }
    }
}
