//! The `liaison` binary: parse configuration, set up logging, open the store, serve.

use anyhow::Context;
use clap::Parser;
use liaison::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = liaison::telemetry::init(&config);
    if config.command == Some(liaison::config::Command::VerifyAudit) {
        let report = liaison::verify_audit(&config).await.context("reading the audit trail")?;
        return match report.broken {
            None => {
                println!("audit trail intact: {} records verified", report.verified);
                Ok(())
            }
            Some(link) => {
                println!(
                    "audit trail BROKEN at record {} ({}): {}; {} records before it verified",
                    link.seq,
                    link.id.as_deref().unwrap_or("no record"),
                    link.reason,
                    report.verified
                );
                std::process::exit(1);
            }
        };
    }
    tracing::info!(config = ?config, "starting Liaison");

    match config.check_exposure() {
        Err(refusal) => anyhow::bail!(refusal),
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Ok(None) => {}
    }
    let tls = liaison::load_tls(&config).context("loading the TLS certificate")?;
    let state = liaison::build_state(&config).await.context("opening the database")?;
    tokio::spawn(liaison::maintain(state.clone()));
    tokio::spawn(liaison::subscription::deliver(state.clone()));
    let app = liaison::app(state.clone());
    if let Some(addr) = config.metrics_addr {
        let metrics = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(address = %addr, "serving metrics at /metrics");
        let router = liaison::metrics::router(state.clone());
        tokio::spawn(async move { axum::serve(metrics, router).await });
    }
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    if let Some(tls) = &tls {
        let every = std::time::Duration::from_secs(config.tls_reload_seconds);
        tokio::spawn(liaison::reload_tls(tls.clone(), every));
    }
    tracing::info!(
        address = %config.listen_addr,
        base_url = %config.base_url(),
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()),
        "serving FHIR R4"
    );
    // Shutdown: on SIGTERM readiness fails first, requests are still served for the delay, then
    // the listener closes and requests in flight get until the deadline.
    let delay = std::time::Duration::from_secs(config.shutdown_delay_seconds);
    let deadline = std::time::Duration::from_secs(config.shutdown_timeout_seconds);
    let (closed, mut closing) = tokio::sync::watch::channel(false);
    let drain = async move {
        shutdown_signal().await;
        state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(delay_seconds = delay.as_secs(), "shutting down: readiness fails; still serving");
        tokio::time::sleep(delay).await;
        tracing::info!(deadline_seconds = deadline.as_secs(), "no longer accepting; finishing requests in flight");
        let _ = closed.send(true);
    };
    let cut_off = async move {
        let _ = closing.wait_for(|closed| *closed).await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        served = liaison::serve(listener, app, tls, liaison::serve::ConnectionLimits::from_config(&config), drain) => served.context("serving")?,
        () = cut_off => tracing::warn!("shutdown deadline passed: requests still in flight were cut off"),
    }
    tracing::info!("stopped");
    telemetry.shutdown().await;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
