//! Real servers the tests start for themselves: `redis-server` on a free port.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free TCP port on the loopback (bound, then released for the server to take).
pub fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A `redis-server` of this test's own, killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// For a sentinel: its config file's directory (the sentinel rewrites the file).
    _dir: Option<TempDir>,
}

impl RedisServer {
    /// Starts a throwaway server (no persistence) on a free port.
    pub async fn start() -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = RedisServer::start_on(port).await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub async fn start_on(port: u16) -> Option<RedisServer> {
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from);
        RedisServer::spawn(&args, port, None).await
    }

    /// Starts `redis-server ARGS` and waits until it answers PING (`None` when it exited: the
    /// port was taken meanwhile).
    pub async fn spawn(args: &[String], port: u16, dir: Option<TempDir>) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): the Redis store tests need it; \
                     run ./scripts/test.sh, which installs Debian's redis-server"
                )
            });
        let mut server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        server.ready().await.then_some(server)
    }

    /// Polls PING until the server answers (`false` when it exited instead).
    pub async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server on port {} never answered PING", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh server on the same port (the store must find it again by itself).
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let fresh = RedisServer::start_on(port).await;
        let fresh = fresh.unwrap_or_else(|| panic!("redis-server could not restart on {port}"));
        *self = fresh;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something on `port` answers a RESP `PING` with `+PONG`.
pub async fn ping(port: u16) -> bool {
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if conn.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(1), conn.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && &answer == b"+PONG\r\n"
}
