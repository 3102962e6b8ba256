//! Headless Chromium (Debian's package) driven by playwright-core from `tests/node/browser.js`.
//! Both are installed by ./scripts/test.sh; without them a browser test fails, telling how to
//! fix it, and never skips.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::oidc::{NODE_DIR, require_node};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Panics, telling how to fix it, unless Chromium, node and playwright-core are installed.
pub fn require_browser() {
    require_node();
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run ./scripts/test.sh, which installs Debian's `chromium` \
         package for this browser test"
    );
    let package = Path::new(NODE_DIR).join("node_modules/playwright-core/package.json");
    assert!(
        package.is_file(),
        "{} is missing: run ./scripts/test.sh, which installs playwright-core (npm ci in \
         tests/node) for this browser test",
        package.display()
    );
}

/// `node browser.js ARGS...`: (succeeded, stdout, stderr). Killed after 3 minutes. Polled, so
/// a gateway running on the calling test's runtime keeps serving meanwhile.
pub async fn run_browser_js(args: &[&str]) -> (bool, String, String) {
    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new("node")
        .arg("browser.js")
        .args(args)
        .current_dir(NODE_DIR)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node browser.js` ({e}): run ./scripts/test.sh"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, mut stderr) = (read(&stdout), read(&stderr));
    if status.is_none() {
        stderr.push_str("\n(killed: node browser.js ran for more than 3 minutes)");
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}
