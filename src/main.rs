//! The `logferry` command: Fluent Bit's command-line flags → config → engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use logferry::config::{units, ConfigDocument};
use logferry::engine::{Overrides, Pipeline};

#[derive(Parser, Debug)]
#[command(
    name = "logferry",
    version,
    about = "A Fluent Bit-compatible log shipper that never loses a line",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (classic .conf, or .yaml/.yml).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Extra parsers file (may repeat).
    #[arg(short = 'R', long = "parser")]
    parsers: Vec<PathBuf>,
    /// Change to this directory before reading the configuration.
    #[arg(long = "workdir")]
    workdir: Option<PathBuf>,
    /// Validate the configuration and exit (0 valid, 1 invalid, with the reason).
    #[arg(short = 'D', long = "dry-run")]
    dry_run: bool,
    /// Flush interval in seconds (overrides [SERVICE] Flush).
    #[arg(short = 'f', long = "flush")]
    flush: Option<String>,
    /// Write logferry's own log to this file instead of stderr.
    #[arg(short = 'l', long = "log_file", alias = "log-file")]
    log_file: Option<PathBuf>,
    /// Log level (overrides [SERVICE] Log_Level).
    #[arg(long = "log_level", alias = "log-level")]
    log_level: Option<String>,
    /// Fluent Bit external plugin (.so), as aws-for-fluent-bit's entrypoint passes them: ignored,
    /// the AWS outputs (`cloudwatch`, `cloudwatch_logs`, `s3`) are built in.
    #[arg(short = 'e', long = "plugin")]
    plugins: Vec<PathBuf>,
    /// Reload the configuration on SIGHUP, `POST /api/v2/reload` or a change to its files
    /// (as `[SERVICE] Hot_Reload On`).
    #[arg(short = 'Y', long = "enable-hot-reload")]
    hot_reload: bool,
}

/// Reads and validates the configuration: the pipeline, the document (for its warnings) and
/// the files it came from (watched by hot reload).
fn load(
    config_path: &std::path::Path,
    parsers: &[PathBuf],
    overrides: &Overrides,
) -> Result<(Pipeline, ConfigDocument, Vec<PathBuf>), String> {
    let mut doc = ConfigDocument::load(config_path).map_err(|e| e.to_string())?;
    for p in parsers {
        doc.load_parsers_file(p, None).map_err(|e| e.to_string())?;
    }
    let pipeline = Pipeline::build(&doc, overrides).map_err(|e| e.to_string())?;
    let mut files: Vec<PathBuf> = std::iter::once(config_path.to_path_buf())
        .chain(doc.sections.iter().map(|s| PathBuf::from(&*s.origin.file)))
        .chain(parsers.iter().cloned())
        .filter(|f| f.as_os_str() != "<default>")
        .collect();
    files.sort();
    files.dedup();
    Ok((pipeline, doc, files))
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// GET logferry's monitoring API and exit 0 on a 2xx answer, 1 otherwise (a container health
    /// check that needs no curl).
    Healthcheck {
        /// The URL to check (plain http).
        #[arg(default_value = logferry::healthcheck::DEFAULT_URL)]
        url: String,
        /// Seconds to wait for the connection and the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { url, timeout }) = &cli.command {
        return match logferry::healthcheck::check(url, std::time::Duration::from_secs(*timeout)) {
            Ok(status) => {
                println!("{url}: HTTP {status}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("[error] healthcheck: {why}");
                ExitCode::from(1)
            }
        };
    }
    for p in &cli.plugins {
        eprintln!(
            "[info] -e {}: external plugins are not loaded; logferry's AWS outputs are built in",
            p.display()
        );
    }
    if let Some(dir) = &cli.workdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("[error] cannot change to workdir '{}': {e}", dir.display());
            return ExitCode::from(1);
        }
    }
    // As the aws-for-fluent-bit init image does: ECS_CLUSTER, ECS_TASK_ID, … from the task
    // metadata endpoint, for configs that reference them.
    let ecs_env = logferry::cloud::ecs::export_init_env();
    let Some(config_path) = cli.config.clone() else {
        eprintln!("[error] no configuration file: pass -c/--config FILE");
        return ExitCode::from(1);
    };
    let mut overrides = Overrides::default();
    if let Some(f) = &cli.flush {
        match units::parse_duration(f) {
            Some(d) => overrides.flush = Some(d),
            None => {
                eprintln!("[error] -f/--flush: '{f}' is not a number of seconds");
                return ExitCode::from(1);
            }
        }
    }
    let (pipeline, doc, files) = match load(&config_path, &cli.parsers, &overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("[error] configuration: {e}");
            return ExitCode::from(1);
        }
    };
    let level = cli
        .log_level
        .clone()
        .unwrap_or_else(|| pipeline.service.log_level.clone());
    if let Err(e) = init_logging(&level, cli.log_file.as_deref()) {
        eprintln!("[error] cannot open log file: {e}");
        return ExitCode::from(1);
    }
    for w in &doc.warnings {
        tracing::warn!("[env] {w}");
    }
    match ecs_env {
        Ok(exported) if !exported.is_empty() => {
            tracing::info!("ECS task metadata: exported {}", exported.join(", "))
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("ECS task metadata not read, ECS_* variables not exported: {e}"),
    }
    if cli.dry_run {
        println!("configuration test is successful");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("[error] cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(config = %config_path.display(), "logferry {} starting", env!("CARGO_PKG_VERSION"));
    let hot_reload = cli.hot_reload || pipeline.service.hot_reload;
    let (path, parsers) = (config_path.clone(), cli.parsers.clone());
    let loader: logferry::engine::reload::Loader = Box::new(move || {
        let (pipeline, doc, files) = load(&path, &parsers, &overrides)?;
        for w in &doc.warnings {
            tracing::warn!("[env] {w}");
        }
        Ok((pipeline, files))
    });
    let mut reloader = logferry::engine::reload::Reloader::new(hot_reload, loader, files);
    let result = runtime.block_on(async {
        reloader.start()?;
        let mut http =
            logferry::http::HttpServer::new(pipeline.registry.clone(), reloader.handle.clone());
        let mut pipeline = pipeline;
        loop {
            match pipeline.run(&mut http, &mut reloader).await? {
                Some(next) => {
                    pipeline = next;
                    reloader.done();
                }
                None => return anyhow::Ok(()),
            }
        }
    });
    // Blocking tasks still running (a stuck upload, a slow disk) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => {
            tracing::info!("logferry stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(level: &str, file: Option<&std::path::Path>) -> std::io::Result<()> {
    let filter = match level {
        "off" => "off",
        "error" => "error",
        "warn" | "warning" => "warn",
        "debug" => "debug",
        "trace" => "trace",
        _ => "info",
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "logferry={filter}"
        )))
        .with_target(false);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}
