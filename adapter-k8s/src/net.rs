//! Socket settings every server of the shell shares.

use axum::serve::ListenerExt;

/// `listener` with `TCP_NODELAY` on every accepted connection. Every hop of a write (gateway,
/// agent, store) answers a small request on a keep-alive connection, often as a head and a body
/// written separately (streamed proxy bodies): with Nagle's algorithm the second write waits for
/// the peer's ACK of the first, which a delayed ACK holds back for up to 40 ms.
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<
    tokio::net::TcpListener,
    impl FnMut(&mut tokio::net::TcpStream) + Send + 'static,
> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
    })
}
