//! The `authgate` binary: CLI parsing, logging, and the commands. `anyhow` lives only here.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use authgate::cli::{self, Cli, Command, LogFormat};
use authgate::server;
use authgate::snapshot::Loaded;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc: the request path allocates and frees many small buffers across threads, which
/// it serves faster than glibc's malloc, and the claims cache fragments less (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(cli: &Cli) {
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let result = match &cli.command {
        None | Some(Command::Run) => run(&cli),
        Some(Command::Check) => return check(&cli),
        Some(Command::HashPassword) => hash_password(),
        Some(Command::Token { sub, claims, ttl }) => token(&cli, sub, claims, ttl.as_deref()),
        Some(Command::Explain {
            method,
            url,
            headers,
            token,
            claims,
            format,
        }) => {
            let args = authgate::explain::Args {
                method: method.clone(),
                url: url.clone(),
                headers: headers.clone(),
                token: token.clone(),
                claims: claims.clone(),
            };
            return explain(&cli, &args, *format);
        }
        Some(Command::Healthcheck { admin_addr }) => healthcheck(&cli, admin_addr.as_deref()),
        Some(Command::Revoke { sub, sid, jti }) => revoke(&cli, sub, sid, jti),
        Some(Command::Schema) => schema(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli) -> ExitCode {
    match Loaded::load(&cli.config) {
        Ok(Loaded { snapshot: rt, .. }) => {
            print!("{}", cli::route_table(&rt));
            for w in &rt.warnings {
                eprintln!("{w}");
            }
            println!(
                "{}: OK ({} routes, {} upstreams, {} keys)",
                cli.config.display(),
                rt.routes.len(),
                rt.upstreams.len(),
                rt.verifier.keys().iter().count()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.diagnostics() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Exit status of `authgate explain` on bad input (config, URL, header, claims); 0 and 1 are
/// allowed and refused.
const EXPLAIN_BAD_INPUT: u8 = 2;

fn explain(cli: &Cli, args: &authgate::explain::Args, format: cli::ExplainFormat) -> ExitCode {
    let loaded = match Loaded::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            for line in e.diagnostics() {
                eprintln!("{line}");
            }
            return ExitCode::from(EXPLAIN_BAD_INPUT);
        }
    };
    // One thread: explain sends nothing but, at most, one fetch per remote key set.
    let tokio = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authgate explain: cannot start the async runtime: {e}");
            return ExitCode::from(EXPLAIN_BAD_INPUT);
        }
    };
    let report = match tokio.block_on(authgate::explain::explain(&loaded.snapshot, args)) {
        Ok(report) => report,
        Err(why) => {
            eprintln!("authgate explain: {why}");
            return ExitCode::from(EXPLAIN_BAD_INPUT);
        }
    };
    let output = match format {
        cli::ExplainFormat::Text => authgate::explain::text::render(&report),
        cli::ExplainFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("authgate explain: {e}");
                return ExitCode::from(EXPLAIN_BAD_INPUT);
            }
        },
    };
    // A reader that stops early (`| head`) is no reason to panic; the exit status still says
    // what the gateway would do.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), output.as_bytes());
    ExitCode::from(report.exit_code())
}

fn hash_password() -> anyhow::Result<()> {
    let password = cli::read_password().map_err(anyhow::Error::msg)?;
    let hash = authgate::login::hash_password(&password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
}

fn token(cli: &Cli, sub: &str, claims: &[String], ttl: Option<&str>) -> anyhow::Result<()> {
    let rt = Loaded::load(&cli.config)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .snapshot;
    if !rt.ephemeral_keys().is_empty() {
        anyhow::bail!(
            "the signing key's secret is ephemeral (JWT_SECRET is not set): a token signed here would not be accepted by a running gateway; set JWT_SECRET for both"
        );
    }
    let token = cli::token(&rt, sub, claims, ttl).map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// A `memory:` store says loudly what that means.
fn warn_about_store(boot: &authgate::boot::Boot) {
    if !boot.store_configured {
        tracing::warn!(
            "no `state:` section: revocations, sessions and login limits live in this process's memory and are lost on restart, and replicas do not share them. Set `state.store` (e.g. sqlite:authgate-state.db or redis://...)"
        );
    } else if boot.store == "memory:" {
        tracing::warn!(
            "state.store is `memory:`: revocations, sessions and login limits are lost on restart and not shared by replicas"
        );
    }
}

fn revoke(
    cli: &Cli,
    sub: &Option<String>,
    sid: &Option<String>,
    jti: &Option<String>,
) -> anyhow::Result<()> {
    let target = cli::RevokeTarget::from_args(sub.as_deref(), sid.as_deref(), jti.as_deref())
        .context("give one of --sub, --sid, --jti")?;
    let loaded = Loaded::load(&cli.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if loaded.boot.store == "memory:" {
        anyhow::bail!(
            "the state store is `memory:`: a running gateway's memory cannot be reached from another process. Configure `state.store` (sqlite:PATH or redis://...) to revoke from the command line"
        );
    }
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let said = tokio.block_on(async {
        let store = authgate::state::open(&loaded.boot.store, &loaded.boot.config_dir)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cli::revoke(&*store, &loaded.snapshot, &target)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    println!("{said}");
    Ok(())
}

/// Written in one piece, and a closed pipe (`authgate schema | head`) is an error, not a panic.
fn schema() -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(authgate::config::schema_json().as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the schema to stdout")
}

fn healthcheck(cli: &Cli, admin_addr: Option<&str>) -> anyhow::Result<()> {
    let addr = authgate::healthcheck::run(&cli.config, admin_addr)
        .map_err(|e| anyhow::anyhow!("healthcheck: {e}"))?;
    println!("healthy: http://{addr}/healthz answered 200");
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let loaded = Loaded::load(&cli.config).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    for w in &loaded.snapshot.warnings {
        tracing::warn!("{w}");
    }
    for id in loaded.snapshot.ephemeral_keys() {
        tracing::warn!(
            key = id,
            "NO SECRET CONFIGURED: key `{id}` uses a random secret generated for this process. Tokens will not survive a restart and `authgate token` cannot sign for it. Set JWT_SECRET (e.g. `export JWT_SECRET=$(openssl rand -hex 32)`)."
        );
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tokio.block_on(async {
        let routes = loaded.snapshot.routes.len();
        warn_about_store(&loaded.boot);
        // Signal handlers first: once "listening" is logged, SIGTERM and SIGHUP are handled.
        let shutdown = server::shutdown_signal();
        let handle = server::spawn(loaded, None).await?;
        let gateway = handle.gateway.clone();
        server::reload_on_sighup(gateway.clone(), cli.config.clone());
        if let Err(e) = server::watch_files(gateway, cli.config.clone()) {
            tracing::warn!("{e}; reload with SIGHUP");
        }
        let (addr, admin) = (handle.addr, handle.admin_addr);
        let http = handle
            .http_addr
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        tracing::info!(%addr, %admin, http, config = %cli.config.display(), routes, "authgate listening");
        shutdown.await;
        handle.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}
