//! The container image without a Docker engine: the Dockerfile's promises, its builder stage in
//! step with the crate, and its command line run the way the image runs it.
//!
//! The binary under test is the one `cargo test` built (`CARGO_BIN_EXE_authgate`), not a
//! `cargo build --release --locked` of its own: a second, release build (fat LTO) takes longer
//! than CI can give it on two cores. What makes that stand-in honest is checked here: the
//! Dockerfile builds with exactly `cargo build --release --locked` — no features, target or
//! profile of its own, so the image's binary differs from the tested one only in optimization;
//! `--locked` pins the dependencies to Cargo.lock, which the tests build with too
//! (`scripts/test.sh` runs `cargo test --locked`) — and the builder stage copies everything the
//! build reads.

#[path = "common/dockerfile.rs"]
mod dockerfile;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn dockerfile_is_locked_non_root_healthchecked_and_copies_only_what_exists() {
    let instructions = dockerfile::read(repo());
    assert!(
        instructions
            .iter()
            .any(|l| l.starts_with("HEALTHCHECK ") && l.contains(r#"["authgate", "healthcheck"]"#)),
        "HEALTHCHECK"
    );
    assert!(
        instructions
            .iter()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "USER"
    );
    for needle in [
        "AUTHGATE_CONFIG=/etc/authgate/gateway.yaml",
        "EXPOSE 8080",
        "STOPSIGNAL SIGTERM",
        r#"ENTRYPOINT ["authgate"]"#,
        r#"CMD ["run"]"#,
        r#"VOLUME ["/var/lib/authgate"]"#,
        "AUTHGATE_STORE=sqlite:/var/lib/authgate/state.db",
    ] {
        assert!(instructions.iter().any(|l| l.contains(needle)), "{needle}");
    }

    let mut copies = 0;
    for args in dockerfile::args(&instructions, "COPY") {
        // Copies from another stage are not paths in the repository.
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--chown") && !w.starts_with("--chmod"))
            .collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        assert!(words.len() >= 2, "COPY {args}");
        for source in &words[..words.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "Dockerfile copies `{source}`, which is not in the repository"
            );
            copies += 1;
        }
    }
    assert!(
        copies >= 3,
        "expected COPY of Cargo.toml, Cargo.lock, src, ..."
    );

    // Every file the build needs must survive .dockerignore.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for kept in ["src", "Cargo.toml", "Cargo.lock", "gateway.yaml"] {
        assert!(
            !ignore.lines().any(|l| l.trim().trim_matches('/') == kept),
            ".dockerignore drops {kept}"
        );
    }
}

/// The image's binary is built the way the tested one is (see the module doc): every
/// `cargo build` of the builder stage is exactly `cargo build --release --locked`.
#[test]
fn the_builder_runs_exactly_cargo_build_release_locked() {
    let instructions = dockerfile::read(repo());
    let builder = dockerfile::stages(&instructions)[0];
    let builds: Vec<&str> = dockerfile::args(builder, "RUN")
        .into_iter()
        .flat_map(|run| run.split("&&"))
        .map(str::trim)
        .filter(|command| command.starts_with("cargo"))
        .collect();
    // One for the dependency layer, one for the crate.
    assert_eq!(builds.len(), 2, "{builds:?}");
    for build in builds {
        let words: Vec<&str> = build.split_whitespace().collect();
        assert_eq!(
            words,
            ["cargo", "build", "--release", "--locked"],
            "the Dockerfile builds with `{build}`: the tests no longer stand for the image's binary (see tests/image.rs)"
        );
    }
}

/// The builder copies Cargo.toml, Cargo.lock and src/ only: nothing the build reads may live
/// elsewhere (a build script, a file pulled in with `include_str!`, a target or path
/// dependency outside src/).
#[test]
fn the_builder_copies_everything_the_crate_build_reads() {
    let instructions = dockerfile::read(repo());
    let builder = dockerfile::stages(&instructions)[0];
    let mut copied: Vec<&str> = Vec::new();
    for args in dockerfile::args(builder, "COPY") {
        let words: Vec<&str> = args.split_whitespace().collect();
        copied.extend(&words[..words.len() - 1]);
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            copied.contains(&needed),
            "the builder does not copy {needed}"
        );
    }
    assert!(
        !repo().join("build.rs").exists() || copied.contains(&"build.rs"),
        "build.rs exists but the builder does not copy it"
    );
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for line in manifest.lines().map(str::trim) {
        assert!(
            !line.replace(' ', "").starts_with("build=") && !line.contains("path ="),
            "Cargo.toml names a file the builder may not copy: {line}"
        );
    }
    let mut dirs = vec![repo().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                assert_includes_stay_in_src(&path);
            }
        }
    }
}

