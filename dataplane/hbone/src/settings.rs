//! HTTP/2 settings shared by the HBONE client and server, with the values Istio's ztunnel uses
//! so that both ends of a mixed zmesh/ztunnel tunnel agree on flow control.

use std::time::Duration;

/// Per-stream receive window: large enough that one tunnel fills a fast link without waiting
/// for WINDOW_UPDATEs.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Connection receive window. It must be larger than the stream window: equal windows can
/// deadlock when one stream holds the whole connection window.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest DATA frame we accept; big frames cut per-frame overhead on bulk transfers.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Streams a pooled client connection carries before the pool opens another connection.
pub const CLIENT_MAX_STREAMS: usize = 100;
/// Concurrent streams a server connection accepts.
pub const SERVER_MAX_STREAMS: u32 = 200;
/// Header list limits (client, server).
pub const CLIENT_MAX_HEADER_LIST: u32 = 16 << 10;
pub const SERVER_MAX_HEADER_LIST: u32 = 64 << 10;
/// Bytes a server stream may queue for sending before `poll_capacity` pushes back.
pub const SERVER_MAX_SEND_BUFFER: usize = 400 << 10;
/// Budget for the memory overhead of small received DATA frames. A tunnel relaying small TCP
/// writes produces many small frames, so we allow a full connection window of them; a flood
/// beyond that closes the connection with ENHANCE_YOUR_CALM.
pub const DATA_FRAME_BUDGET: usize = CONNECTION_WINDOW as usize;
/// Streams a peer may reset before we accept them / after errors of ours, before we treat it as
/// an attack (rapid reset) and close the connection.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 50;
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Both sides PING an idle connection this often…
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// …and give up on it when no PONG arrives within this time.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Client settings for a pooled HBONE connection.
pub fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_max_send_streams(CLIENT_MAX_STREAMS)
        .max_header_list_size(CLIENT_MAX_HEADER_LIST)
        .max_send_buffer_size(STREAM_WINDOW as usize)
        .data_frame_budget(DATA_FRAME_BUDGET)
        .enable_push(false);
    b
}

/// Server settings for an inbound HBONE connection.
pub fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_header_list_size(SERVER_MAX_HEADER_LIST)
        .max_send_buffer_size(SERVER_MAX_SEND_BUFFER)
        .data_frame_budget(DATA_FRAME_BUDGET)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    b
}
