kefu_runtime::service_main! {
    /// kefu orchestrator: the per-message workflow across router, sentiment, knowledge and ticket (gRPC).
    kefu_orchestrator
}
