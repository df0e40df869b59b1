//! Graceful shutdown: one token, cancelled by SIGTERM / Ctrl-C or by the owner.
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown that also fires on SIGTERM or Ctrl-C.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let token = shutdown.0.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received, draining");
            token.cancel();
        });
        shutdown
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    pub async fn wait(&self) {
        self.0.cancelled().await
    }

    /// Runs `task` now and then every `interval` until shutdown, on its own tokio task.
    /// A run is never cut short; shutdown stops the loop between runs.
    pub fn every<F, Fut>(&self, interval: std::time::Duration, mut task: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let shutdown = self.clone();
        tokio::spawn(async move {
            loop {
                if shutdown.is_triggered() {
                    return;
                }
                task().await;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.wait() => return,
                }
            }
        });
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