/// `include_str!("...")` / `include_bytes!("...")` in `file` name files inside src/.
fn assert_includes_stay_in_src(file: &Path) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for (_, rest) in text
        .match_indices("include_str!(")
        .chain(text.match_indices("include_bytes!("))
        .map(|(i, m)| (i, &text[i + m.len()..]))
    {
        let target = rest.split('"').nth(1).unwrap_or("");
        let resolved = file.parent().unwrap().join(target);
        let inside = resolved
            .canonicalize()
            .is_ok_and(|p| p.starts_with(repo().join("src").canonicalize().unwrap()));
        assert!(
            inside,
            "{} includes {target:?}, which the builder does not copy",
            file.display()
        );
    }
}

/// The runtime stage as the Dockerfile declares it.
struct Image {
    /// ENTRYPOINT then CMD.
    argv: Vec<String>,
    /// HEALTHCHECK's command.
    healthcheck: Vec<String>,
    env: Vec<(String, String)>,
    /// USER, numeric `uid:gid`.
    user: (u32, u32),
    /// The one VOLUME (the state store's directory).
    volume: String,
    /// The repository file the image copies to `$AUTHGATE_CONFIG`.
    config_source: PathBuf,
}

fn image() -> Image {
    let instructions = dockerfile::read(repo());
    let stages = dockerfile::stages(&instructions);
    let runtime = stages[stages.len() - 1];
    let mut argv = dockerfile::exec_form(dockerfile::only(runtime, "ENTRYPOINT"));
    argv.extend(dockerfile::exec_form(dockerfile::only(runtime, "CMD")));
    let healthcheck = dockerfile::only(runtime, "HEALTHCHECK")
        .split_once(" CMD ")
        .map(|(_, cmd)| dockerfile::exec_form(cmd))
        .expect("HEALTHCHECK ... CMD [...]");
    let user = dockerfile::only(runtime, "USER")
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .expect("USER uid:gid, numeric (Kubernetes' runAsNonRoot can verify only a number)");
    let volume = dockerfile::exec_form(dockerfile::only(runtime, "VOLUME")).remove(0);
    let env = dockerfile::env(runtime);
    let config = value(&env, "AUTHGATE_CONFIG").to_owned();
    let source = dockerfile::args(runtime, "COPY")
        .into_iter()
        .map(|args| args.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.len() == 2 && words[1] == config)
        .map(|words| repo().join(words[0]))
        .expect("a COPY of the config to $AUTHGATE_CONFIG");
    Image {
        argv,
        healthcheck,
        env,
        user,
        volume,
        config_source: source,
    }
}

fn value<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the Dockerfile sets no {key}"))
}

/// The real and effective uid of process `pid` (`self` for this one).
fn uids(pid: &str) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    (ids[0], ids[1])
}

