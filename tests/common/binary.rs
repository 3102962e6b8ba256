//! The real `authgate` binary, started as a process the way operators run it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The real binary, with its stderr (JSON logs) collected by a thread.
pub struct Running {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A test that fails must not leave its gateway running (it would hold the test's pipes).
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_binary(config: &std::path::Path) -> Running {
    start_binary_with_env(config, &[])
}

/// [`start_binary`] with extra environment variables.
pub fn start_binary_with_env(config: &std::path::Path, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args([
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "run",
            "--config",
        ])
        .arg(config)
        .env_remove("AUTHGATE_CONFIG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (addr, admin) = loop {
        let line = lines.next().expect("exited before listening").unwrap();
        logs.lock().unwrap().push(line.clone());
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["message"] == "authgate listening" {
            break (
                v["addr"].as_str().unwrap().parse().unwrap(),
                v["admin"].as_str().unwrap().parse().unwrap(),
            );
        }
    };
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Running {
        child,
        addr,
        admin,
        logs,
    }
}

/// The CLI with none of the environment the gateway reads, so a developer's shell cannot
/// change what a test sees.
pub fn authgate_cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.env_remove("AUTHGATE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("AUTHGATE_STORE")
        .env_remove("RUST_LOG");
    cmd
}

/// Asserts that a command exited 0, showing its stderr when it did not.
#[track_caller]
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// [`super::STANDARD`] for the binary (the test secret, this upstream, its own admin port),
/// with `extra` appended, written into `dir`.
pub fn binary_config(dir: &tempfile::TempDir, upstream: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.path().join("gateway.yaml");
    let text = super::STANDARD
        .replace("{UPSTREAM}", upstream)
        .replace("{SECRET}", super::SECRET)
        .replace(
            "listen: \"127.0.0.1:0\"",
            "listen: \"127.0.0.1:0\"\nadmin: { listen: \"127.0.0.1:0\" }",
        );
    std::fs::write(&path, format!("{text}{extra}")).unwrap();
    path
}
