//! The command line (contract §1): argument parsing and one function per command.
//!
//! Invariant: every user error ends here as one readable sentence on stderr and
//! a non-zero exit code; nothing below `main` panics on user input.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::config::{Config, LoadOptions};
use crate::engine::EngineOptions;
use crate::reload::ReloadSource;
use crate::startup::{Application, BuildOptions};
use crate::telemetry::LogFormat;

/// wxtoken: the central WeChat access_token server.
#[derive(Debug, Parser)]
#[command(name = "wxtoken", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr: `text` or `json` (one object per line). Accepted
    /// before or after the command (`wxtoken serve --log-format json`).
    // Listed in `wxtoken --help` only: see `command`.
    #[arg(long, global = true, env = "WXTOKEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The `--config` option shared by the commands that read `accounts.yaml`.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path of the accounts file.
    #[arg(long, env = "WXTOKEN_CONFIG", default_value = "accounts.yaml")]
    pub config: PathBuf,
}

/// The options of `wxtoken demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Path of the accounts file [default: accounts.yaml, or the built-in
    /// example configuration when there is no accounts.yaml here].
    #[arg(long, env = "WXTOKEN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The options of `wxtoken accounts`.
#[derive(Debug, clap::Args)]
pub struct AccountsArgs {
    /// The wxtoken server's base URL.
    #[arg(long, env = "WXTOKEN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: url::Url,
    /// A file holding an admin client's API key (its first line); not needed
    /// when the server has no `clients`.
    #[arg(long, env = "WXTOKEN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Print the server's JSON answer as it came instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `wxtoken simulator --help` tells a developer beyond the options:
/// the control API of `simulator/routes.rs`.
const SIMULATOR_HELP: &str = "\
WeChat endpoints (answered as WeChat does, errors as {\"errcode\",\"errmsg\"}):
  GET  /cgi-bin/token?grant_type=client_credential&appid=&secret=
  POST /cgi-bin/stable_token   {\"grant_type\",\"appid\",\"secret\",\"force_refresh\"}
  GET  /cgi-bin/gettoken?corpid=&corpsecret=          (WeCom; register corpid:agentid)
  GET  /cgi-bin/ticket/getticket?access_token=&type=jsapi|wx_card
  GET  /cgi-bin/getcallbackip?access_token=           (the validity probe)
  POST /cgi-bin/component/...                         (Open Platform)

Control API (JSON; bad input gets 400 {\"error\",\"message\"}):
  POST   /sim/apps     register or update an app:
                       {\"appid\":\"wx1111111111111111\",\"secret\":\"...\",
                        \"ip_whitelist\":[\"10.0.0.0/8\",\"127.0.0.1\"]}
                       (the whitelist: addresses or CIDR ranges allowed to
                       fetch tokens, others get 40164; empty: any address).
                       Registering again changes the secret and whitelist and
                       keeps tokens and quotas.
  GET    /sim/apps     the registered apps: appid, whitelist, today's legacy
                       fetches and forced refreshes, tokens issued (never a
                       secret)
  POST   /sim/faults   break upcoming calls: {\"api\":\"stable_token\",
                       \"appid\":\"wx...\",\"count\":3} or \"rate\":0.5, with one of
                       \"errcode\" (+\"errmsg\"), \"http_status\", \"delay_ms\",
                       \"drop_connection\", \"malformed\", \"html\", \"body\",
                       \"body_bytes\"
  GET    /sim/faults   the faults in force;  DELETE /sim/faults  clears them
  GET    /sim/stats    counters: calls per app and API, tokens and tickets
                       issued, forced refreshes, probe results, invalid-token
                       uses, faults applied
  GET    /sim/clock    the simulator's time {\"now\": unix seconds}
  POST   /sim/clock    move it forward: {\"advance_secs\": 7200} (expiry,
                       grace and the China-time quota day follow)
  POST   /sim/components                          register an Open Platform
                       component {\"component_appid\",\"secret\",\"token\",
                       \"encoding_aes_key\",\"callback_url\",...}
  POST   /sim/components/{appid}/authorize        {\"authorizer_appid\"}
  POST   /sim/components/{appid}/unauthorize      {\"authorizer_appid\"}
  POST   /sim/components/{appid}/push_ticket      push a verify ticket now
  POST   /sim/components/{appid}/pushing          {\"on\": false} stops pushes
  POST   /sim/components/{appid}/refresh_tokens   {\"authorizer_appid\",
                       \"fail_next\": 2} or \"invalidate\": true

Example:
  wxtoken simulator &
  curl -s -X POST localhost:9180/sim/apps -d '{\"appid\":\"wx1111111111111111\",\"secret\":\"s\"}'
  curl -s 'localhost:9180/cgi-bin/token?grant_type=client_credential&appid=wx1111111111111111&secret=s'";

/// What `wxtoken serve --help` tells an operator beyond the options.
const SERVE_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  Stop gracefully: no new connections, in-flight requests
                   finish, held long-polls are answered at once, every
                   account's actor stops and the token store is flushed.
  SIGHUP           Reload the config file (as POST /v1/admin/reload does).

File watching:
  The config file is watched; when its content changes it is reloaded. A
  reload that fails validation changes nothing and is logged with every
  problem; the running configuration keeps serving.

Exit codes:
  0  stopped by a signal, cleanly
  1  could not start or run (port in use, unreadable or corrupt store: see
     --reset-store)
  2  the configuration is invalid (every problem is printed)

Logging:
  Logs go to stderr. RUST_LOG filters them (default `info`; e.g.
  `RUST_LOG=warn,wxtoken::audit=info` keeps only warnings and
  the audit trail); --log-format json (or
  WXTOKEN_LOG_FORMAT=json) writes one JSON object per line. Colour only at a
  terminal without NO_COLOR.";

/// The options of `wxtoken serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// If the token store file is unreadable or corrupt, rename it to
    /// `PATH.broken-<unix time>` and start with an empty store (tokens are
    /// fetched again) instead of refusing to start.
    #[arg(long)]
    pub reset_store: bool,
    /// How long WeChat keeps a superseded token alive, in seconds (300 at
    /// WeChat). Only for running against a simulator started with another
    /// `--grace`.
    #[arg(long, hide = true, value_name = "SECS")]
    pub wechat_grace: Option<u64>,
    /// With `store.redis`: how long a replica's refresh lock lives unless
    /// extended, in seconds (10 by default).
    #[arg(long, hide = true, value_name = "SECS")]
    pub redis_lock_ttl: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the central token server.
    #[command(after_long_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Validate the configuration without network access.
    Check(ConfigArg),
    /// Run the built-in simulator and the server against it, and print curl commands.
    Demo(DemoArgs),
    /// Run a stand-alone fake WeChat API server for local development.
    #[command(after_long_help = SIMULATOR_HELP)]
    Simulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9180")]
        listen: SocketAddr,
        /// Lifetime of issued tokens, in seconds.
        #[arg(long, default_value_t = 7200)]
        token_ttl: u64,
        /// How long a superseded token keeps working, in seconds.
        #[arg(long, default_value_t = 300)]
        grace: u64,
    },
    /// Read an API key on stdin and print its `sha256:<hex>` form for `clients[].key`.
    HashKey {
        /// Make a strong random key instead (32 random bytes, base64url) and
        /// print the key and its `sha256:` form.
        #[arg(long)]
        generate: bool,
    },
    /// Keep `DIR/{appid}.json` token files current on a business host (a sidecar).
    Agent(AgentArgs),
    /// Print every account's state from a running server (admin key).
    Accounts(AccountsArgs),
    /// Print a shell completion script (e.g. `wxtoken completions bash > /etc/bash_completion.d/wxtoken`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The options of `wxtoken agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The wxtoken server's base URL, e.g. `http://wxtoken.internal:8080`.
    #[arg(long, env = "WXTOKEN_SERVER")]
    pub server: url::Url,
    /// A file holding the client's API key (its first line).
    #[arg(long, env = "WXTOKEN_KEY_FILE")]
    pub key_file: PathBuf,
    /// The directory the `{appid}.json` files are kept in (created 0700).
    #[arg(long)]
    pub out: PathBuf,
    /// An account to follow (repeat for more); none: every account the key may read.
    #[arg(long = "appid", value_name = "ID")]
    pub appids: Vec<String>,
    /// A shell command run after a token changed, with `WXTOKEN_APPID` and
    /// `WXTOKEN_FILE` set.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// How long each long-poll is held at most (the files are rewritten at
    /// least this often); at most 60s.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// The command line's definition: [`Cli`]'s, with the global options shown
/// in `wxtoken --help` only. Each subcommand carries a hidden copy of them,
/// so they are still accepted after it (clap then skips its own
/// propagation, which would list them in every subcommand's help).
pub fn command() -> clap::Command {
    let cli = Cli::command();
    let globals: Vec<clap::Arg> = cli
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    cli.mut_subcommands(|sub| {
        globals
            .iter()
            .fold(sub, |sub, arg| sub.arg(arg.clone().hide(true)))
    })
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    crate::panics::install_hook();
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Check(arg) => ExitCode::from(crate::config::run_check(&arg.config)),
        Command::Agent(args) => {
            crate::telemetry::init(cli.log_format);
            agent(args)
        }
        Command::HashKey { generate } => hash_key(generate),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "wxtoken", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Accounts(args) => {
            crate::telemetry::init(cli.log_format);
            accounts(args)
        }
        Command::Simulator {
            listen,
            token_ttl,
            grace,
        } => {
            crate::telemetry::init(cli.log_format);
            let config = crate::simulator::SimConfig {
                token_ttl: Duration::from_secs(token_ttl),
                grace: Duration::from_secs(grace),
                ..Default::default()
            };
            run_async(async move {
                crate::simulator::run_standalone(config, listen)
                    .await
                    .context("the simulator could not start")
            })
        }
        Command::Serve(args) => {
            crate::telemetry::init(cli.log_format);
            let options = LoadOptions::from_process_env();
            let Some(config) = load_config(&args.config.config, options.clone()) else {
                return ExitCode::from(2);
            };
            let build = BuildOptions {
                reload: Some(ReloadSource {
                    path: args.config.config.clone(),
                    options,
                }),
                engine: EngineOptions {
                    reset_store: args.reset_store,
                    grace: args
                        .wechat_grace
                        .map_or(crate::account::plan::WECHAT_GRACE, Duration::from_secs),
                    replica: crate::replica::ReplicaOptions {
                        lock_ttl: args
                            .redis_lock_ttl
                            .map_or(crate::replica::DEFAULT_LOCK_TTL, Duration::from_secs),
                        ..Default::default()
                    },
                    ..EngineOptions::default()
                },
                ..BuildOptions::default()
            };
            run_async(async move {
                let app = Application::build(config, build).await?;
                // Reload on SIGHUP and when the file changes; the watch lives
                // as long as the server.
                let _watch = app.state().reloader.as_ref().and_then(|r| {
                    r.watch_signals();
                    r.watch_file()
                });
                tracing::info!(listen = %app.addr(), "wxtoken serving");
                app.run_until_stopped().await?;
                tracing::info!("wxtoken stopped");
                Ok(())
            })
        }
        Command::Demo(args) => {
            crate::telemetry::init(cli.log_format);
            let options = LoadOptions::from_process_env().secrets_optional();
            let loaded = match args.config {
                Some(path) => crate::config::load(&path, &options),
                None => {
                    let path = PathBuf::from("accounts.yaml");
                    if path.exists() {
                        crate::config::load(&path, &options)
                    } else {
                        eprintln!(
                            "demo: no accounts.yaml here; using the built-in example configuration (give yours with --config PATH)"
                        );
                        crate::demo::builtin_config(&options)
                    }
                }
            };
            let Some(config) = report_loaded(loaded) else {
                return ExitCode::from(2);
            };
            run_async(crate::demo::run(config))
        }
    }
}

/// Loads and validates the configuration; prints every problem and returns
/// `None` when it is invalid, and logs its warnings when it is not.
fn load_config(path: &std::path::Path, options: LoadOptions) -> Option<Config> {
    report_loaded(crate::config::load(path, &options))
}

/// What [`load_config`] does with a configuration loaded some other way.
fn report_loaded(loaded: Result<crate::config::Loaded, crate::config::Problems>) -> Option<Config> {
    match loaded {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            Some(loaded.config)
        }
        Err(problems) => {
            for problem in problems.iter() {
                eprintln!("{problem}");
            }
            None
        }
    }
}

/// Runs a future on an actix system (which the HTTP servers need) and maps its error to exit 1.
fn run_async<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    match actix_rt::System::new().block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxtoken: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `wxtoken agent`: checks the arguments, then runs until SIGINT or SIGTERM.
fn agent(args: AgentArgs) -> ExitCode {
    let mut appids = Vec::new();
    for raw in &args.appids {
        match crate::domain::AppId::parse(raw) {
            Ok(appid) => appids.push(appid),
            Err(_) => {
                eprintln!(
                    "wxtoken: --appid {raw:?} is not an appid (1 to 64 letters, digits, '_', '-', ':' or '.')"
                );
                return ExitCode::from(2);
            }
        }
    }
    if !matches!(args.server.scheme(), "http" | "https") {
        eprintln!("wxtoken: --server must be an http:// or https:// URL");
        return ExitCode::from(2);
    }
    if args.wait.is_zero() || args.wait > Duration::from_secs(60) {
        eprintln!(
            "wxtoken: --wait must be between 1ms and 60s (files are rewritten at least every minute)"
        );
        return ExitCode::from(2);
    }
    let key = match crate::agent::read_key_file(&args.key_file) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("wxtoken: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut server = args.server;
    // `join` keeps the last path segment only when the base ends with `/`.
    if !server.path().ends_with('/') {
        server.set_path(&format!("{}/", server.path()));
    }
    let options = crate::agent::AgentOptions {
        server,
        key,
        out: args.out,
        appids,
        exec: args.exec,
        wait: args.wait,
    };
    run_async(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        actix_rt::spawn(cancel_on_signal(stop.clone()));
        tracing::info!(out = %options.out.display(), "wxtoken agent starting");
        crate::agent::run(options, stop).await
    })
}

/// `wxtoken accounts`: checks the arguments, reads the key, prints the fleet.
fn accounts(args: AccountsArgs) -> ExitCode {
    if !matches!(args.server.scheme(), "http" | "https") {
        eprintln!("wxtoken: --server must be an http:// or https:// URL");
        return ExitCode::from(2);
    }
    let key = match args.key_file.as_deref().map(crate::agent::read_key_file) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(e)) => {
            eprintln!("wxtoken: {e:#}");
            return ExitCode::from(2);
        }
    };
    let request = crate::fleet::Request {
        server: args.server,
        key,
        json: args.json,
    };
    run_async(async move {
        let out = crate::fleet::fetch(&request).await?;
        print!("{out}");
        Ok(())
    })
}

/// Cancels `stop` at the first SIGINT or SIGTERM (Ctrl-C elsewhere).
async fn cancel_on_signal(stop: tokio_util::sync::CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "could not listen for SIGINT and SIGTERM");
                return;
            }
        }
    }
    #[cfg(not(unix))]
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    tracing::info!("stopping the agent");
    stop.cancel();
}

/// The shortest API key `hash-key` accepts: a short key is guessable.
const MIN_KEY_CHARS: usize = 16;

fn hash_key(generate: bool) -> ExitCode {
    if generate {
        let (key, hash) = crate::domain::KeyHash::generate();
        println!("key:  {key}");
        println!("hash: {hash}");
        eprintln!(
            "wxtoken: give the key to the client and put the hash in `clients[].key`; the key is not kept anywhere"
        );
        return ExitCode::SUCCESS;
    }
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("wxtoken: could not read the key from stdin: {e}");
        return ExitCode::from(1);
    }
    let key = input.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        eprintln!("wxtoken: no key on stdin; try `echo -n 'my-key' | wxtoken hash-key`");
        return ExitCode::from(1);
    }
    if key.chars().count() < MIN_KEY_CHARS {
        eprintln!(
            "wxtoken: the key is shorter than {MIN_KEY_CHARS} characters, which is guessable; use a longer one or `wxtoken hash-key --generate`"
        );
        return ExitCode::from(1);
    }
    println!("{}", crate::domain::KeyHash::of_key(key));
    ExitCode::SUCCESS
}
