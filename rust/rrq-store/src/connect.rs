//! Opening a Redis client the way every RRQ component wants it.

use redis::IntoConnectionInfo as _;
use redis::io::tcp::TcpSettings;

/// A client for `dsn` with `TCP_NODELAY` on. The redis crate leaves Nagle's
/// algorithm on by default: a small pipelined write that follows another
/// before its ACK then waits for the peer's delayed ACK (40 ms on Linux),
/// which shows up as tail latency on every claim and settle.
pub fn open_client(dsn: &str) -> redis::RedisResult<redis::Client> {
    let info = dsn
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}
