//! The omnidisk CSI driver binary: parse flags, load the configuration,
//! start the provider instances, serve.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use omnidisk::cli::{self, Args, Command};
use omnidisk::config::Config;
use omnidisk::mount::linux::LinuxMounter;
use omnidisk::{Driver, logging, providers, server};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = logging::init(args.log_format, &args.log_level) {
        eprintln!("omnidisk: {}", error_chain(&err));
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("omnidisk: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // A provider call stuck in a dylib holds a blocking thread forever; do
    // not let it hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("omnidisk: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| error_chain(&e))?,
        None => Config::default(),
    };
    if let Some(dir) = &args.kubelet_dir {
        config.node.kubelet_dir = dir.clone();
    }
    let kubelet_dir = &config.node.kubelet_dir;
    if !kubelet_dir.is_absolute() || kubelet_dir.parent().is_none() {
        return Err(format!(
            "the kubelet directory {} must be an absolute path below / (node paths are confined to it)",
            kubelet_dir.display()
        ));
    }
    let node_name = args.node_id.clone().unwrap_or_else(cli::host_name);
    if let Some(Command::Doctor) = args.command {
        let checks = omnidisk::doctor::run(&config, &node_name, args.mode).await;
        print!("{}", omnidisk::doctor::render(&checks));
        return if checks.iter().any(|c| c.problem.is_some()) || checks.is_empty() {
            Err("some checks failed".into())
        } else {
            Ok(())
        };
    }
    tracing::info!(
        version = omnidisk::VERSION,
        mode = args.mode.as_str(),
        node = %node_name,
        config = %config.path.as_ref().map_or_else(|| "built-in defaults".to_owned(), |p| p.display().to_string()),
        compiled_in = %providers::builtin_names(),
        "starting"
    );
    omnidisk_provider_api::observe::install(Box::new(omnidisk::metrics::ApiObserver));
    let registry = providers::build_registry(&config, &node_name, args.mode)
        .await
        .map_err(|e| error_chain(&e))?;
    if registry.is_empty() {
        tracing::warn!("no provider instance is available; every volume call will fail");
    }
    let mounter = Arc::new(LinuxMounter::new(config.node.clone()));
    let driver = Arc::new(Driver::new(
        registry,
        node_name,
        args.mode,
        config.node.clone(),
        mounter,
    ));

    let mut http_addresses = vec![args.health_address, args.metrics_address];
    http_addresses.dedup();
    for addr in http_addresses.into_iter().flatten() {
        let http = server::serve_http(driver.clone(), addr)
            .await
            .map_err(|e| error_chain(&e))?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        tokio::spawn(async move {
            if let Err(e) = http.await {
                tracing::error!(error = %e, "HTTP endpoint stopped");
            }
        });
    }

    let socket = cli::socket_path(&args.endpoint).map_err(|e| error_chain(&e))?;
    let listener = server::bind_socket(&socket).map_err(|e| error_chain(&e))?;
    driver.set_ready();
    tracing::info!(endpoint = %args.endpoint, "serving");
    let result = server::serve(driver, listener, shutdown_signal()).await;
    let _ = std::fs::remove_file(&socket);
    result.map_err(|e| error_chain(&e))?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, stop on Ctrl-C only.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