/// Whether a user who owns nothing on the way (the image's) can reach `path`: every directory
/// above it searchable by others.
fn others_can_reach(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// A port nothing listens on now (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A random 32-byte secret in hex, as the README's `openssl rand -hex 32`.
fn random_hex_secret() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The container's filesystem and network on this machine: a read-only config directory
/// standing in for /etc/authgate, a state directory owned by the image's user standing in for
/// the volume, and loopback ports picked now (the image's 0.0.0.0:8080 and the config's
/// default admin port 127.0.0.1:9090 would collide with other tests running at once).
struct Container {
    root: tempfile::TempDir,
    /// The binary under test, where the image's user can run it.
    binary: PathBuf,
    env: Vec<(String, String)>,
    listen: String,
    admin: String,
    /// Whether commands run as the image's user (this test runs as root) or as the
    /// non-root user the test already is.
    drop_to: Option<(u32, u32)>,
}

impl Container {
    fn new(image: &Image) -> Container {
        let root = tempfile::tempdir().unwrap();
        let config_dir = root.path().join("config");
        let state_dir = root.path().join("state");
        std::fs::create_dir(&config_dir).unwrap();
        std::fs::create_dir(&state_dir).unwrap();
        let config = value(&image.env, "AUTHGATE_CONFIG");
        let config_file = config_dir.join(Path::new(config).file_name().unwrap());
        std::fs::copy(&image.config_source, &config_file).unwrap();
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        chmod(root.path(), 0o755);
        chmod(&config_file, 0o444);
        chmod(&config_dir, 0o555);
        let drop_to = (uids("self").1 == 0).then_some(image.user);
        let mut binary = PathBuf::from(env!("CARGO_BIN_EXE_authgate"));
        if let Some((uid, gid)) = drop_to {
            std::os::unix::fs::chown(&state_dir, Some(uid), Some(gid)).unwrap();
            assert!(
                others_can_reach(root.path()),
                "the image's user cannot reach {}: point TMPDIR at a world-searchable directory",
                root.path().display()
            );
            // A checkout under a private home (/root is 0700) hides the binary from the
            // image's user: run a copy then, as the image has its own.
            if !others_can_reach(&binary) {
                let copy = root.path().join("authgate");
                std::fs::copy(&binary, &copy).unwrap();
                binary = copy;
            }
        }
        let (listen, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let env = Self::env(image, &config_dir, &state_dir, &listen, &admin);
        Container {
            root,
            binary,
            env,
            listen,
            admin,
            drop_to,
        }
    }

    /// The image's ENV with its paths moved here, Docker's default PATH, `-e JWT_SECRET` as
    /// the README's `docker run` passes it, and the admin port the shipped config reads from
    /// `AUTHGATE_ADMIN_LISTEN`.
    fn env(
        image: &Image,
        config_dir: &Path,
        state_dir: &Path,
        listen: &str,
        admin: &str,
    ) -> Vec<(String, String)> {
        let config = value(&image.env, "AUTHGATE_CONFIG");
        let etc = Path::new(config).parent().unwrap().to_str().unwrap();
        let mut env: Vec<(String, String)> = image
            .env
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace(etc, config_dir.to_str().unwrap())
                    .replace(&image.volume, state_dir.to_str().unwrap());
                (k.clone(), v)
            })
            .collect();
        assert_eq!(value(&env, "AUTHGATE_LISTEN"), "0.0.0.0:8080");
        env.retain(|(k, _)| k != "AUTHGATE_LISTEN");
        let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
        assert!(readme.contains("-e JWT_SECRET=$(openssl rand -hex 32) authgate"));
        let shipped = std::fs::read_to_string(&image.config_source).unwrap();
        assert!(shipped.contains("${AUTHGATE_ADMIN_LISTEN:-127.0.0.1:9090}"));
        for (k, v) in [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("AUTHGATE_LISTEN", listen),
            ("AUTHGATE_ADMIN_LISTEN", admin),
            ("JWT_SECRET", &random_hex_secret()),
        ] {
            env.push((k.to_owned(), v.to_owned()));
        }
        env
    }

    fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// `argv` as the image runs it: `authgate` is the binary under test, the environment is
    /// the container's only, and the user the image's (through `setpriv`, which execs, so the
    /// process is authgate itself).
    fn command(&self, argv: &[String]) -> Command {
        assert_eq!(
            argv[0], "authgate",
            "the image runs `authgate` from its PATH"
        );
        let mut cmd = match self.drop_to {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                    "--".into(),
                ])
                .arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.args(&argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/");
        cmd
    }

    /// `authgate healthcheck` exits 0 (polled until it does, or `within`).
    fn wait_healthy(&self, healthcheck: &[String], gateway: &mut Child, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let out = self.command(healthcheck).output().unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                gateway.try_wait().unwrap().is_none(),
                "the gateway exited:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "never healthy: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("authgate.log")).unwrap_or_default()
    }
}

/// The gateway process, killed if a failed assertion leaves it running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 GET; the status and the whole answer.
fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    (status, answer)
}

/// The image's command line (ENTRYPOINT + CMD, its ENV, its user, a read-only config
/// directory, the state volume) serves the shipped config, passes its own HEALTHCHECK, takes a
/// token signed with the `JWT_SECRET` it was given, stops on SIGTERM with exit 0, and leaves
/// its SQLite store on the volume.
#[test]
fn the_image_command_line_serves_as_a_non_root_user_and_stops_on_sigterm() {
    let image = image();
    let container = Container::new(&image);
    let log = std::fs::File::create(container.root.path().join("authgate.log")).unwrap();
    let child = container
        .command(&image.argv)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut gateway = Running(child);
    let pid = gateway.0.id().to_string();
    container.wait_healthy(&image.healthcheck, &mut gateway.0, Duration::from_secs(60));

    let (real, effective) = uids(&pid);
    assert!(real != 0 && effective != 0, "the gateway runs as root");
    if let Some((uid, _)) = container.drop_to {
        assert_eq!((real, effective), (uid, uid), "not the image's user");
    }
    serves_requests(&container, &image);
    assert!(
        !container.log().contains("NO SECRET CONFIGURED"),
        "JWT_SECRET was not used:\n{}",
        container.log()
    );

    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{}", container.log());

    let db = container.state_dir().join("state.db");
    let meta = std::fs::metadata(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    assert_eq!(meta.uid(), effective, "the store is not the image user's");
    let beside_config: Vec<_> = std::fs::read_dir(container.root.path().join("config"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside_config.len(), 1, "{beside_config:?}");
}

/// Real requests through the running gateway: the admin listener, the login page, a refusal
/// and a token minted by `authgate token` in the same container.
fn serves_requests(container: &Container, image: &Image) {
    let (status, body) = get(&container.admin, "/healthz", &[]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&container.listen, "/auth/login", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<title>Sign in</title>"), "{body}");
    let (status, body) = get(&container.listen, "/admin/x", &[]);
    assert_eq!(status, 401, "{body}");

    let mut token = image.argv[..1].to_vec();
    token.extend(["token", "--sub", "alice", "--claim", "roles=admin"].map(String::from));
    let out = container.command(&token).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let (status, body) = get(
        &container.listen,
        "/admin/x",
        &[("Authorization", bearer.as_str())],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"x-user-id\": \"alice\""), "{body}");
}
